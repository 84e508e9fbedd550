"""At the scale of the issue: 50 pieces on 20 site classes are proven optimal (gap 0)."""

from __future__ import annotations

import pytest
from tierplan.devices.costmodel import CostModel
from tierplan.planner.api import plan_graph
from tierplan.planner.build import SloTarget
from tierplan.planner.synthetic import synthetic_app, synthetic_fleet

pytestmark = pytest.mark.slow   # fleet-scale solves, tens of seconds

SLO = {"out0": SloTarget(300.0), "out1": SloTarget(600.0), "out2": SloTarget(600.0)}


@pytest.mark.parametrize("objective", ["cost", "latency"])
def test_fifty_pieces_on_twenty_site_classes_proven_optimal(objective: str) -> None:
    """A 3-model, 50-piece ensemble on 12 edge + 5 base-station + 3 cloud classes reaches gap 0.

    The 10 s goal is measured in benchmarks/planner.py; here the limit is generous because the
    CPU is shared, and the assertion is the proof of optimality itself. Service-time semantics
    (queueing=False): with queueing waits these SLOs bind much harder (see planner/README.md).
    The sum latency model: this ensemble is a DAG, whose default overlap model is not proven at
    this scale within a minute (planner/README.md, benchmarks/planner.py part 4).
    """
    app = synthetic_app(50, n_models=3)
    fleet = synthetic_fleet(12, 5, 3, 10_000)
    plan = plan_graph(app, fleet, CostModel(calibration=False), slo=SLO, objective=objective, time_limit_s=60,
                      with_baselines=False, analyse_uncovered=False, queueing=False, latency_model="sum")
    assert plan.solver["joint_status"] == "optimal"
    assert plan.status == "optimal" or (plan.not_met and plan.objective_bound <= plan.objective + 1e-9)
    assert len(plan.per_class) == 12
    assert 0 < plan.coverage_share <= 1


@pytest.mark.parametrize("objective", ["cost", "latency"])
def test_fifty_pieces_on_twenty_site_classes_proven_optimal_with_queueing(objective: str) -> None:
    """With queueing waits on (the default), the 50-piece, 20-site-class case is still proven optimal.

    The 10 s goal is measured in benchmarks/planner.py; the limit here is generous for the shared
    CPU. That the decomposition does not change the optimum is checked against one model of
    everything in test_planner_decompose.py (11 pieces) and against brute force on small cases.
    """
    app = synthetic_app(50, n_models=3)
    fleet = synthetic_fleet(12, 5, 3, 10_000)
    plan = plan_graph(app, fleet, CostModel(calibration=False), slo=SLO, objective=objective, time_limit_s=60,
                      with_baselines=False, analyse_uncovered=False, latency_model="sum")
    # the joint optimum is proven; the 2 classes that cannot meet their SLO are then moved to their
    # best latency, which may cost more than the optimum (the plan's bound)
    assert plan.solver["joint_status"] == "optimal"
    assert plan.status == "optimal" or (plan.not_met and plan.objective_bound <= plan.objective + 1e-9)
    assert len(plan.per_class) == 12
    assert any(k.startswith("queue.") for views in plan.class_sinks.values() for v in views.values()
               for k in v.breakdown)
