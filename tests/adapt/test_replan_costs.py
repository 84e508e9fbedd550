"""What a re-plan takes into account: moves cost (planner.movecost, in the CP-SAT objective) and the
compute drift the controller observed (a slower site's times scaled by the observed ratio)."""

from __future__ import annotations

import pytest

from test_adapt_loop import _app, _fleet
from tierplan.devices.fleet import resolve_fleet
from tierplan.errors import InputError
from tierplan.planner.adaptpolicy import Figure, Replanner, moves_of, observed_fleet, predicted, recost, site_ratios
from tierplan.planner.api import plan_app
from tierplan.planner.movecost import charged, check_move_cost


@pytest.fixture(scope="module")
def offloading(squeezenet_random, tmp_path_factory):
    """SqueezeNet planned at 1 Gbit/s up (the tail runs on the gateway), and its re-planner."""
    plan = plan_app(_app(squeezenet_random), _fleet(1000.0), time_limit_s=2,
                    pieces_dir=tmp_path_factory.mktemp("pieces"))
    assert "gw" in plan.per_class["phone"].values()
    return plan, Replanner(plan, tmp_path_factory.mktemp("replan")).prepare()


def test_moves_cost_in_the_objective_of_a_warm_started_replan(offloading):
    plan, replan = offloading
    slow = observed_fleet(plan, {"link:phone:up_mbps": 20.0})   # 43 kB up at 20 Mbit/s: the phone runs it all
    free = replan(slow, 2.0, move_cost_ms=0.0)
    assert moves_of(plan, free, ["phone"]) and free.move_cost_ms is None
    # every segment moved costs more than the whole request takes: nothing moves
    dear = replan(slow, 2.0, move_cost_ms=1e5)
    assert moves_of(plan, dear, ["phone"]) == [] and dear.moves == []
    assert dear.move_cost_ms == 1e5                      # the diff says what moves were charged
    # a small charge does not stop a move that gains more than it costs
    cheap = replan(slow, 2.0, move_cost_ms=0.5)
    assert moves_of(plan, cheap, ["phone"])
    cost = charged(cheap.moves, 0.5)
    assert cost["segments_moved"] >= 1 and cost["charged_ms"] == pytest.approx(0.5 * cost["segments_moved"])
    with pytest.raises(InputError, match="--move-cost"):
        check_move_cost(-1.0)


def test_observed_compute_drift_scales_the_replan(offloading):
    plan, replan = offloading
    ratios = site_ratios([Figure("compute:net/p1@gw", 2.0, 80.0), Figure("compute:x@gw", 1.0, 30.0),
                          Figure("compute:net/p0@phone", 5.0, 5.0)])
    assert ratios == {"gw": pytest.approx(35.0), "phone": pytest.approx(1.0)}
    fleet = observed_fleet(plan, {})                      # as planned (every device inline)
    # the gateway runs 40x slower than planned: the re-plan takes the work away from it
    scale = {"gw": 40.0}
    new = replan(fleet, 2.0, compute_scale=scale, move_cost_ms=1.0)
    assert "gw" not in [s for n, s in new.per_class["phone"].items() if n.startswith("net/")]
    assert moves_of(plan, new, ["phone"])
    # the old plan re-costed on the observed times is slower than planned, and than the re-plan
    old_now = recost(plan, resolve_fleet(fleet, catalog={}), ["phone"], scale)
    assert old_now["phone:label"] > predicted(plan, ["phone"])["phone:label"]
    assert predicted(new, ["phone"])["phone:label"] < old_now["phone:label"]


def test_plan_from_an_old_plan_charges_moves_on_the_command_line(squeezenet_random, tmp_path):
    """`tierplan plan --from OLD --move-cost MS`: a dear move keeps the old placement (the plan says
    what was charged); a negative cost exits 2 naming the flag."""
    import io
    import json
    from contextlib import redirect_stderr, redirect_stdout

    from tierplan.cli import main
    from tierplan.loader import dump_spec

    def cli(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        return code, out.getvalue(), err.getvalue()
    (tmp_path / "app.yaml").write_text(dump_spec(_app(squeezenet_random)))
    (tmp_path / "fast.yaml").write_text(dump_spec(_fleet(1000.0)))
    (tmp_path / "slow.yaml").write_text(dump_spec(_fleet(20.0)))
    common = ["--time-limit", "2", "--pieces-dir", str(tmp_path / "pieces"), "--no-progress"]
    code, _, err = cli("plan", str(tmp_path / "app.yaml"), "--fleet", str(tmp_path / "fast.yaml"),
                       "--out", str(tmp_path / "old.json"), *common)
    assert code == 0, err
    code, out, err = cli("plan", str(tmp_path / "app.yaml"), "--fleet", str(tmp_path / "slow.yaml"), "--from",
                         str(tmp_path / "old.json"), "--move-cost", "100000", "--json", *common)
    assert code in (0, 1), err
    new = json.loads(out)
    assert new["moves"] == [] and new["move_cost_ms"] == 100000.0
    code, _, err = cli("plan", str(tmp_path / "app.yaml"), "--fleet", str(tmp_path / "slow.yaml"), "--from",
                       str(tmp_path / "old.json"), "--move-cost", "-1", *common)
    assert code == 2 and "--move-cost" in err and "Traceback" not in err, err


def test_a_replan_leaves_out_classes_that_run_elsewhere_and_share_nothing(squeezenet_random, tmp_path):
    from tierplan.planner.adaptpolicy import replan_scope
    from tierplan.spec import FleetSpec
    fleet = FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "galaxy-a54", "count": 1, "attach": "gw", "link": "radio"},
                  "watch": {"tier": "edge", "device": "pixel-8", "count": 1, "attach": "gw", "link": "thin"},
                  "gw": {"tier": "base_station", "device": "mec-t4", "count": 1}},
        "links": {"radio": {"uplink_mbps": 1000, "downlink_mbps": 1000, "rtt_ms": 4},
                  "thin": {"uplink_mbps": 0.05, "downlink_mbps": 0.05, "rtt_ms": 400}}})
    plan = plan_app(_app(squeezenet_random), fleet, time_limit_s=2, pieces_dir=tmp_path / "pieces")
    assert set(plan.per_class["watch"].values()) == {"watch"}           # all on the watch: shares nothing
    spec = observed_fleet(plan, {"link:phone:up_mbps": 20.0})
    assert sorted(replan_scope(plan, spec, None).sites) == ["gw", "phone", "watch"]
    scoped = replan_scope(plan, spec, ["phone"])
    assert sorted(scoped.sites) == ["gw", "phone"]
    assert sorted(replan_scope(plan, spec, ["watch"]).sites) == ["gw", "phone", "watch"]   # phone uses gw
    replan = Replanner(plan, tmp_path / "replan").prepare()
    small = replan(scoped, 2.0, move_cost_ms=0.0)
    assert sorted(small.per_class) == ["phone"]
    assert predicted(small, ["phone"])["phone:label"] == pytest.approx(
        predicted(replan(spec, 2.0, move_cost_ms=0.0), ["phone"])["phone:label"], rel=0.02)
