"""Exact decomposition (planner.decompose): components and verified cloud splits equal brute force."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierplan.devices.fleet import resolve_fleet
from tierplan.planner.brute import brute_force, count_assignments
from tierplan.planner.build import SloTarget, build_problem
from tierplan.planner.decompose import components, split_sites
from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import solve
from tierplan.planner.synthetic import synthetic_fleet, synthetic_app
from planner_fixtures import assert_matches_brute_force, cost_model, device, random_graph
from tierplan.spec import FleetSpec, ObjectiveSpec

pytestmark = pytest.mark.slow   # hypothesis-driven CP-SAT against brute force

OBJECTIVES = [ObjectiveSpec(cost=1), ObjectiveSpec(latency=1), ObjectiveSpec(cost=1, latency=0.01)]


def _split_fleet(rnd: random.Random, shared_bs: bool):
    """Two edge classes, each under its own base station (or one shared), one cloud region above."""
    sites, links = {}, {"bh": {"uplink_mbps": 1000.0, "downlink_mbps": 1000.0, "rtt_ms": 8.0,
                               "egress_usd_per_gb": rnd.choice([0.0, 0.09])}}
    sites["cloud"] = {"tier": "cloud", "device": device("cdev", "cloud", 2000.0, price=rnd.choice([1.0, 3.0]),
                                                        memory_gb=64.0), "max_instances": rnd.choice([1, 3])}
    for j in range(1 if shared_bs else 2):
        sites[f"bs{j}"] = {"tier": "base_station", "device": device("bsdev", "base_station", 200.0,
                                                                    price=rnd.choice([0.0, 0.4]), memory_gb=8.0),
                           "count": rnd.choice([1, 3]), "attach": "cloud", "link": "bh",
                           "max_instances": rnd.choice([1, 2])}
    for i in range(2):
        links[f"l{i}"] = {"uplink_mbps": rnd.choice([1.1, 5.85, 18.88, 100.0]), "downlink_mbps": 50.0,
                          "rtt_ms": rnd.choice([5.0, 40.0]), "jitter_ms": rnd.choice([0.0, 3.0])}
        sites[f"e{i}"] = {"tier": "edge", "device": device(f"edev{i}", "edge", rnd.choice([5.0, 20.0])),
                          "count": rnd.choice([1, 5, 40]), "attach": "bs0" if shared_bs else f"bs{i}",
                          "link": f"l{i}"}
    return resolve_fleet(FleetSpec(name="split-fleet", sites=sites, links=links))


def test_classes_under_different_clouds_are_independent_groups() -> None:
    """The 12 edge classes of the synthetic fleet fall into one group per cloud region; a budget joins them."""
    fleet = synthetic_fleet(12, 5, 3, 10_000)
    problem, _ = build_problem(synthetic_app(6, n_models=3), fleet, cost_model())
    groups = components(problem)
    assert sorted(len(g) for g in groups) == [2, 5, 5]
    for g in groups:
        regions = {next(c for c in problem.classes if c.name == n).chain[-1] for n in g}
        assert len(regions) == 1
    assert len(components(problem, split_sites(problem))) == 5          # one per base station
    budgeted, _ = build_problem(synthetic_app(6, n_models=3), fleet, cost_model(), budget_usd_per_hour=100.0)
    assert components(budgeted) == [tuple(c.name for c in budgeted.classes)]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9), which=st.integers(0, len(OBJECTIVES) - 1), shared_bs=st.booleans())
def test_decomposed_solve_matches_brute_force(seed: int, which: int, shared_bs: bool) -> None:
    """Classes under one cloud (split at it, priced exactly by the part a random hint says wants it or
    fractionally, or joined by a shared base station): the decomposed solve, queueing on, proves
    the brute-force optimum exactly (or both find no plan)."""
    rnd = random.Random(seed)
    fleet = _split_fleet(rnd, shared_bs)
    graph = random_graph(rnd, ["edev0", "edev1", "bsdev", "cdev"], rnd.choice([2, 3]))
    slo = {"out": SloTarget(rnd.choice([60.0, 150.0, 400.0, 3000.0]))}
    problem, _ = build_problem(graph, fleet, cost_model(), slo=slo, weights=OBJECTIVES[which])
    assert count_assignments(problem) <= 50_000
    best = brute_force(problem)
    # any hint (here random) only decides where the group is split: never what is optimal
    hint = {c.name: tuple(rnd.choice(a) for a in c.allowed) for c in problem.classes} if rnd.random() < 0.7 else None
    r = solve(problem, time_limit_s=30, hint=hint)
    assert_matches_brute_force(problem, r, best)


def test_decomposed_solve_equals_one_model_at_scale() -> None:
    """11 pieces on 20 site classes with queueing: groups and splits reach the one-model optimum."""
    slo = {"out0": SloTarget(300.0), "out1": SloTarget(600.0), "out2": SloTarget(600.0)}
    fleet = synthetic_fleet(12, 5, 3, 10_000)
    for weights in (ObjectiveSpec(cost=1), ObjectiveSpec(latency=1)):
        problem, _ = build_problem(synthetic_app(11, n_models=3), fleet, cost_model(), slo=slo, weights=weights)
        # classes that cannot meet the SLO even alone are planned without it (as plan_graph does)
        alone = {c.name: solve(problem.only_class(c.name), 30).status for c in problem.classes}
        main = problem.without_slo({n for n, s in alone.items() if s == "infeasible"})
        split = solve(main, 60)
        whole = solve(main, 60, decompose=False)
        assert split.status == whole.status == "optimal"
        assert split.objective == whole.objective
        assert evaluate(main, split.assignment, split.levels).objective == split.objective
