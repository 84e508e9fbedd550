"""CP-SAT's optimum equals brute-force enumeration on random small DAGs and fleets (same semantics)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierplan.devices.fleet import resolve_fleet
from tierplan.planner.brute import brute_force, count_assignments
from tierplan.planner.build import SloTarget, build_problem
from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import solve
from planner_fixtures import assert_matches_brute_force, cost_model, device, fleet_spec, random_graph
from tierplan.spec import ObjectiveSpec

pytestmark = pytest.mark.slow   # hypothesis-driven CP-SAT against brute force

OBJECTIVES = [ObjectiveSpec(cost=1), ObjectiveSpec(latency=1), ObjectiveSpec(energy=1),
              ObjectiveSpec(cost=1, latency=0.01)]


def _random_case(seed: int):
    """A random fleet (1-2 edge classes, optional base station, cloud) and app graph, both small."""
    rnd = random.Random(seed)
    n_edge = rnd.choice([1, 1, 2])
    with_bs = rnd.random() < 0.7
    edges = [{"name": f"e{i}", "device": device(f"edev{i}", "edge", rnd.choice([5.0, 20.0]),
                                                memory_gb=rnd.choice([2.0, 8.0]), battery=rnd.random() < 0.5),
              "count": rnd.choice([1, 5, 40]), "link": f"l{i}"} for i in range(n_edge)]
    links = {f"l{i}": {"uplink_mbps": rnd.choice([0.13, 1.1, 5.85, 18.88, 100.0]),
                       "downlink_mbps": rnd.choice([5.0, 50.0]), "rtt_ms": rnd.choice([5.0, 40.0]),
                       "jitter_ms": rnd.choice([0.0, 3.0]),
                       **({"capacity_mbps": rnd.choice([20.0, 500.0])} if rnd.random() < 0.4 else {})}
             for i in range(n_edge)}
    links["bh"] = {"uplink_mbps": 1000.0, "downlink_mbps": 1000.0, "rtt_ms": 8.0,
                   "egress_usd_per_gb": rnd.choice([0.0, 0.09])}
    bs = {"name": "bs", "device": device("bsdev", "base_station", 200.0, price=rnd.choice([0.0, 0.4]),
                                         memory_gb=8.0),
          "count": rnd.choice([1, 5]), "max_instances": rnd.choice([1, 2]), "link": "bh"} if with_bs else None
    cloud = {"name": "cloud", "device": device("cdev", "cloud", 2000.0, price=rnd.choice([1.0, 3.0]), memory_gb=64.0),
             "max_instances": rnd.choice([1, 3])}
    if not with_bs:
        for e in edges:
            links[e["link"]]["egress_usd_per_gb"] = 0.05
    fleet = resolve_fleet(fleet_spec(edges, bs, cloud, links))
    n_pieces = rnd.choice([2, 3]) if n_edge == 2 else rnd.choice([2, 3, 4])
    names = [f"edev{i}" for i in range(n_edge)] + ["bsdev", "cdev"]
    graph = random_graph(rnd, names, n_pieces, two_sources=(n_edge == 1 and rnd.random() < 0.3))
    slo = {"out": SloTarget(rnd.choice([40.0, 150.0, 400.0, 3000.0, 3000.0]), rnd.choice([50.0, 95.0]))}
    if "sink:aux" in graph and rnd.random() < 0.5:
        slo["aux"] = SloTarget(rnd.choice([60.0, 500.0]))
    budget = rnd.choice([None, None, 2.5])
    return rnd, fleet, graph, slo, budget


@settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9), which=st.integers(0, len(OBJECTIVES) - 1), rent=st.booleans())
def test_cpsat_matches_brute_force(seed: int, which: int, rent: bool) -> None:
    """For every objective, with or without renting for shorter queues, CP-SAT's proven optimum equals
    the brute-force minimum exactly (or both infeasible)."""
    rnd, fleet, graph, slo, budget = _random_case(seed)
    problem, _ = build_problem(graph, fleet, cost_model(), slo=slo, weights=OBJECTIVES[which],
                               budget_usd_per_hour=budget, rent_for_queueing=rent)
    assert count_assignments(problem) <= 50_000
    best = brute_force(problem)
    r = solve(problem, time_limit_s=30)
    assert_matches_brute_force(problem, r, best)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9))
def test_epsilon_constraint_matches_brute_force(seed: int) -> None:
    """Least cost under a latency bound (one Pareto point) equals the brute-force minimum under that bound."""
    rnd, fleet, graph, slo, budget = _random_case(seed)
    problem, _ = build_problem(graph, fleet, cost_model(), slo=slo, weights=ObjectiveSpec(cost=1))
    free = brute_force(problem)
    if free is None:
        return
    fastest = brute_force(problem.with_objective("latency", 0, 1, 0))
    bound = (fastest[0].latency_term + free[0].latency_term) // 2
    best = brute_force(problem, latency_max=bound)
    r = solve(problem, time_limit_s=30, latency_max=bound)
    assert r.status == "optimal"
    assert r.objective == best[0].objective
    assert evaluate(problem, r.assignment, r.levels).latency_term <= bound


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9), which=st.integers(0, len(OBJECTIVES) - 1))
def test_plan_graph_reaches_the_brute_force_optimum(seed: int, which: int) -> None:
    """The full planner (per-class decomposition, sequential pass, joint solve) reports the brute-force optimum."""
    from tierplan.planner.api import plan_graph
    from tierplan.errors import InfeasibleError
    rnd, fleet, graph, slo, budget = _random_case(seed)
    problem, _ = build_problem(graph, fleet, cost_model(), slo=slo, weights=OBJECTIVES[which],
                               budget_usd_per_hour=budget)
    best = brute_force(problem)
    if best is None:
        return
    try:
        plan = plan_graph(graph, fleet, cost_model(), slo=slo, objective=OBJECTIVES[which],
                          budget_usd_per_hour=budget, time_limit_s=30, with_baselines=False,
                          analyse_uncovered=False)
    except InfeasibleError as e:  # a joint optimum exists, so the planner must find one
        raise AssertionError(f"planner said infeasible: {e}")
    assert plan.status == "optimal" and plan.gap == 0.0
    assert plan.solver["objective_int"] == best[0].objective
