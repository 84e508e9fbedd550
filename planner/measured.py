"""The planner's latency model re-evaluated with measured step times (checking a run against the plan).

`tierplan run` measures each compute step of a deployed plan on this machine. Its devices are not
the fleet's, so the plan's own figures cannot be compared with what runs; the plan's latency
*semantics* can: which steps add up, which overlap (branches on different sites), what each
transfer costs. `latency_with_steps` evaluates the plan's placement with every compute step at a
measured time (the rest as planned, queueing left out) under the overlap or the sum model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import networkx as nx

from tierplan.devices.costmodel import CostModel
from tierplan.planner.build import build_problem
from tierplan.planner.evaluate import evaluate, schedule
from tierplan.planner.plan import Plan
from tierplan.planner.units import ms_to_us, us_to_ms

__all__ = ["plan_pieces_graph", "latency_with_steps", "StepKey"]

# (edge class, or None for a step every class shares; plan node id; site class) -> measured ms per invocation
StepKey = tuple[str | None, str, str]


def plan_pieces_graph(plan: Plan) -> nx.DiGraph:
    """The app graph of the plan's own pieces (its models cut where `plan.cuts` says)."""
    from tierplan.partition.app_graph import build_app_graph
    graph = build_app_graph(plan.app_spec(), None, cuts={m: tuple(c) for m, c in plan.cuts.items()})
    ids = sorted(p.id for p in plan.pieces)
    if sorted(graph.nodes) != ids:
        raise ValueError(f"the plan's pieces are not its app cut at plan.cuts ({sorted(graph.nodes)} != {ids}): "
                         "re-run `tierplan plan`")
    return graph


def latency_with_steps(plan: Plan, steps: Mapping[StepKey, float], model: str = "overlap") -> dict[str, dict[str, float]]:
    """Per edge class, per sink: the plan's latency (ms) under `model` ("overlap" or "sum"), without
    queueing, with each compute step that `steps` measured at that time (others as planned)."""
    graph = plan_pieces_graph(plan)
    problem, info = build_problem(graph, plan.fleet_model(), CostModel(), latency_model=model, queueing=False)
    out: dict[str, dict[str, float]] = {}
    for c in problem.classes:
        sites = tuple(plan.pins.get(c.name, {}).get(n) or plan.per_class[c.name][n] for n in info.order)
        compute = []
        for v, n in enumerate(info.order):
            row = dict(c.compute_us[v])
            ms = steps.get((c.name, n, sites[v]), steps.get((None, n, sites[v])))
            if ms is not None:
                row[sites[v]] = ms_to_us(float(graph.nodes[n].get("rate_factor", 1.0)) * ms)
            compute.append(row)
        measured = replace(c, compute_us=tuple(compute))
        if model == "overlap":
            start, _ = schedule(problem, measured, sites)
            sink_us = {k: start[k] for k in problem.sink_nodes}
        else:
            sink_us = dict(evaluate(problem.with_classes((measured,)), {c.name: sites}).classes[c.name].sink_us)
        out[c.name] = {info.sink_names[problem.nodes[k].id]: us_to_ms(sink_us[k]) for k in problem.sink_nodes}
    return out
