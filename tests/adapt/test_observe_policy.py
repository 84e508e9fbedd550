"""The shared policy (planner.adaptpolicy) and the runtime's estimates (runtime.observe) on known figures."""

from __future__ import annotations

import numpy as np
import pytest

from adapt_helpers import phone_gw_fleet
from tierplan.errors import InputError
from tierplan.planner.adaptpolicy import AdaptPolicy, DriftDetector, Figure, decide, observed_fleet, route_links
from tierplan.planner.plan import Plan, PlanEdge, PlanPiece
from tierplan.runtime.handplan import with_fleet
from tierplan.runtime.observe import Observer


def _plan(uplink_mbps: float = 12.0, rtt_ms: float = 50.0) -> Plan:
    """source on the phone -> piece on the gateway (100 kB up) -> sink back on the phone (8 bytes down)."""
    pieces = [PlanPiece(id="cam", kind="source"), PlanPiece(id="m/p0", kind="piece"),
              PlanPiece(id="sink:out", kind="sink")]
    edges = [PlanEdge(src="cam", dst="m/p0", nbytes=100_000), PlanEdge(src="m/p0", dst="sink:out", nbytes=8)]
    plan = Plan(status="feasible", assignment={"cam": "phone", "m/p0": "gw", "sink:out": "phone"},
                pieces=pieces, edges=edges)
    return with_fleet(plan, phone_gw_fleet(uplink_mbps, rtt_ms))


def _feed(obs: Observer, t0: float, up_mbps: float, rtt_ms: float, n: int, rng) -> float:
    """n requests, one every 0.1 s, whose transfers took what the link takes (some queued longer)."""
    t = t0
    for _ in range(n):
        up = rtt_ms / 2 + 100_000 * 8 / (up_mbps * 1e3) + float(rng.exponential(30.0))
        down = rtt_ms / 2 + 8 * 8 / (12.0 * 1e3) + float(rng.exponential(2.0))
        obs.add([["transfer", "phone->gw", up], ["compute", "m/p0@gw", 5.0], ["transfer", "gw->phone", down]],
                latency_ms=up + down + 5, device_class="phone", now_s=t)
        t += 0.1
    return t


def test_observer_recovers_goodput_and_rtt_of_a_stepped_link():
    plan = _plan()
    obs = Observer(plan, plan, window_s=2.0)
    rng = np.random.default_rng(0)
    t = _feed(obs, 0.0, 12.0, 50.0, 30, rng)
    before = obs.link_estimates(t)
    assert before["link:phone:up_mbps"].observed == pytest.approx(12.0, rel=0.25)
    assert before["link:phone:rtt_ms"].observed == pytest.approx(50.0, rel=0.25)
    t = _feed(obs, t, 2.0, 50.0, 30, rng)                 # the uplink drops to 2 Mbit/s
    after = obs.link_estimates(t)
    assert after["link:phone:up_mbps"].observed == pytest.approx(2.0, rel=0.25)
    assert after["link:phone:rtt_ms"].observed == pytest.approx(50.0, rel=0.35)


def test_drift_is_flagged_only_when_sustained():
    det = DriftDetector(AdaptPolicy(threshold=0.3, sustain_s=1.0))
    off = Figure("link:phone:up_mbps", 12.0, 2.0)
    near = Figure("link:phone:up_mbps", 12.0, 11.0)
    assert det.update(0.0, [off]) == []
    assert det.update(0.5, [off]) == []
    assert det.update(0.7, [near]) == []                   # back within: starts over
    assert det.update(1.0, [off]) == []
    assert det.update(2.0, [off]) == [off]


def test_decide_adopts_on_a_missed_slo_or_by_the_margin_only():
    p = AdaptPolicy(margin=0.1, move_cost_ms=10.0)
    slo = {"c:text": 1000.0, "c:speech": 400.0}
    # the old plan misses text; the new one misses speech but its slowest sink is lower: best achievable
    d = decide(p, {"c:text": 1137.0, "c:speech": 385.0}, {"c:text": 862.0, "c:speech": 550.0}, slo, moves=1)
    assert d.adopt and "best achievable" in d.reason
    # the re-plan misses more sinks (speech now queues on the phone) but its latency figure is a third
    d = decide(p, {"c:text": 3078.0, "c:speech": 385.0}, {"c:text": 1051.0, "c:speech": 670.0}, slo, moves=1)
    assert d.adopt and "best achievable" in d.reason
    # ... and not when it is slower after the move cost
    assert not decide(p, {"c:text": 1100.0, "c:speech": 385.0}, {"c:text": 1095.0, "c:speech": 670.0}, slo, moves=1).adopt
    # no SLO missed: 5% better is within the margin
    d = decide(p, {"c:text": 800.0, "c:speech": 300.0}, {"c:text": 760.0, "c:speech": 300.0}, slo, moves=1)
    assert not d.adopt
    d = decide(p, {"c:text": 800.0, "c:speech": 300.0}, {"c:text": 600.0, "c:speech": 300.0}, slo, moves=2)
    assert d.adopt
    # the move cost counts: 25 moves at 10 ms eat a 200 ms gain
    assert not decide(p, {"c:text": 800.0}, {"c:text": 600.0}, slo, moves=25).adopt
    assert not decide(p, {"c:text": 1200.0}, {"c:text": 900.0}, slo, moves=0).adopt


def test_policy_flags_are_checked():
    with pytest.raises(InputError, match="threshold=0"):
        AdaptPolicy(threshold=0)
    with pytest.raises(InputError, match="margin=1.5"):
        AdaptPolicy(margin=1.5)
    assert AdaptPolicy.parse("threshold=0.5, window=3") == AdaptPolicy(threshold=0.5, window_s=3.0)
    assert AdaptPolicy.parse("") == AdaptPolicy()
    for bad in ("speed=2", "window", "window=fast", "sustain=-1"):
        with pytest.raises(InputError, match="--adapt-policy"):
            AdaptPolicy.parse(bad)


def test_observed_fleet_replaces_one_sites_link():
    plan = _plan(12.0)
    spec = observed_fleet(plan, {"link:phone:up_mbps": 2.0, "link:phone:rtt_ms": 80.0})
    link = spec.links[spec.sites["phone"].link]
    assert (link.uplink_mbps, link.downlink_mbps, link.rtt_ms) == (2.0, 12.0, 80.0)
    assert route_links(plan.fleet_model(), "phone", "gw") == [("phone", "up")]
    assert route_links(plan.fleet_model(), "gw", "phone") == [("phone", "down")]


def _one(obs: Observer, t: float, up_mbps: float, rtt_ms: float = 50.0) -> None:
    up = rtt_ms / 2 + 100_000 * 8 / (up_mbps * 1e3)
    obs.add([["transfer", "phone->gw", up], ["transfer", "gw->phone", rtt_ms / 2]], latency_ms=up + rtt_ms / 2,
            device_class="phone", now_s=t)


def test_a_step_is_read_from_the_first_requests_after_it_not_the_window():
    plan = _plan()
    obs = Observer(plan, plan, window_s=10.0)         # a long window: its quantile would take seconds to turn
    for k in range(40):
        _one(obs, 0.25 * k, 12.0)
    t = 0.25 * 40
    _one(obs, t, 12.0 * 0.5)                          # one slow request alone is not a step
    _one(obs, t + 0.25, 12.0)
    assert obs.link_estimates(t + 0.25)["link:phone:up_mbps"].since_s is None
    for k in (2, 3):                                  # the uplink drops to 2 Mbit/s
        _one(obs, t + 0.25 * k, 2.0)
    fig = obs.link_estimates(t + 0.75)["link:phone:up_mbps"]
    assert fig.observed == pytest.approx(2.0, rel=0.1)
    assert fig.since_s == pytest.approx(t + 0.5)      # the run's first request
    det = DriftDetector(AdaptPolicy(sustain_s=0.25))
    assert det.update(t + 0.75, [fig]) == [fig]       # sustained since the run began
    assert det.since(fig.key) == pytest.approx(t + 0.5)


def test_compute_times_need_a_bigger_and_longer_drift_than_links():
    det = DriftDetector(AdaptPolicy(threshold=0.3, compute_threshold=0.5, sustain_s=0.5, compute_sustain_s=3.0))
    link = Figure("link:phone:up_mbps", 12.0, 8.0, effect_ms=50.0)          # 1.5x slower
    noisy = Figure("compute:m/p0@phone", 40.0, 56.0, effect_ms=16.0)       # 1.4x: within 50%
    slow = Figure("compute:m/p1@phone", 40.0, 100.0, effect_ms=60.0)       # 2.5x
    assert det.update(0.0, [link, noisy, slow]) == []
    assert det.update(1.0, [link, noisy, slow]) == [link]                 # links: 0.5 s
    assert det.update(3.0, [link, noisy, slow]) == [link, slow]           # compute: 3 s, the 1.4x never
    assert AdaptPolicy.parse("compute-threshold=1,compute-sustain=5").compute_sustain_s == 5.0


def test_a_backlogged_link_is_read_from_the_gaps_between_queued_transfers():
    """Four crops per request cross a 2 Mbit/s uplink back to back behind a backlog (each request
    waits 0-400 ms before its first crop starts): the fastest crop per request reads the link slower
    than it is; the gaps between a request's crops are its wire time."""
    from tierplan.spec import FleetSpec
    fleet = FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "pixel-8", "attach": "gw", "link": "lte"},
                  "gw": {"tier": "base_station", "device": "mec-t4"}},
        "links": {"lte": {"uplink_mbps": 2.0, "downlink_mbps": 35.0, "rtt_ms": 50.0, "jitter_ms": 12.0}}})
    pieces = [PlanPiece(id="cam", kind="source"), PlanPiece(id="m/p0", kind="piece"),
              PlanPiece(id="sink:out", kind="sink")]
    edges = [PlanEdge(src="cam", dst="m/p0", nbytes=18_432), PlanEdge(src="m/p0", dst="sink:out", nbytes=8)]
    plan = with_fleet(Plan(status="feasible", assignment={"cam": "phone", "m/p0": "gw", "sink:out": "phone"},
                           pieces=pieces, edges=edges), fleet)
    obs = Observer(plan, plan, window_s=10.0)
    rng = np.random.default_rng(1)
    wire = 18_432 * 8 / 2e3                            # 73.7 ms at 2 Mbit/s
    t = 0.0
    for _ in range(16):
        backlog = float(rng.uniform(0.0, 400.0))
        ups = [backlog + 25.0 + k * wire + float(rng.normal(0, 12.0)) for k in (1, 2, 3, 4)]
        downs = [25.0 + float(rng.normal(0, 12.0)) for _ in range(4)]
        obs.add([*(["transfer", "phone->gw", u] for u in ups), *(["transfer", "gw->phone", d] for d in downs)],
                latency_ms=max(ups) + 30, device_class="phone", now_s=t)
        t += 0.5
    fig = obs.link_estimates(t)["link:phone:up_mbps"]
    assert fig.observed == pytest.approx(2.0, rel=0.2)     # the fastest crop alone reads 0.85


def _request(obs: Observer, t: float, up_ms: float, down_ms: float, wall_over_cpu: float) -> None:
    """One request as runtime.stage traces it: a step on the phone, the upload, the piece on the
    gateway, the result back; each compute step's wall time beside its CPU time (`cpu`)."""
    pre, piece = 40.0, 5.0                     # CPU ms of the phone's and the gateway's steps
    obs.add([["compute", "pre@phone", pre * wall_over_cpu], ["cpu", "pre@phone", pre],
             ["transfer", "phone->gw", up_ms],
             ["compute", "m/p0@gw", piece * wall_over_cpu], ["cpu", "m/p0@gw", piece],
             ["transfer", "gw->phone", down_ms]],
            latency_ms=up_ms + down_ms + (pre + piece) * wall_over_cpu, device_class="phone", now_s=t)


def _flags(obs: Observer, det: DriftDetector, t0: float, t1: float) -> list[str]:
    flagged: list[str] = []
    t = t0
    while t <= t1 + 1e-9:
        flagged += [f.key for f in det.update(t, list(obs.link_estimates(t).values()))]
        t += 0.2
    return flagged


def test_a_host_starved_of_cpu_is_not_read_as_link_drift_while_a_real_step_is():
    """Under CPU starvation the sender's and receiver's threads wake late: transfers over a 12 Mbit/s,
    50 ms link read 60 ms slower (RTT 'doubles'), while the requests' compute steps took 3x their
    CPU time. Those requests' transfers are discounted by the host's delay (their tiny result's
    lateness); the same delays with the steps at their CPU time are drift, and so is a real step to
    2 Mbit/s, on a quiet, a mildly busy and a still starved host."""
    planned_up = 25.0 + 100_000 * 8 / 12e3     # 91.7 ms
    rng = np.random.default_rng(2)

    def run(starved_wall_over_cpu: float, step_wall_over_cpu: float | None,
            step_late_ms: float = 0.0) -> tuple[list[str], list[str], Observer]:
        plan = _plan()
        obs = Observer(plan, plan, window_s=2.0)
        det = DriftDetector(AdaptPolicy(sustain_s=0.5))
        t = 0.0
        for _ in range(20):                            # quiet: on plan
            _request(obs, t, planned_up + float(rng.normal(0, 2)), 25.0 + float(rng.normal(0, 2)), 1.02)
            t += 0.1
        for _ in range(20):                            # starved for 2 s: every transfer 60 ms late
            _request(obs, t, planned_up + 60 + float(rng.normal(0, 5)), 25.0 + 60 + float(rng.normal(0, 5)),
                     starved_wall_over_cpu)
            t += 0.1
        starved = _flags(obs, det, 2.0, t)
        if step_wall_over_cpu is None:
            return starved, [], obs
        t0 = t
        for _ in range(20):                            # the uplink steps down to 2 Mbit/s
            _request(obs, t, 25.0 + 100_000 * 8 / 2e3 + step_late_ms + float(rng.normal(0, 5)),
                     25.0 + step_late_ms + float(rng.normal(0, 2)), step_wall_over_cpu)
            t += 0.1
        return starved, _flags(obs, det, t0, t), obs

    starved, stepped, obs = run(3.0, 1.02)
    assert starved == []                               # 60 ms late but 90 ms of the steps waited for a core
    assert "link:phone:up_mbps" in stepped             # the real step is still read
    assert obs.link_estimates(4.0 + 2.0)["link:phone:up_mbps"].observed == pytest.approx(2.0, rel=0.2)
    # the same late transfers from a host whose steps ran at their CPU time: that is the link
    blind, _, _ = run(1.02, None)
    assert "link:phone:rtt_ms" in blind
    # a mildly busy host (steps at 1.3x their CPU: 13.5 ms waited) still reads the 2 Mbit/s step
    _, stepped_busy, obs = run(3.0, 1.3)
    assert "link:phone:up_mbps" in stepped_busy
    assert obs.link_estimates(6.0)["link:phone:up_mbps"].observed == pytest.approx(2.0, rel=0.25)
    # the step while the host stays starved (every transfer 60 ms late): the result's lateness on the
    # tiny downlink route is the host's, the upload's beyond it the link's
    _, stepped_starved, obs = run(3.0, 3.0, step_late_ms=60.0)
    assert set(stepped_starved) == {"link:phone:up_mbps"}     # not the RTT
    assert obs.link_estimates(6.0)["link:phone:up_mbps"].observed == pytest.approx(2.0, rel=0.25)
