"""Queueing-aware latency: the M/G/1 wait, utilisation levels, and their place in the plan."""

from __future__ import annotations

import math

import pytest

from tierplan.planner.api import plan_graph
from tierplan.planner.brute import brute_force
from tierplan.planner.build import SloTarget, build_problem
from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import solve
from tierplan.planner.queueing import utilisation_levels, wait_factor, wait_us
from planner_fixtures import chain_graph, cost_model, three_tier_fleet
from tierplan.spec import ObjectiveSpec

DEVS = ("cam-dev0", "bs-dev", "cloud-dev")


def _ms(edge: float, bs: float, cloud: float) -> dict[str, float]:
    return dict(zip(DEVS, (edge, bs, cloud)))


def test_wait_factor_is_the_mm1_quantile_for_exponential_service() -> None:
    """With cv = 1 the factor is M/M/1's exact p-quantile wait ln(rho / (1-p)) / (1-rho) in service times."""
    for rho in (0.1, 0.5, 0.8):
        assert wait_factor(rho, 95.0, 1.0) == pytest.approx(math.log(rho / 0.05) / (1 - rho))
    assert wait_factor(0.04, 95.0, 1.0) == 0.0          # P(wait > 0) = rho < 5%: the p95 wait is 0


def test_levels_end_at_the_cap_and_waits_grow_with_utilisation() -> None:
    """Levels ascend to max_utilization; each higher level waits at least as long."""
    levels, factors = utilisation_levels(800_000, 95.0, 0.1)
    assert levels[-1] == 800_000 and list(levels) == sorted(levels)
    assert factors[0] == 0 and list(factors) == sorted(factors)


def test_a_busy_device_adds_its_queueing_wait() -> None:
    """All on a device at 2 Hz x 3 x 100 ms (60% busy): the sink pays the 60% level's wait on top of compute."""
    g = chain_graph([_ms(100, 8, 2) for _ in range(3)], [1_000] * 3, input_bytes=1_000)
    p, _ = build_problem(g, three_tier_fleet(), cost_model(), weights=ObjectiveSpec(latency=1))
    c = p.classes[0]
    ev = evaluate(p, {c.name: tuple(c.allowed[v][0] for v in range(len(p.nodes)))})
    sd = p.sites["cam0"]
    lvl = ev.levels["cam0"]
    assert sd.levels()[lvl][0] == 600_000                 # the lowest level the 60% load fits under
    bd = ev.classes["cam0"].breakdown_us[p.sink_nodes[0]]
    assert bd["compute.cam0"] == 300_000
    assert bd["queue.cam0"] == wait_us(sd.levels()[lvl][1], 300_000) > 300_000


def test_slo_moves_work_off_a_device_that_would_queue() -> None:
    """An SLO the busy device meets on service time alone but not with its queue: the plan offloads."""
    g = chain_graph([_ms(100, 8, 2) for _ in range(3)], [1_000] * 3, input_bytes=1_000)
    fleet = three_tier_fleet(uplink_mbps=100.0)
    slo = {"out": SloTarget(400)}
    plain = plan_graph(g, fleet, cost_model(), slo=slo, queueing=False, with_baselines=False)
    aware = plan_graph(g, fleet, cost_model(), slo=slo, with_baselines=False)
    assert set(plain.assignment.values()) == {"cam0"}   # 300 ms of compute fits 400 ms when nothing waits
    assert any(s != "cam0" for s in aware.assignment.values())
    assert aware.sinks["out"].latency_ms <= 400
    assert any(k.startswith("queue.") for k in aware.sinks["out"].breakdown)


def test_renting_for_shorter_queues_matches_brute_force() -> None:
    """With rent_for_queueing, CP-SAT's choice of level and instances equals brute force (levels enumerated)."""
    g = chain_graph([_ms(400, 60, 20) for _ in range(2)], [1_000, 1_000], input_bytes=1_000)
    fleet = three_tier_fleet(uplink_mbps=100.0, count=20, bs_instances=6, cloud_instances=8)
    rented = {}
    for slo_ms in (250.0, 600.0):
        p, _ = build_problem(g, fleet, cost_model(), slo={"out": SloTarget(slo_ms)}, rent_for_queueing=True)
        best = brute_force(p)
        r = solve(p, time_limit_s=20)
        assert best is not None and r.status == "optimal"
        assert r.objective == best[0].objective
        ev = evaluate(p, r.assignment, r.levels)
        assert ev.feasible and ev.objective == r.objective
        rented[slo_ms] = (ev.cost_uusd_h, [s for s, n in ev.instances.items()
                                            if n and ev.levels[s] < len(p.sites[s].levels()) - 1])
    assert rented[250.0][0] > rented[600.0][0]            # the tighter SLO costs more ...
    assert rented[250.0][1]                               # ... renting a site below its cap to queue less
