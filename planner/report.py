"""Turn an evaluated assignment into the Plan value (plan.json): figures back in ms, $ and J."""

from __future__ import annotations

import math
from typing import Any, Mapping

import networkx as nx

from tierplan.planner.build import BuildInfo
from tierplan.planner.evaluate import Evaluation
from tierplan.planner.plan import (
    BaselineResult, PlanEdge, PlanPiece, SinkLatency,
)
from tierplan.planner.problem import COMPUTE_KINDS, Problem
from tierplan.planner.units import HOURS_PER_MONTH, ms_to_us, uj_to_j, us_to_ms, uusd_to_usd

__all__ = ["LATENCY_SEMANTICS", "OVERLAP_SEMANTICS", "latency_semantics", "sink_views", "class_latency_ms", "coverage_share", "natural_objective",
           "cost_per_hour_usd", "monthly_by_tier", "baseline_result", "plan_pieces", "plan_edges",
           "per_class_ids", "class_mode", "mean_latency_ms", "class_meets"]

LATENCY_SEMANTICS = (
    "sum (chains): per request and sink, the sum of the compute of every piece the sink depends on (on the "
    "site running it) and of every transfer feeding them (once per consuming site; RTT/2 + bytes/bandwidth "
    "+ serialisation + z_p * jitter per link crossed), plus the p-quantile queueing wait at every site "
    "visited (M/G/1 at the site's planned utilisation level, the job the size of the request's own work there); "
    "one site runs a request's pieces one after another; exact for chains; pieces a sink does not depend on never add")

OVERLAP_SEMANTICS = (
    "overlap (DAGs): per request, every node starts when each of its inputs has arrived (its producer "
    "finished, plus the transfer when they run on different sites: RTT/2 + bytes/bandwidth + serialisation "
    "+ z_p * jitter per link crossed) and every earlier node of the same request on its site has finished "
    "(one site runs a request's nodes one at a time, in the plan's order); branches on different sites "
    "overlap; a sink's latency is its start (the longest path), plus the p-quantile queueing wait at every "
    "site visited (M/G/1 at the site's planned utilisation level); transfers are delays (they do not share "
    "a link's bandwidth with each other); its breakdown is the critical path")


def latency_semantics(problem: Problem) -> str:
    """The plan's `latency_semantics`: which latency model the problem was planned with."""
    return OVERLAP_SEMANTICS if problem.latency_model == "overlap" else LATENCY_SEMANTICS


def _tier_key(problem: Problem, key: str) -> str:
    kind, _, rest = key.partition(".")
    tier = problem.labels
    if kind in ("compute", "queue"):
        return f"{kind}.{tier.get(rest, rest)}"
    a, _, b = rest.partition("->")
    return f"transfer.{tier.get(a, a)}->{tier.get(b, b)}"


def sink_views(problem: Problem, info: BuildInfo, ev: Evaluation) -> dict[str, dict[str, SinkLatency]]:
    """class -> sink name -> latency with its breakdown (per tier, and per site class)."""
    out: dict[str, dict[str, SinkLatency]] = {}
    for c in problem.classes:
        ce = ev.classes[c.name]
        view = {}
        for v in problem.sink_nodes:
            bd: dict[str, float] = {}
            for key, us in ce.breakdown_us[v].items():
                tk = _tier_key(problem, key)
                bd[tk] = bd.get(tk, 0.0) + us_to_ms(us)
            sites = {f"site:{k}": us_to_ms(us) for k, us in ce.breakdown_us[v].items()}
            slo_ms = info_slo_ms(info, problem, c, v)
            view[info.sink_names[problem.nodes[v].id]] = SinkLatency(
                latency_ms=us_to_ms(ce.sink_us[v]), slo_ms=slo_ms,
                meets_slo=None if slo_ms is None else ce.sink_us[v] <= ms_to_us(slo_ms),
                breakdown={**{k: round(x, 4) for k, x in sorted(bd.items())},
                           **{k: round(x, 4) for k, x in sorted(sites.items())}})
        out[c.name] = view
    return out


def info_slo_ms(info: BuildInfo, problem: Problem, c, v: int) -> float | None:
    """The SLO of sink v as the user gave it (also for classes whose SLO was dropped as not coverable)."""
    return info.slo_ms.get(info.sink_names[problem.nodes[v].id])


def class_latency_ms(ev: Evaluation, name: str) -> float:
    """The slowest sink of one class, ms."""
    ce = ev.classes[name]
    return us_to_ms(max(ce.sink_us.values(), default=0))


def class_meets(problem: Problem, info: BuildInfo, ev: Evaluation, name: str) -> bool:
    c = next(x for x in problem.classes if x.name == name)
    ce = ev.classes[name]
    for v in problem.sink_nodes:
        slo = info_slo_ms(info, problem, c, v)
        if slo is not None and ce.sink_us[v] > ms_to_us(slo):
            return False
    return True


def coverage_share(problem: Problem, info: BuildInfo, ev: Evaluation) -> float:
    """Share of devices (over the participating classes) whose every SLO is met."""
    total = sum(c.count for c in problem.classes)
    ok = sum(c.count for c in problem.classes if c.name in ev.classes and class_meets(problem, info, ev, c.name))
    return ok / total if total else 0.0


def class_mode(problem: Problem, info: BuildInfo, ev: Evaluation, name: str,
               assignment: Mapping[str, tuple[str, ...]]) -> str:
    c = next(x for x in problem.classes if x.name == name)
    if not class_meets(problem, info, ev, name):
        return "not-met"
    on_dev = all(assignment[name][v] == c.chain[0] for v in problem.compute_nodes)
    return "on-device" if on_dev else "offload"


def mean_latency_ms(problem: Problem, ev: Evaluation) -> float:
    """Request-weighted mean over classes of the slowest sink (the plan-level latency figure)."""
    W = sum(c.weight for c in problem.classes if c.name in ev.classes)
    if not W:
        return 0.0
    return sum(c.weight * class_latency_ms(ev, c.name) for c in problem.classes if c.name in ev.classes) / W


def natural_objective(problem: Problem, info: BuildInfo, ev: Evaluation) -> float:
    """The objective in natural units: $/h, mean sink latency ms, mean J per request, or the weighted mix."""
    W = sum(c.weight for c in problem.classes) or 1
    K = len(problem.latency_nodes) or 1
    cost = uusd_to_usd(ev.cost_uusd_h)
    lat = ev.latency_term / (1000.0 * W * K)
    en = uj_to_j(ev.energy_term) / W
    if problem.objective_kind == "cost":
        return cost
    if problem.objective_kind == "latency":
        return lat
    if problem.objective_kind == "energy":
        return en
    w = info.weights
    return w.cost * cost + w.latency * lat + w.energy * en


def cost_per_hour_usd(problem: Problem, ev: Evaluation) -> float:
    """Rented instances + egress + owned devices that carry a price."""
    return uusd_to_usd(ev.cost_uusd_h + problem.fixed_cost_uusd_h)


def monthly_by_tier(problem: Problem, ev: Evaluation) -> dict[str, float]:
    """Monthly cost per tier (instances) and of egress, $ (730 h months)."""
    out: dict[str, float] = {}
    for s, n in ev.instances.items():
        sd = problem.sites[s]
        out[sd.tier] = out.get(sd.tier, 0.0) + uusd_to_usd(n * sd.price_uusd_per_h) * HOURS_PER_MONTH
    if problem.fixed_cost_uusd_h:
        out["edge"] = out.get("edge", 0.0) + uusd_to_usd(problem.fixed_cost_uusd_h) * HOURS_PER_MONTH
    egress = sum(ce.egress_uusd_h for ce in ev.classes.values())
    out["egress"] = uusd_to_usd(egress) * HOURS_PER_MONTH
    return {k: round(v, 2) for k, v in out.items()}


def per_class_ids(problem: Problem, info: BuildInfo, assignment: Mapping[str, tuple[str, ...]]) -> dict[str, dict[str, str]]:
    """class -> node id -> site class, for pieces and transforms (what runs where)."""
    return {c: {info.order[v]: sites[v] for v in problem.compute_nodes} for c, sites in assignment.items()}


def baseline_result(problem: Problem, info: BuildInfo, asg, ev: Evaluation) -> BaselineResult:
    if not ev.classes:
        return BaselineResult(latency_ms=float("nan"), cost_per_hour_usd=float("nan"), feasible=False,
                              reason="; ".join(ev.violations[:3]))
    views = sink_views(problem, info, ev)
    first = problem.classes[0].name
    per_class = per_class_ids(problem, info, asg)
    return BaselineResult(latency_ms=round(mean_latency_ms(problem, ev), 4),
                          cost_per_hour_usd=round(cost_per_hour_usd(problem, ev), 6),
                          feasible=ev.feasible, assignment=per_class[first], sinks=views[first],
                          reason="; ".join(ev.violations[:3]) or None,
                          coverage_share=round(coverage_share(problem, info, ev), 6),
                          per_class=per_class, objective=round(natural_objective(problem, info, ev), 9))


def _tinfo(t) -> dict[str, Any]:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "nbytes": int(t.nbytes)}


def plan_pieces(graph: nx.DiGraph, info: BuildInfo) -> list[PlanPiece]:
    """Every node as runtime/ and simulations/ need it: files, tensors, bytes, ms per site class."""
    out = []
    for n in info.order:
        a = graph.nodes[n]
        kind = a["kind"]
        pp = dict(id=n, kind=kind, rate_factor=float(a.get("rate_factor", 1.0)),
                  latency_ms={k: round(x, 6) for k, x in info.ms[n].items() if math.isfinite(x)}
                  if kind in COMPUTE_KINDS else {})   # .inf (cannot run there) is left out
        if kind == "piece":
            pc = a["piece"]
            pp.update(model=pc.model, file=pc.file, inputs=[_tinfo(t) for t in pc.inputs],
                      outputs=[_tinfo(t) for t in pc.outputs], flops=float(pc.flops),
                      param_bytes=int(pc.param_bytes), segments=list(a.get("segments") or []))
        elif kind == "source":
            spec = a.get("spec")
            pp.update(outputs=[{"name": n, "shape": list(getattr(spec, "shape", []) or []),
                                "dtype": getattr(spec, "dtype", "float32"), "nbytes": int(a.get("nbytes", 0))}])
        elif kind == "transform":
            spec = a.get("spec")
            pp.update(model=None, file=None)
            if spec is not None:
                pp["function"] = spec.function
        out.append(PlanPiece(**pp, source=a.get("source")))
    return out


def plan_edges(graph: nx.DiGraph, info: BuildInfo) -> list[PlanEdge]:
    idx = {n: i for i, n in enumerate(info.order)}
    edges = sorted(graph.edges(data=True), key=lambda e: (idx[e[0]], idx[e[1]]))
    return [PlanEdge(src=u, dst=v, nbytes=int(d.get("nbytes", 0)), tensors=list(d.get("tensors") or []),
                     private=bool(d.get("private", False))) for u, v, d in edges]
