"""Coverage mode: most devices within their SLOs first, then the objective, equal to brute force."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from tierplan.planner.api import plan_graph
from tierplan.planner.brute import brute_force
from tierplan.planner.build import SloTarget, build_problem
from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import solve, solve_coverage
from planner_fixtures import chain_graph, cost_model, three_tier_fleet
from tierplan.errors import InfeasibleError
from tierplan.spec import ObjectiveSpec

DEVS = ("cam-dev0", "cam-dev1", "bs-dev", "cloud-dev")


def _case(slo_ms: float, bs_instances: int = 2):
    """Two camera classes (100 and 200 devices) that must offload to one small shared base station."""
    ms = dict(zip(DEVS, (150.0, 200.0, 4.0, 2.0)))
    graph = chain_graph([ms for _ in range(3)], [1_000] * 3, input_bytes=1_000)
    fleet = three_tier_fleet(uplink_mbps=100.0, n_edge=2, count=100, bs_instances=bs_instances, cloud_instances=1)
    return graph, fleet, {"out": SloTarget(slo_ms)}


def _brute_lexicographic(problem):
    """(most devices meeting their SLOs, least objective among those) by enumerating the sets of classes
    allowed to miss their SLO (the best of a set covers at least the others)."""
    best = None
    names = [c.name for c in problem.classes if c.slo_us]
    for k in range(len(names) + 1):
        for dropped in itertools.combinations(names, k):
            found = brute_force(problem.without_slo(set(dropped)))
            if found is None:
                continue
            # the best plan in which every class outside `dropped` meets its SLO
            devices = sum(c.count for c in problem.classes if c.slo_us and c.name not in dropped)
            key = (-devices, found[0].objective)
            if best is None or key < best:
                best = key
    return best


@pytest.mark.parametrize("slo_ms,weights", [(250.0, ObjectiveSpec(cost=1)), (250.0, ObjectiveSpec(latency=1)),
                                            (400.0, ObjectiveSpec(cost=1))])
def test_coverage_mode_matches_brute_force(slo_ms: float, weights: ObjectiveSpec) -> None:
    """CP-SAT's lexicographic optimum (covered devices, then objective) equals brute-force enumeration."""
    graph, fleet, slo = _case(slo_ms)
    problem, _ = build_problem(graph, fleet, cost_model(), slo=slo, weights=weights)
    r, covered = solve_coverage(problem, 30)
    assert r.status == "optimal"
    ev = evaluate(problem.without_slo({c.name for c in problem.classes} - covered), r.assignment, r.levels)
    assert ev.feasible and ev.objective == r.objective
    devices = sum(c.count for c in problem.classes if c.name in covered)
    assert (-devices, r.objective) == _brute_lexicographic(problem)


def test_plan_serves_the_most_devices_when_shared_capacity_binds() -> None:
    """Each class meets its SLO alone, not both together: without coverage mode the error names the
    binding constraint; by default the plan meets the SLO of the most devices brute force can cover
    and names the other not-met."""
    graph, fleet, slo = _case(250.0)
    problem, _ = build_problem(graph, fleet, cost_model(), slo=slo)
    assert all(solve(problem.only_class(c.name), 10).status == "optimal" for c in problem.classes)
    with pytest.raises(InfeasibleError, match="bind"):
        plan_graph(graph, fleet, cost_model(), slo=slo, with_baselines=False, analyse_uncovered=False,
                   max_coverage=False)
    plan = plan_graph(graph, fleet, cost_model(), slo=slo, with_baselines=False, analyse_uncovered=False,
                      max_coverage=True)
    assert plan.status == "optimal"
    best_devices = -_brute_lexicographic(problem)[0]
    met = [n for n, c in plan.coverage.items() if c.meets_slo]
    missed = [n for n, c in plan.coverage.items() if not c.meets_slo]
    assert len(met) == 1 and len(missed) == 1
    assert plan.coverage[met[0]].devices == best_devices
    assert "shared capacity" in plan.coverage[missed[0]].note
    assert plan.coverage_share == pytest.approx(best_devices / 300)


def test_the_class_left_out_gets_its_best_latency_under_the_capacity_left() -> None:
    """The class that misses its SLO is planned at the least latency any of its placements reaches
    with the covered class kept where the plan put it (brute force over its placements), not at the
    cheapest placement; plan.not_met names it with that latency and its best alone (within SLO)."""
    graph, fleet, slo = _case(250.0)
    plan = plan_graph(graph, fleet, cost_model(), slo=slo, with_baselines=False, analyse_uncovered=False)
    problem, info = build_problem(graph, fleet, cost_model(), slo=slo)
    missed = [n for n, c in plan.coverage.items() if not c.meets_slo]
    assert len(missed) == 1
    out = missed[0]
    covered = next(c for c in problem.classes if c.name != out)
    keep = tuple(plan.per_class[covered.name].get(n, plan.pins[covered.name].get(n)) for n in info.order)
    free = problem.without_slo({out})
    pinned = free.with_classes(tuple(
        c if c.name == out else replace(c, allowed=tuple((s,) for s in keep)) for c in free.classes))
    best = None
    o = next(c for c in problem.classes if c.name == out)
    for combo in itertools.product(*o.allowed):
        ev = evaluate(pinned, {covered.name: keep, out: combo})
        if ev.feasible:
            lat = ev.classes[out].sink_us[problem.sink_nodes[0]]
            best = lat if best is None else min(best, lat)
    assert best is not None
    assert plan.coverage[out].latency_ms == pytest.approx(best / 1000.0, abs=1e-3)
    row = next(x for x in plan.not_met if x["edge_class"] == out)
    assert row["planned_ms"] == pytest.approx(best / 1000.0, abs=1e-3) and row["best_alone_ms"] <= 250.0
    assert "shared capacity" in str(row["why"])
