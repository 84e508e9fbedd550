"""The queueing-wait LP cuts and the lowest-level rule never change the optimum (brute force decides)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierplan.planner.brute import brute_force
from tierplan.planner.build import SloTarget, build_problem
from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import solve
from planner_fixtures import cost_model, random_graph, three_tier_fleet
from tierplan.spec import ObjectiveSpec

pytestmark = pytest.mark.slow   # hypothesis-driven CP-SAT against brute force

OBJECTIVES = [ObjectiveSpec(cost=1), ObjectiveSpec(latency=1), ObjectiveSpec(energy=1)]
DEVS = ["cam-dev0", "bs-dev", "cloud-dev"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9), which=st.integers(0, len(OBJECTIVES) - 1))
def test_busy_devices_with_several_sinks_match_brute_force(seed: int, which: int) -> None:
    """Devices loaded into the queueing levels, one or two sinks: CP-SAT's optimum equals brute force
    and the wait it plans is the evaluator's (the cuts only tighten the relaxation)."""
    rnd = random.Random(seed)
    graph = random_graph(rnd, DEVS, rnd.choice([3, 4]))
    fleet = three_tier_fleet(uplink_mbps=rnd.choice([5.85, 18.88, 100.0]), count=rnd.choice([10, 100]),
                             bs_instances=rnd.choice([1, 2]), cloud_instances=rnd.choice([1, 3]))
    slo = {"out": SloTarget(rnd.choice([80.0, 150.0, 300.0, 3000.0]))}
    problem, _ = build_problem(graph, fleet, cost_model(), slo=slo, weights=OBJECTIVES[which])
    best = brute_force(problem)
    r = solve(problem, time_limit_s=30)
    if best is None:
        assert r.status == "infeasible"
        return
    assert r.status == "optimal" and r.objective == best[0].objective
    ev = evaluate(problem, r.assignment, r.levels)
    assert ev.feasible and ev.objective == r.objective
    if OBJECTIVES[which].latency:
        assert ev.latency_term == best[0].latency_term
