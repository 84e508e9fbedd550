"""Public entry points of the planner: plan an app on a fleet (CP-SAT), with baselines and coverage.

    plan = plan_app(app, fleet_spec, objective="cost")           # specs in, Plan out
    plan = plan_graph(app_graph, fleet, cost_model, slo=...)     # the pure, lower-level form

Steps: build the integer problem (planner.build) -> baselines, greedy as the hint (or the old
plan's placement with `from_plan`) -> per class, can its SLO be met at all? (classes that
cannot are reported as not-met, with the best they could get and what they would need) ->
CP-SAT on the whole fleet -> diagnose infeasibility by relaxing one family of constraints at a
time -> the Plan (planner.report).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import networkx as nx

from tierplan.planner.baselines import greedy, run_baselines
from tierplan.planner.build import BuildInfo, SloTarget, build_problem
from tierplan.planner.evaluate import Evaluation, evaluate
from tierplan.planner.formulation import SolveResult, solve, solve_coverage
from tierplan.planner.progress import ProgressHook, phase, reporting
from tierplan.planner.plan import ClassCoverage, ParetoPoint, PieceMove, Plan
from tierplan.planner.problem import Problem
from tierplan.planner.report import (
    LATENCY_SEMANTICS, baseline_result, class_latency_ms, class_meets, class_mode, cost_per_hour_usd,
    coverage_share, mean_latency_ms, monthly_by_tier, natural_objective, per_class_ids, plan_edges, plan_pieces, sink_views,
)
from tierplan.planner.units import us_to_ms, uusd_to_usd
from tierplan.errors import InfeasibleError, InputError
from tierplan.spec import ObjectiveSpec

__all__ = ["plan_app", "plan_graph", "describe_assignment", "site_devices"]

_SECONDARY = {"cost": "latency", "latency": "cost", "energy": "latency"}
_RELAX = 1000          # factor by which a relaxed capacity is widened when diagnosing
_SCALE_MAX = 1000.0    # largest bandwidth multiplier tried for "what uplink would it need"
_BISECT_STEPS = 7
_TIE_SHARE = 0.25      # of a solve's limit at most for breaking ties, after the proof
_ASSEMBLY_SHARE = 0.05  # of the time limit, kept for evaluating and assembling the plan
_EXPLAIN_S = 0.15       # kept per SLO sink of a not-covered class for its best-latency solve ...
_EXPLAIN_MAX_SHARE = 0.1  # ... at most this share of the time limit in all


def _weights(objective: Any) -> ObjectiveSpec:
    if objective is None:
        return ObjectiveSpec(cost=1.0)
    if isinstance(objective, ObjectiveSpec):
        return objective
    if isinstance(objective, Mapping):
        return ObjectiveSpec(**objective)
    if objective in ("cost", "latency", "energy"):
        return ObjectiveSpec(**{objective: 1.0})
    raise InputError(f"objective must be cost, latency or energy (or weights), got {objective!r}")


def describe_assignment(problem: Problem, sites: tuple[str, ...]) -> str:
    """'all pieces in eu-1' or '3 pieces on cam, 2 on cloud' for one class's placement."""
    used: dict[str, int] = {}
    for v in problem.compute_nodes:
        used[sites[v]] = used.get(sites[v], 0) + 1
    if len(used) == 1:
        return f"all pieces in {next(iter(used))}"
    return ", ".join(f"{n} piece{'s' if n > 1 else ''} on {s}" for s, n in used.items())


def _hint(problem: Problem, info: BuildInfo, from_plan: Plan | None) -> dict[str, tuple[str, ...]]:
    base = greedy(problem)
    if from_plan is None:
        return base
    out = {}
    for c in problem.classes:
        old = from_plan.per_class.get(c.name) or {}
        sites = list(base[c.name])
        for v in problem.compute_nodes:
            s = old.get(info.order[v])
            if s in c.allowed[v]:
                sites[v] = s
        out[c.name] = tuple(sites)
    return out


def _best_latency(problem: Problem, sink: int, time_limit_s: float) -> tuple[int, tuple[str, ...]] | None:
    """Least latency of one sink for a one-class problem without its SLO."""
    c = problem.classes[0]
    sub = problem.without_slo().with_objective("latency", 0, 1, 0).with_latency_sinks((sink,))
    sub = replace(sub, budget_uusd_h=None)
    r = solve(sub, time_limit_s)
    if r.status not in ("optimal", "feasible"):
        return None
    return evaluate(sub, r.assignment, r.levels).classes[c.name].sink_us[sink], r.assignment[c.name]


def _slo_message(problem: Problem, info: BuildInfo, cname: str, time_limit_s: float) -> tuple[str, dict]:
    """'SLO 50 ms cannot be met: the best possible p95 is 73 ms (all pieces in eu-1)' for a class."""
    sub = problem.only_class(cname)
    c = sub.classes[0]
    parts, best, notes = [], {}, []
    for v, lim in c.slo_us.items():
        got = _best_latency(sub, v, time_limit_s)
        name = info.sink_names[problem.nodes[v].id]
        if got is None:
            continue
        us, sites = got
        best[name] = us_to_ms(us)
        if us > lim:
            parts.append(f"SLO {us_to_ms(lim):g} ms for sink {name!r} cannot be met on {cname}: the best "
                         f"possible p{info.percentile:g} is {us_to_ms(us):.1f} ms ({describe_assignment(sub, sites)})")
            notes.append(f"{name}: best p{info.percentile:g} {us_to_ms(us):.1f} ms > SLO {us_to_ms(lim):g} ms "
                         f"({describe_assignment(sub, sites)})")
    if not parts:
        parts.append(f"the SLOs of {cname} cannot all be met at once")
        notes.append("its SLOs cannot all be met at once")
    return "; ".join(parts), "; ".join(notes)


def site_devices(fleet: Any) -> dict[str, str]:
    """Site class -> device name (catalog name, or an inline device's own name): lets
    `tierplan compile PLAN` find each site's device without the fleet file."""
    return {name: sc.device.name for name, sc in fleet.classes.items()}


def _relaxations(problem: Problem) -> list[tuple[str, Problem]]:
    sites_inst = {s: (replace(sd, max_instances=sd.max_instances * _RELAX + 1) if not sd.fixed_instances
                      else replace(sd, util_cap_ppm=sd.util_cap_ppm * _RELAX,
                                   levels_ppm=tuple(r * _RELAX for r in sd.levels_ppm)))
                  for s, sd in problem.sites.items()}
    sites_mem = {s: replace(sd, memory_kb=sd.memory_kb * _RELAX) for s, sd in problem.sites.items()}
    links = {k: v * _RELAX for k, v in problem.link_cap_bps.items()}
    out = []
    if problem.budget_uusd_h is not None:
        out.append(("budget", replace(problem, budget_uusd_h=None)))
    out += [("compute capacity", replace(problem, sites=sites_inst)),
            ("memory", replace(problem, sites=sites_mem)),
            ("link capacity", replace(problem, link_cap_bps=links)),
            ("capacity", replace(problem, sites={s: replace(sites_inst[s], memory_kb=sites_mem[s].memory_kb)
                                                  for s in problem.sites}, link_cap_bps=links, budget_uusd_h=None))]
    return out


def diagnose(problem: Problem, time_limit_s: float) -> str:
    """Which constraint family binds: relax one at a time, say what the relaxed optimum needs."""
    each = max(0.5, time_limit_s / 5)
    for name, relaxed in _relaxations(problem):
        r = solve(relaxed.with_objective("cost", 1, 0, 0), each)
        if r.status not in ("optimal", "feasible"):
            continue
        ev = evaluate(problem, r.assignment, r.levels)
        need = "; ".join(ev.violations[:3])
        if name == "budget":
            return (f"budget ${uusd_to_usd(problem.budget_uusd_h):g}/h is too small: the cheapest plan meeting "
                    f"the SLOs costs ${uusd_to_usd(ev.cost_uusd_h):.2f}/h. To fix: raise budget_usd_per_hour")
        return (f"{name} binds: the SLOs can be met only with more {name} ({need}). "
                f"To fix: raise max_instances / add sites, or relax the SLO")
    return ("the SLOs of the classes cannot all be met together with the shared sites and links. "
            "To fix: relax the SLO or add capacity")


def _uplink_needed(graph, fleet, cost_model, slo, weights, budget, cname: str, limit_s: float,
                   queueing: bool = True) -> str:
    """What the class would need: the smallest multiple of its own link's bandwidth meeting its SLO."""
    link = fleet.classes[cname].link
    if link is None:
        return "a faster device (it has no link to offload over)"

    def ok(scale: float) -> bool:
        p, _ = build_problem(graph, fleet, cost_model, slo=slo, weights=weights, link_scale={cname: scale},
                             queueing=queueing)
        sub = replace(p.only_class(cname), budget_uusd_h=None)
        return solve(sub, limit_s).status in ("optimal", "feasible")

    if not ok(_SCALE_MAX):
        return (f"a faster device or a site closer than {link.rtt_ms:g} ms RTT (no uplink bandwidth is enough)")
    lo, hi = 1.0, _SCALE_MAX
    for _ in range(_BISECT_STEPS):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return f"uplink >= {link.uplink_mbps * hi:.3g} Mbit/s (now {link.uplink_mbps:g})"


def plan_graph(graph: nx.DiGraph, fleet: Any, cost_model: Any, *,
               slo: Mapping[str, SloTarget] | None = None, objective: Any = None,
               budget_usd_per_hour: float | None = None, time_limit_s: float = 10.0,
               from_plan: Plan | None = None, pareto: bool = False, pareto_points: int = 5,
               with_baselines: bool = True, analyse_uncovered: bool = True, queueing: bool = True,
               max_coverage: bool = False) -> Plan:
    """Place the app graph on the fleet; returns a Plan or raises InfeasibleError (why, what is achievable).

    `queueing` (default) adds each site's p-quantile queueing wait at its planned utilisation
    (planner.queueing); False plans on service times alone. `max_coverage`: when every class
    meets its SLO alone but the shared sites and links cannot serve them all together, plan the
    most devices within their SLOs, then the best objective (the others are served without
    their SLO and named not-met) instead of raising InfeasibleError.

    Example:
        >>> plan = plan_graph(g, resolve_fleet(fleet_spec), CostModel(), slo={"out": SloTarget(100)})
        >>> plan.status, plan.per_class["cameras"]["detector/p0"]
        ('optimal', 'cameras')
    """
    t0 = time.perf_counter()
    weights = _weights(objective)
    slo = dict(slo or {})
    for name in slo:
        if f"sink:{name}" not in graph.nodes and name not in graph.nodes:
            raise InputError(f"slo: unknown sink {name!r}")
    problem, info = build_problem(graph, fleet, cost_model, slo=slo, weights=weights,
                                  budget_usd_per_hour=budget_usd_per_hour, queueing=queueing)
    hint = _hint(problem, info, from_plan)

    def left() -> float:
        return max(0.5, time_limit_s - (time.perf_counter() - t0))

    # ---- per class alone (a relaxation: the others' load is left out): can it meet its SLO at
    # all, and its best placement (the joint solve's hint, or the answer when classes decouple)
    uncovered: dict[str, str] = {}
    notes: dict[str, str] = {}
    separable = problem.coef_cost == 0          # latency / energy: a sum over classes
    secondary = _SECONDARY.get(problem.objective_kind)
    # separable: the classes' own optima are usually the answer, so they get most of the time
    share = 0.8 if separable else 0.5
    per_class = max(0.5, min(10.0, share * time_limit_s / max(1, len(problem.classes))))
    alone: dict[str, SolveResult] = {}
    for i, c in enumerate(problem.classes):
        phase(f"edge class {c.name} alone ({i + 1}/{len(problem.classes)})")
        sub = replace(problem.only_class(c.name), budget_uusd_h=None)
        # the class's share of the time left (what earlier classes did not use goes to later ones)
        each = max(0.5, min(10.0, share * left() / (len(problem.classes) - i)))
        r = solve(sub, each, hint={c.name: hint[c.name]}, secondary=secondary if separable else None,
                  secondary_share=_TIE_SHARE)
        if r.status == "infeasible" and c.slo_us:
            r2 = solve(sub.without_slo(), per_class, hint={c.name: hint[c.name]},
                       secondary=secondary if separable else None, secondary_share=_TIE_SHARE)
            if r2.status == "infeasible":
                raise InfeasibleError(f"edge class {c.name}: no placement fits even without the SLO: "
                                      f"{diagnose(sub.without_slo(), per_class)}")
            # why (its best latency per sink) is worked out after the plan is proven: it is only reported
            uncovered[c.name], notes[c.name] = "", ""
            r = r2
        elif r.status == "infeasible":
            raise InfeasibleError(f"edge class {c.name}: no placement fits: {diagnose(sub, per_class)}")
        alone[c.name] = r

    shared_out: set[str] = set()    # classes left out by coverage maximisation (explained there)

    # time kept for working out, after the proof, why the not-covered classes miss their SLO
    n_explain = sum(len(c.slo_us) for c in problem.classes if c.name in uncovered)
    reserve = min(_EXPLAIN_MAX_SHARE * time_limit_s, _EXPLAIN_S * n_explain)

    def solve_left() -> float:
        """Time for the optimisation: the limit less what assembling and explaining the plan need."""
        return max(0.5, left() - _ASSEMBLY_SHARE * time_limit_s - reserve)

    def explain() -> None:
        each = max(_EXPLAIN_S, min(per_class, (left() - _ASSEMBLY_SHARE * time_limit_s) / max(1, n_explain)))
        for name in uncovered:
            if name not in shared_out:
                uncovered[name], notes[name] = _slo_message(problem, info, name, each)

    if uncovered and len(uncovered) == len(problem.classes):
        explain()
        first = max(problem.classes, key=lambda c: c.count).name
        raise InfeasibleError(uncovered[first] + (f" (and {len(uncovered) - 1} more edge classes)"
                                                  if len(uncovered) > 1 else "")
                              + ". To fix: relax the SLO, use faster sites, or a better link")
    main = problem.without_slo(set(uncovered)) if uncovered else problem
    if separable:
        phase("proving each class's optimum")
        alone = _prove_alone(main, alone, hint, secondary, solve_left)
    combined = {n: (r.assignment[n] if r.assignment else hint[n]) for n, r in alone.items()}
    cev = evaluate(main, combined)
    if not cev.feasible:
        # rented sites at the lowest level any class chose alone (more instances, shorter queues)
        merged: dict[str, int] = {}
        for x in alone.values():
            for s_, j in x.levels.items():
                merged[s_] = min(j, merged.get(s_, j))
        if merged and evaluate(main, combined, merged).feasible:
            cev = evaluate(main, combined, merged)
    reason = None
    alone_sum = sum(r.objective or 0 for r in alone.values())
    if (separable and cev.feasible and all(r.status in ("optimal", "feasible") for r in alone.values())
            and cev.objective == alone_sum):
        # the classes' own optima respect every shared constraint and queue no longer together
        # than alone: their sum is the joint optimum (each alone-problem relaxes the joint one),
        # proven when each class was proven
        bound = sum(r.bound or 0 for r in alone.values())
        proven = all(r.status == "optimal" for r in alone.values())
        r = SolveResult("optimal" if proven else "feasible", combined, cev.objective,
                        cev.objective if proven else min(bound, cev.objective),
                        time.perf_counter() - t0, cev.latency_term, dict(cev.levels),
                        proof_s=time.perf_counter() - t0)
    else:
        if not cev.feasible:
            # classes compete for shared capacity: plan them one after another (most requests
            # first) on what the previous ones left, a feasible start for the joint solve
            seq = _sequential(main, combined, per_class, secondary if separable else None)
            if evaluate(main, seq).feasible:
                combined, cev = seq, evaluate(main, seq)
        # the joint solve ends a little before the limit: the plan is assembled after it
        started = time.perf_counter() - t0
        # ... and before the reasons of the classes that cannot meet their SLO are worked out
        phase(f"all {len(main.classes)} edge classes together")
        r = solve(main, solve_left(),
                  hint=combined if cev.feasible else hint, secondary=secondary,
                  secondary_share=_TIE_SHARE)
        r = replace(r, proof_s=started + (r.proof_s if r.proof_s is not None else r.solve_s))
        if separable and r.status in ("feasible", "unknown"):
            # each class alone relaxes the joint problem: the sum of their bounds bounds it
            lower = sum(x.bound or 0 for x in alone.values())
            if r.status == "unknown" and cev.feasible:
                r = SolveResult("feasible", combined, cev.objective, lower, r.solve_s, cev.latency_term,
                                dict(cev.levels))
            elif r.objective is not None and (r.bound is None or lower > r.bound):
                r = replace(r, bound=min(lower, r.objective))
        if r.status == "infeasible" and max_coverage:
            r, main = _most_covered(main, info, combined, left(), uncovered, notes, shared_out)
            r = replace(r, proof_s=time.perf_counter() - t0)
        if r.status == "infeasible":
            raise InfeasibleError(diagnose(main, min(left(), time_limit_s)))
        if r.status not in ("optimal", "feasible"):
            fallback = combined if cev.feasible else hint
            hev = cev if cev.feasible else evaluate(main, fallback)
            if not hev.feasible:
                raise InfeasibleError(f"CP-SAT found no plan within {time_limit_s:g} s (status {r.status}) and "
                                      f"the greedy placement violates: {'; '.join(hev.violations[:2])}. "
                                      f"To fix: --time-limit {int(time_limit_s * 4)}")
            reason = f"CP-SAT status {r.status} after {r.solve_s:.1f} s: the best per-class placement is shown"
            r = SolveResult("feasible", dict(fallback), hev.objective, None, r.solve_s, hev.latency_term,
                            dict(hev.levels))
    explain()
    ev = evaluate(main, r.assignment, r.levels)
    plan = _assemble(graph, main, info, r, ev, t0, reason)
    plan = plan.model_copy(update={"coverage": _coverage(graph, fleet, cost_model, slo, weights,
                                                          budget_usd_per_hour, main, info, ev, r,
                                                          notes, analyse_uncovered)})
    plan = plan.model_copy(update={"coverage_summary": _coverage_summary(plan, info),
                                   "site_devices": site_devices(fleet)})
    if with_baselines:
        phase("baselines")
        base = run_baselines(main)
        plan = plan.model_copy(update={"baselines": {n: baseline_result(main, info, a, bev)
                                                     for n, (a, bev) in base.items()}})
    if from_plan is not None:
        plan = plan.model_copy(update={"moves": _moves(from_plan, plan)})
    if pareto:
        phase("cost-latency frontier")
        plan = plan.model_copy(update={"pareto": _pareto(main, info, r, pareto_points, max(time_limit_s, 2.0))})
    return plan.model_copy(update={"solve_s": round(time.perf_counter() - t0, 4)})


def _most_covered(main: Problem, info: BuildInfo, start: dict[str, tuple[str, ...]], limit_s: float,
                  uncovered: dict[str, str], notes: dict[str, str],
                  shared_out: set[str]) -> tuple[SolveResult, Problem]:
    """Coverage mode: the most devices within their SLOs, then the least objective
    (planner.formulation.solve_coverage); the classes left out are recorded (in place) with why."""
    r, covered = solve_coverage(main, limit_s, hint=start)
    if r.status not in ("optimal", "feasible"):
        return r, main
    out = [c for c in main.classes if c.slo_us and c.name not in covered]
    total = sum(c.count for c in main.classes) or 1
    share = sum(c.count for c in main.classes if c.name in covered) / total
    for c in out:
        uncovered[c.name] = (f"{c.name} meets its SLO alone, but the shared sites and links cannot serve it "
                             f"together with the classes covering more devices ({100 * share:.0f}% of "
                             f"devices covered at most)")
        notes[c.name] = "not served within its SLO: shared capacity goes to classes covering more devices"
        shared_out.add(c.name)
    return r, main.without_slo({c.name for c in out})


def _prove_alone(problem: Problem, alone: dict[str, SolveResult], hint: dict[str, tuple[str, ...]],
                 secondary: str | None, left) -> dict[str, SolveResult]:
    """Re-solve the classes whose own optimum was not proven in their first share of the time,
    each with its share of the time left, from the placement found (their sum is the answer of a
    separable objective, so an unproven class leaves the whole plan unproven)."""
    out = dict(alone)
    todo = [n for n, r in alone.items() if r.status != "optimal"]
    for i, n in enumerate(todo):
        sub = replace(problem.only_class(n), budget_uusd_h=None)
        start = alone[n].assignment or {n: hint[n]}
        r = solve(sub, 0.8 * left() / (len(todo) - i), hint=start, secondary=secondary, secondary_share=_TIE_SHARE)
        if r.status in ("optimal", "feasible") and (alone[n].objective is None or r.status == "optimal"
                                                     or r.objective <= alone[n].objective):
            out[n] = r
    return out


def _sequential(problem: Problem, start: dict[str, tuple[str, ...]], limit_s: float,
                secondary: str | None) -> dict[str, tuple[str, ...]]:
    """Per class in order of requests, solve it alone on the load the earlier classes left."""
    base = {s: sd.base_load_ppm for s, sd in problem.sites.items()}
    out = dict(start)
    for c in sorted(problem.classes, key=lambda c: -c.weight):
        sites = {s: replace(sd, base_load_ppm=base[s]) for s, sd in problem.sites.items()}
        sub = replace(problem.only_class(c.name), sites=sites, budget_uusd_h=None)
        r = solve(sub, limit_s, hint={c.name: start[c.name]}, secondary=secondary)
        if r.status in ("optimal", "feasible"):
            out[c.name] = r.assignment[c.name]
        for v in problem.compute_nodes:
            s = out[c.name][v]
            base[s] += c.load_ppm[v][s]
    return out


def _assemble(graph, problem: Problem, info: BuildInfo, r: SolveResult, ev: Evaluation, t0: float,
              reason: str | None) -> Plan:
    views = sink_views(problem, info, ev)
    per_class = per_class_ids(problem, info, r.assignment)
    first = problem.classes[0].name
    req_h = sum(info.requests_per_s.values()) * 3600.0
    cost_h = cost_per_hour_usd(problem, ev)
    bound = None
    if r.bound is not None and r.objective:
        bound = natural_objective(problem, info, ev) * (r.bound / r.objective)
    elif r.bound is not None:
        bound = 0.0
    energy = ev.energy_term / max(sum(c.weight for c in problem.classes), 1) / 1e6
    return Plan(status=r.status, objective=round(natural_objective(problem, info, ev), 9),
                objective_kind=problem.objective_kind, gap=r.gap, assignment=per_class[first],
                per_class=per_class, sinks=views[first], class_sinks=views,
                cost_per_hour_usd=round(cost_h, 6),
                cost_per_1k_requests_usd=round(cost_h / req_h * 1000.0, 9) if req_h else 0.0,
                energy_j_per_request=round(energy, 9), instances=dict(ev.instances),
                solve_s=round(time.perf_counter() - t0, 4), reason=reason,
                pieces=plan_pieces(graph, info), edges=plan_edges(graph, info),
                objective_bound=None if bound is None else round(bound, 9),
                latency_ms=round(mean_latency_ms(problem, ev), 4), site_tiers=dict(problem.labels),
                pins={c: {info.order[v]: sites[v] for v, n in enumerate(problem.nodes)
                          if n.kind in ("source", "sink")} for c, sites in r.assignment.items()},
                coverage_share=round(coverage_share(problem, info, ev), 6),
                monthly_cost_usd_by_tier=monthly_by_tier(problem, ev), requests_per_hour=req_h,
                order=list(info.order), latency_semantics=LATENCY_SEMANTICS, percentile=info.percentile,
                solver={"engine": "cp-sat", "status": r.status, "objective_int": r.objective or 0,
                        "bound_int": r.bound if r.bound is not None else "none",
                        "proof_s": round(r.proof_s, 4) if r.proof_s is not None else "none",
                        "cp_sat_s": round(r.solve_s, 4)})


def _coverage(graph, fleet, cost_model, slo, weights, budget, problem: Problem, info: BuildInfo,
              ev: Evaluation, r: SolveResult, uncovered: dict[str, str], analyse: bool) -> dict[str, ClassCoverage]:
    out = {}
    for c in problem.classes:
        mode = class_mode(problem, info, ev, c.name, r.assignment)
        note = ""
        if c.name in uncovered:
            note = uncovered[c.name]
            if analyse:
                note += "; would need " + _uplink_needed(graph, fleet, cost_model, slo, weights, budget,
                                                         c.name, 1.0, bool(problem.sites and any(
                                                             sd.levels_ppm for sd in problem.sites.values())))
        out[c.name] = ClassCoverage(devices=c.count, mode=mode, latency_ms=round(class_latency_ms(ev, c.name), 4),
                                    meets_slo=class_meets(problem, info, ev, c.name), note=note)
    return out


def _coverage_summary(plan: Plan, info: BuildInfo) -> str:
    if not info.slo_ms:
        return "no SLO given: every class is served"
    total = sum(c.devices for c in plan.coverage.values()) or 1
    ok = sum(c.devices for c in plan.coverage.values() if c.meets_slo)
    slo_txt = ", ".join(f"{v:g} ms ({k})" for k, v in info.slo_ms.items())
    s = f"meets {slo_txt} p{info.percentile:g} on {100 * ok / total:.0f}% of devices"
    rest = [(n, c) for n, c in plan.coverage.items() if not c.meets_slo]
    if rest:
        s += "; the remaining " + "; ".join(f"{n} ({c.devices:,} devices): {c.note}" for n, c in rest)
    return s


def _moves(old: Plan, new: Plan) -> list[PieceMove]:
    out = []
    for cname, sites in new.per_class.items():
        before = old.per_class.get(cname, {})
        for piece, site in sites.items():
            if before.get(piece) != site:
                out.append(PieceMove(edge_class=cname, piece=piece, from_site=before.get(piece), to_site=site))
    return out


def _pareto(problem: Problem, info: BuildInfo, r_main: SolveResult, points: int, budget_s: float) -> list[ParetoPoint]:
    """Cost-latency frontier by the epsilon-constraint method on the weighted latency term."""
    W = sum(c.weight for c in problem.classes) or 1
    K = len(problem.latency_nodes) or 1
    each = max(0.5, budget_s / (points + 2))
    cost_p = problem.with_objective("cost", 1, 0, 0)
    lat_p = problem.with_objective("latency", 0, 1, 0)
    r_lat = solve(lat_p, each, secondary="cost")
    r_cost = solve(cost_p, each, secondary="latency")
    if r_lat.status not in ("optimal", "feasible") or r_cost.status not in ("optimal", "feasible"):
        return []
    lo = evaluate(problem, r_lat.assignment, r_lat.levels).latency_term
    hi = evaluate(problem, r_cost.assignment, r_cost.levels).latency_term
    eps = sorted({int(round(lo + (hi - lo) * k / max(points - 1, 1))) for k in range(points)})
    out: list[ParetoPoint] = []
    seen = set()
    for e in eps:
        r = solve(cost_p, each, latency_max=e, secondary="latency")
        if r.status not in ("optimal", "feasible"):
            continue
        ev = evaluate(problem, r.assignment, r.levels)
        key = (ev.cost_uusd_h, ev.latency_term)
        if key in seen:
            continue
        seen.add(key)
        out.append(ParetoPoint(latency_ms=round(ev.latency_term / (1000.0 * W * K), 4),
                               cost_per_hour_usd=round(cost_per_hour_usd(problem, ev), 6), status=r.status,
                               per_class=per_class_ids(problem, info, r.assignment)))
    return sorted(out, key=lambda p: p.latency_ms)


def _sha(obj: Any) -> str:
    text = obj.model_dump_json() if hasattr(obj, "model_dump_json") else repr(obj)
    return hashlib.sha256(text.encode()).hexdigest()


def plan_app(app: Any, fleet: Any, objective: Any = None, cost_model: Any = None, time_limit_s: float = 10.0,
             from_plan: Plan | str | Path | None = None, pieces_dir: str | Path | None = None,
             pareto: bool = False, app_graph: nx.DiGraph | None = None, max_coverage: bool = False,
             progress: ProgressHook | None = None) -> Plan:
    """Plan `app` (AppSpec) on `fleet` (FleetSpec or resolved Fleet); see plan_graph.

    `progress`: called with a planner.progress.SolveEvent as phases start and CP-SAT improves its
    incumbent or bound (from CP-SAT's threads; see planner.progress)."""
    with reporting(progress):
        return _plan_app(app, fleet, objective, cost_model, time_limit_s, from_plan, pieces_dir, pareto, app_graph,
                         max_coverage)


def _plan_app(app: Any, fleet: Any, objective: Any, cost_model: Any, time_limit_s: float,
              from_plan: Plan | str | Path | None, pieces_dir: str | Path | None, pareto: bool,
              app_graph: nx.DiGraph | None, max_coverage: bool) -> Plan:
    from tierplan.devices.costmodel import CostModel
    from tierplan.devices.fleet import resolve_fleet
    resolved = fleet if hasattr(fleet, "edge_classes") else resolve_fleet(fleet)
    if app_graph is None:
        from tierplan.partition.app_graph import build_app_graph
        phase("partitioning the models")
        app_graph = build_app_graph(app, pieces_dir)
    if isinstance(from_plan, (str, Path)):
        from_plan = Plan.load(from_plan)
    slo = {s.sink: SloTarget(s.latency_ms, s.percentile) for s in app.slo}
    plan = plan_graph(app_graph, resolved, cost_model or CostModel(), slo=slo,
                      objective=objective if objective is not None else app.weights,
                      budget_usd_per_hour=app.budget_usd_per_hour, time_limit_s=time_limit_s,
                      from_plan=from_plan, pareto=pareto, max_coverage=max_coverage)
    shas = {"app": _sha(app)}
    if not hasattr(fleet, "edge_classes"):
        shas["fleet"] = _sha(fleet)
    return plan.model_copy(update={"inputs_sha256": shas}).with_inputs(app, resolved)
