"""The two engines: exact FIFO recursion, SimPy vs fast-path agreement, queueing-theory sanity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_builders import make_fleet, make_plan

from tierplan.planner.plan import Plan, PlanEdge, PlanPiece, SinkLatency
from tierplan.simulations.api import simulate
from tierplan.simulations.engine_fast import fifo_departures

pytestmark = pytest.mark.slow   # long simulations on both engines


def _naive_fifo(a, s, q, servers):
    out = np.empty(len(a))
    free: dict = {}
    count: dict = {}
    for i in sorted(range(len(a)), key=lambda i: (q[i], a[i])):
        k = count.get(q[i], 0)
        count[q[i]] = k + 1
        key = (q[i], k % servers)
        start = max(a[i], free.get(key, -np.inf))
        out[i] = free[key] = start + s[i]
    return out


@pytest.mark.parametrize("servers", [1, 3])
def test_fifo_departures_match_a_plain_loop(servers):
    """The vectorised Lindley recursion gives the same departures as a job-by-job FIFO loop."""
    rng = np.random.default_rng(3)
    n = 4000
    a = np.sort(rng.uniform(0, 2000, n))
    s = rng.exponential(1.5 * servers, n)
    q = rng.integers(0, 7, n)
    d, _ = fifo_departures(a, s, q, servers)
    assert np.allclose(d, _naive_fifo(a, s, q, servers), atol=1e-5)
    assert (d >= a + s - 1e-6).all()


def _stats(rep, name="optimal", sink="labels"):
    s = rep.strategies[name].sinks[sink]
    return s.mean_ms, s.p95_ms


SCENARIOS = {
    "chain, replicas, jitter": dict(plan=dict(rate_hz=8.0), fleet=dict(cams=60, bs=3, bs_max=2, jitter_ms=3.0)),
    "fan-out and shared cell capacity": dict(plan=dict(fanout=2.6), fleet=dict(cams=40, capacity_mbps=80.0)),
    "varying 4G link, outage with wait, mobility": dict(
        plan=dict(rate_hz=4.0), fleet=dict(cams=50, bs=4, bs_max=2),
        kw=dict(links={"cams": "4g~0.4"}, failures=["site:bs#1@5-8:wait"], mobility=["cams:0.5@10>0"])),
    "handover on outage, shared cell capacity": dict(
        plan=dict(rate_hz=6.0), fleet=dict(cams=40, bs=4, bs_max=2, capacity_mbps=300.0),
        kw=dict(failures=["site:bs#1-2@4-9:reroute", "link:cams#10%@2-6:fail"])),
    "requests come back to the device (cycle scan)": dict(
        plan=dict(rate_hz=12.0, assign={"det/p0": "cams", "det/p1": "bs", "cls/p0": "cams"}),
        fleet=dict(cams=30, bs=2, bs_max=1, jitter_ms=2.0), kw=dict(strategies=["optimal"])),
    "come back to moving devices over a varying link (per-visit lookups)": dict(
        plan=dict(rate_hz=10.0, assign={"det/p0": "cams", "det/p1": "bs", "cls/p0": "cams"}),
        fleet=dict(cams=40, bs=4, bs_max=2, jitter_ms=1.0),
        kw=dict(strategies=["optimal"], links={"cams": "4g~0.4"}, mobility=["cams:0.5@5>0"])),
}


@pytest.mark.parametrize("case", list(SCENARIOS))
def test_simpy_and_fast_path_agree(case):
    """On shared scenarios SimPy and the Lindley fast path agree: mean and p95 within 1%, every strategy."""
    sc = SCENARIOS[case]
    plan, fleet = make_plan(**sc["plan"]), make_fleet(**sc["fleet"])
    kw = dict(duration_s=20, seed=11, **sc.get("kw", {}))
    slow = simulate(plan, fleet, fast=False, **kw)
    fast = simulate(plan, fleet, fast=True, **kw)
    assert slow.strategies["optimal"].engine == "simpy" and fast.strategies["optimal"].engine == "fast"
    for name in slow.strategies:
        (m1, p1), (m2, p2) = _stats(slow, name), _stats(fast, name)
        assert abs(m1 - m2) <= 0.01 * m1, (name, m1, m2)
        assert abs(p1 - p2) <= 0.01 * p1, (name, p1, p2)
        assert slow.strategies[name].requests_failed == fast.strategies[name].requests_failed


def _dag_plan() -> Plan:
    """camera -> a (edge) -> {b on bs, c on edge} -> sink:out from b and c: two branches overlap."""
    pieces = [PlanPiece(id="camera", kind="source", rate_hz=6.0),
              PlanPiece(id="m/a", latency_ms={"cams": 5.0, "bs": 1.0, "cloud": 1.0}),
              PlanPiece(id="m/b", latency_ms={"cams": 40.0, "bs": 8.0, "cloud": 4.0}),
              PlanPiece(id="m/c", latency_ms={"cams": 12.0, "bs": 3.0, "cloud": 2.0}),
              PlanPiece(id="sink:b", kind="sink"), PlanPiece(id="sink:c", kind="sink")]
    edges = [PlanEdge(src="camera", dst="m/a", nbytes=50_000), PlanEdge(src="m/a", dst="m/b", nbytes=20_000),
             PlanEdge(src="m/a", dst="m/c", nbytes=20_000), PlanEdge(src="m/b", dst="sink:b", nbytes=100),
             PlanEdge(src="m/c", dst="sink:c", nbytes=100)]
    return Plan(status="optimal", assignment={"m/a": "cams", "m/b": "bs", "m/c": "cams"}, pieces=pieces, edges=edges,
                sinks={"b": SinkLatency(latency_ms=60, slo_ms=100), "c": SinkLatency(latency_ms=20, slo_ms=100)})


def test_dag_branches_overlap_and_engines_agree():
    """Branches on different sites run in parallel (sink c does not wait for b) and both engines agree."""
    kw = dict(strategies=["optimal"], duration_s=30, seed=2, service_dist="deterministic")
    slow = simulate(_dag_plan(), make_fleet(cams=10), fast=False, **kw)
    fast = simulate(_dag_plan(), make_fleet(cams=10), fast=True, **kw)
    for sink in ("b", "c"):
        assert _stats(slow, sink=sink)[0] == pytest.approx(_stats(fast, sink=sink)[0], rel=0.01)
    b, c = _stats(fast, sink="b")[0], _stats(fast, sink="c")[0]
    assert c < 5.0 + 12.0 + 5.0, c  # a then c on the device: no wait for the base-station branch
    assert b > 5.0 + 8.0 + 10.0, b  # a, the radio round trip (10 ms RTT) and b


def _single_station_plan(rate_hz: float, ms: float, site: str) -> Plan:
    pieces = [PlanPiece(id="camera", kind="source", rate_hz=rate_hz),
              PlanPiece(id="m/p0", latency_ms={site: ms}), PlanPiece(id="sink:out", kind="sink")]
    edges = [PlanEdge(src="camera", dst="m/p0", nbytes=0), PlanEdge(src="m/p0", dst="sink:out", nbytes=0)]
    return Plan(status="optimal", assignment={"m/p0": site}, pieces=pieces, edges=edges)


def test_mm1_on_one_device_matches_theory():
    """One device, Poisson arrivals, exponential service: mean sojourn within 3% of 1/(mu - lambda)."""
    lam, mu = 50.0, 100.0  # per second
    rep = simulate(_single_station_plan(lam, 1000.0 / mu, "cams"), make_fleet(cams=1), strategies=["optimal"],
                   duration_s=3000, seed=5, service_dist="exponential", fast=True)
    mean = rep.strategies["optimal"].sinks["out"].mean_ms
    assert mean == pytest.approx(1000.0 / (mu - lam), rel=0.03)


def test_superposed_devices_load_one_base_station_as_mm1():
    """200 devices at 0.35 req/s share one base station: M/M/1 there (sojourn = total - RTT) within 4%."""
    lam, mu = 200 * 0.35, 100.0
    rep = simulate(_single_station_plan(0.35, 1000.0 / mu, "bs"), make_fleet(cams=200, bs=1, rtt_ms=10.0),
                   strategies=["optimal"], duration_s=1500, seed=8, service_dist="exponential", fast=False)
    mean = rep.strategies["optimal"].sinks["out"].mean_ms - 10.0
    assert mean == pytest.approx(1000.0 / (mu - lam), rel=0.04)
    assert rep.strategies["optimal"].utilisation["bs"] == pytest.approx(lam / mu, rel=0.03)


def test_shared_queue_dispatch_matches_erlang_c():
    """dispatch='shared' (one FIFO queue, c servers) matches M/M/c theory: mean sojourn within 4%."""
    lam, mu, c = 150.0, 100.0, 2
    a = lam / mu
    rho = a / c
    p0_inv = sum(a ** k / math.factorial(k) for k in range(c)) + a ** c / (math.factorial(c) * (1 - rho))
    erlang_c = a ** c / (math.factorial(c) * (1 - rho)) / p0_inv
    expected_ms = 1000.0 * (1 / mu + erlang_c / (c * mu - lam))
    rep = simulate(_single_station_plan(lam / 100, 1000.0 / mu, "bs"), make_fleet(cams=100, bs=1, rtt_ms=0.0),
                   strategies=["optimal"], duration_s=1500, seed=0, service_dist="exponential", fast=False,
                   dispatch="shared", replicas={"bs": c})
    assert rep.strategies["optimal"].sinks["out"].mean_ms == pytest.approx(expected_ms, rel=0.04)


def test_lost_packets_slow_a_link_to_its_goodput():
    """A radio losing half its packets moves the 60 KB det/p0 -> det/p1 tensor at half the rate: +9.6 ms at 50 Mbit/s."""
    from tierplan.spec import FleetSpec

    fleet = make_fleet(uplink_mbps=50.0)
    data = fleet.model_dump(by_alias=True)
    data["links"]["radio"]["loss_rate"] = 0.5
    lossy = FleetSpec.model_validate(data)
    kw = dict(strategies=["optimal"], duration_s=60, seed=4, rates={"camera": 0.5}, service_cv=0.0)
    clean = simulate(make_plan(), fleet, **kw).strategies["optimal"].sinks["labels"].p50_ms
    slow = simulate(make_plan(), lossy, **kw).strategies["optimal"].sinks["labels"].p50_ms
    assert slow - clean == pytest.approx(60_000 * 8 / 50e6 * 1e3, abs=0.5)
