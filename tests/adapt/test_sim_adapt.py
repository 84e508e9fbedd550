"""The simulator rehearses the same policy: a stepped uplink is flagged when the runtime's observer
would flag it, the same decision is taken, and the switch brings the simulated p95 back down."""

from __future__ import annotations

import pytest

from test_adapt_loop import _app, _fleet
from tierplan.planner.adaptpolicy import AdaptPolicy, Replanner
from tierplan.planner.api import plan_app
from tierplan.simulations.adapt import Step, biggest_transfer, flag_time, rehearse


@pytest.fixture(scope="module")
def offloading_plan(squeezenet_random, tmp_path_factory):
    return plan_app(_app(squeezenet_random), _fleet(1000.0), time_limit_s=2,
                    pieces_dir=tmp_path_factory.mktemp("pieces"))


def test_flag_time_follows_the_observer_run_and_the_sustain(offloading_plan):
    pol = AdaptPolicy(window_s=2.0, sustain_s=1.0, tick_s=0.25, min_effect_ms=10.0)
    nbytes = biggest_transfer(offloading_plan, "phone")
    assert nbytes > 10_000                                             # the cut tensor goes up the radio
    wire_s = nbytes * 8 / 20e6
    # two requests at 2 Hz read the step (the second 1 s after it); sustained 1 s from the first (0.5 s)
    t = flag_time(offloading_plan, Step("phone", 10.0, 20.0), pol, rate_hz=2.0)
    assert t == pytest.approx(10.0 + 0.5 + wire_s + 1.0, abs=pol.tick_s + 0.01)
    # a short sustain: flagged once the run is complete (the window's length plays no part)
    quick = AdaptPolicy(window_s=5.0, sustain_s=0.1, tick_s=0.1, min_effect_ms=10.0)
    assert flag_time(offloading_plan, Step("phone", 10.0, 20.0), quick, rate_hz=4.0) == \
        pytest.approx(10.0 + 0.5 + wire_s, abs=quick.tick_s + 0.01)
    assert flag_time(offloading_plan, Step("phone", 10.0, 900.0), pol) is None   # within the threshold
    assert flag_time(offloading_plan, Step("gw", 10.0, 1.0), pol) is None        # the root: no attach link


@pytest.mark.slow
def test_rehearsal_adopts_and_the_switch_brings_p95_back(offloading_plan, tmp_path):
    pol = AdaptPolicy(window_s=1.0, sustain_s=0.5, replan_time_limit_s=2.0, move_cost_ms=2.0, min_effect_ms=5.0)
    rp = Replanner(offloading_plan, tmp_path / "replan")
    step = Step("phone", 5.0, 20.0)
    adapt = rehearse(offloading_plan, step, pol, 30.0, replan=lambda fleet, limit: rp(fleet, limit),
                     replan_s=0.2, load_s=0.3, segment_s=30.0)
    static = rehearse(offloading_plan, step, pol, 30.0, adapt=False, segment_s=30.0)
    assert adapt.decision is not None and adapt.decision["adopt"], adapt.decision
    assert adapt.switch_s == pytest.approx(adapt.flag_s + 0.5, abs=1e-9)
    assert [s.plan for s in adapt.segments] == ["old", "old", "new"]
    assert [s.plan for s in static.segments] == ["old", "old"]
    before, stepped, after = (s.sinks["label"]["p95_ms"] for s in adapt.segments)
    assert stepped > before                      # 43 kB up at 20 Mbit/s instead of 1 Gbit/s
    assert after < stepped                       # the re-plan keeps the tensor on the phone
    assert adapt.p95_at("label", 29.0) == after and static.p95_at("label", 29.0) == stepped
