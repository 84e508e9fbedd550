"""Public entry points of the planner: plan an app on a fleet (CP-SAT), with baselines and coverage.

    plan = plan_app(app, fleet_spec, objective="cost")           # specs in, Plan out
    plan = plan_graph(app_graph, fleet, cost_model, slo=...)     # the pure, lower-level form

plan_graph runs named phases, each a function below:
  _setup          build the integer problem (planner.build), greedy or the old plan as the hint
  _alone          per class alone: can it meet its SLO at all (a relaxation), its own optimum
  _joint          the whole fleet together (decomposed where classes share nothing); when shared
                  capacity cannot serve every class within its SLO, the most devices within it
  _best_for_missed  classes still missing their SLO get the best latency they can reach under the
                  capacity the others leave (one at a time), then their cheapest placement at it
  _bound_pieces   max_pieces per model over the chosen cuts (only when the relaxation exceeds it)
  _refine         finer candidate cuts around the chosen ones, re-solved locally (planner.refine)
  _regroup        the chosen segments become the plan's pieces (partition extracts them)
  _report         the Plan: figures, coverage, not-met classes and what would fix them, baselines
Why something is infeasible comes from the solver (planner.diagnose).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import networkx as nx

from tierplan.devices.costmodel import CostModel
from tierplan.devices.fleet import Fleet
from tierplan.planner.baselines import greedy, run_baselines
from tierplan.planner.build import BuildInfo, SloTarget, build_problem
from tierplan.planner.diagnose import describe_assignment, diagnose, slo_message, uplink_needed
from tierplan.planner.evaluate import Evaluation, evaluate
from tierplan.planner.formulation import SolveResult, solve, solve_coverage, solve_model
from tierplan.planner.movecost import with_move_cost
from tierplan.planner.progress import ProgressHook, phase, reporting
from tierplan.planner.plan import ClassCoverage, ParetoPoint, Plan, piece_moves
from tierplan.planner.problem import Problem
from tierplan.planner.refine import CutSpace, carry_over, cut_space, refine, segment_of_ops
from tierplan.planner.report import (
    baseline_result, latency_semantics, class_latency_ms, class_meets, class_mode, cost_per_hour_usd,
    coverage_share, mean_latency_ms, monthly_by_tier, natural_objective, per_class_ids, plan_edges, plan_pieces, sink_views,
)
from tierplan.planner.units import us_to_ms
from tierplan.errors import InfeasibleError, InputError
from tierplan.partition.candidates import DEFAULT_SEGMENTS
from tierplan.spec import AppSpec, FleetSpec, ObjectiveSpec

__all__ = ["plan_app", "plan_graph", "describe_assignment", "site_devices", "Regroup"]

_SECONDARY = {"cost": "latency", "latency": "cost", "energy": "latency"}
_TIE_SHARE = 0.25      # of a solve's limit at most for breaking ties, after the proof
_ASSEMBLY_SHARE = 0.05  # of the time limit, kept for evaluating and assembling the plan
_EXPLAIN_S = 0.15       # kept per SLO sink of a not-covered class for its best-latency solve ...
_EXPLAIN_MAX_SHARE = 0.1  # ... at most this share of the time limit in all
_REFINE_SHARE = 0.3     # of the time limit at most for refining the chosen cuts (planner.refine) ...
_REFINE_FLOOR_S = 1.5   # ... but at least this, even past the limit

# model -> positions to cut it at (the planner's choice among the candidates) -> the app graph cut there
Regroup = Callable[[Mapping[str, tuple[int, ...]]], nx.DiGraph]
Objective = str | ObjectiveSpec | Mapping[str, float] | None


def _weights(objective: Objective) -> ObjectiveSpec:
    if objective is None:
        return ObjectiveSpec(cost=1.0)
    if isinstance(objective, ObjectiveSpec):
        return objective
    if isinstance(objective, Mapping):
        return ObjectiveSpec(**objective)
    if objective in ("cost", "latency", "energy"):
        return ObjectiveSpec(**{objective: 1.0})
    raise InputError(f"objective must be cost, latency or energy (or weights), got {objective!r}")


def _hint(problem: Problem, info: BuildInfo, from_plan: Plan | None) -> dict[str, tuple[str, ...]]:
    base = greedy(problem)
    if from_plan is None:
        return base
    out = {}
    by_segment = from_plan.segment_sites()    # the old plan's pieces may join several of these segments
    for c in problem.classes:
        old = by_segment.get(c.name) or {}
        sites = list(base[c.name])
        for v in problem.compute_nodes:
            s = old.get(info.order[v])
            if s in c.allowed[v]:
                sites[v] = s
        out[c.name] = tuple(sites)
    return out


def site_devices(fleet: Fleet) -> dict[str, str]:
    """Site class -> device name (catalog name, or an inline device's own name): lets
    `tierplan compile PLAN` find each site's device without the fleet file."""
    return {name: sc.device.name for name, sc in fleet.classes.items()}


@dataclass
class _Run:
    """What the phases of one plan_graph call share: inputs, the problem, the clock, the findings."""

    graph: nx.DiGraph
    fleet: Fleet
    cost_model: CostModel
    slo: dict[str, SloTarget]
    weights: ObjectiveSpec
    budget: float | None
    time_limit_s: float
    queueing: bool
    problem: Problem
    info: BuildInfo
    hint: dict[str, tuple[str, ...]]
    t0: float = field(default_factory=time.perf_counter)
    uncovered: dict[str, str] = field(default_factory=dict)   # class -> message (cannot meet its SLO alone)
    notes: dict[str, str] = field(default_factory=dict)       # class -> note shown in the coverage table
    best_ms: dict[str, dict[str, float]] = field(default_factory=dict)   # class -> sink -> best alone
    shared_out: set[str] = field(default_factory=set)         # left out by coverage maximisation
    binding: str = ""                                          # the diagnosis when coverage was needed
    reason: str | None = None
    joint_status: str = ""                                     # the joint phase's status (before not-met classes)
    move_cost_ms: float = 0.0                                  # charged per segment moved (planner.movecost)
    from_plan: Plan | None = None                              # the old plan of a re-plan (--from)
    refined: list[dict] = field(default_factory=list)          # the refinement rounds (planner.refine)
    cuts: dict[str, list[int]] = field(default_factory=dict)   # model -> where the plan cuts it (positions)

    @property
    def separable(self) -> bool:
        return self.problem.coef_cost == 0          # latency / energy: a sum over classes

    @property
    def secondary(self) -> str | None:
        return _SECONDARY.get(self.problem.objective_kind)

    def left(self) -> float:
        return max(0.5, self.time_limit_s - (time.perf_counter() - self.t0))

    def sink_name(self, v: int) -> str:
        return self.info.sink_names[self.problem.nodes[v].id]


def plan_graph(graph: nx.DiGraph, fleet: Fleet, cost_model: CostModel, *,
               slo: Mapping[str, SloTarget] | None = None, objective: Objective = None,
               budget_usd_per_hour: float | None = None, time_limit_s: float = 10.0,
               from_plan: Plan | None = None, pareto: bool = False, pareto_points: int = 5,
               with_baselines: bool = True, analyse_uncovered: bool = True, queueing: bool = True,
               max_coverage: bool = True, regroup: Regroup | None = None,
               latency_model: str | None = None, move_cost_ms: float = 0.0, refine_cuts: CutSpace | None = None) -> Plan:
    """Place the app graph on the fleet; returns a Plan, or raises InfeasibleError when no
    placement exists even without the SLOs (why, from the solver, and what would fix it).

    When some classes cannot meet their SLO (alone, or together for shared capacity) the plan
    still serves every class: the most devices within their SLOs, and each class that misses at
    the best latency it can reach under the capacity left; `plan.not_met` lists them, with their
    planned and best achievable latency and what would fix it (the CLI exits 1 unless
    --allow-partial). `max_coverage=False` raises InfeasibleError instead when shared capacity is
    what prevents it. `queueing` (default) adds each site's p-quantile queueing wait
    (planner.queueing). A graph carrying `segments` (partition.candidates) has its cuts chosen
    with the placement; `regroup` then turns the chosen cuts into the plan's pieces.
    `latency_model`: "sum" or "overlap" (planner.build.build_problem); None: sum for chains,
    overlap for DAGs (plan.latency_semantics says which). `move_cost_ms` (with `from_plan`): ms
    of latency charged in the objective per segment placed off the old plan's site (planner.movecost).
    `refine_cuts` (planner.refine.cut_space, with `regroup`): after the solve on the graph's
    candidate cuts, the cuts chosen are refined among every candidate near them while that gains
    (`plan.solver["refine"]` lists the rounds); status and bound stay the candidate solve's.

    Example (a seeded 4-piece chain on a one-class-per-tier fleet of 100 devices):
        >>> from tierplan.devices.costmodel import CostModel
        >>> from tierplan.planner.synthetic import synthetic_app, synthetic_fleet
        >>> fleet = synthetic_fleet(1, 1, 1, 100)
        >>> plan = plan_graph(synthetic_app(4, fleet=fleet), fleet, CostModel())
        >>> plan.status, plan.latency_semantics.split(":")[0], sorted(plan.per_class)
        ('optimal', 'sum (chains)', ['pi40'])
    """
    run = _setup(graph, fleet, cost_model, slo, objective, budget_usd_per_hour, time_limit_s, from_plan,
                 queueing, latency_model, move_cost_ms)
    alone = _alone(run)
    r, main = _joint(run, alone, max_coverage)
    r, main = _best_for_missed(run, r, main)
    r, main = _bound_pieces(run, r, main)
    run.from_plan = from_plan
    solved, solved_info, r, main = _refine(run, r, main, refine_cuts, regroup)
    g_out, main, info, r = _regroup(run, r, main, regroup, solved, solved_info)
    return _report(run, g_out, main, info, r, from_plan=from_plan, pareto=pareto, pareto_points=pareto_points,
                   with_baselines=with_baselines, analyse=analyse_uncovered)


# ----------------------------------------------------------------------------- phases
def _setup(graph: nx.DiGraph, fleet: Fleet, cost_model: CostModel, slo: Mapping[str, SloTarget] | None,
           objective: Objective, budget: float | None, time_limit_s: float, from_plan: Plan | None,
           queueing: bool, latency_model: str | None = None, move_cost_ms: float = 0.0) -> _Run:
    """Check the SLO's sinks, build the integer problem and the hint."""
    t0 = time.perf_counter()
    weights = _weights(objective)
    slo = dict(slo or {})
    for name in slo:
        if f"sink:{name}" not in graph.nodes and name not in graph.nodes:
            raise InputError(f"slo: unknown sink {name!r}")
    problem, info = build_problem(graph, fleet, cost_model, slo=slo, weights=weights,
                                  budget_usd_per_hour=budget, queueing=queueing, latency_model=latency_model)
    problem = with_move_cost(problem, info, from_plan, move_cost_ms)
    # the piece bound is checked after the solve (_bound_pieces): without it, classes decompose
    hint = _hint(problem, info, from_plan)
    return _Run(graph, fleet, cost_model, slo, weights, budget, time_limit_s, queueing, problem, info, hint, t0=t0,
                move_cost_ms=move_cost_ms)


def _rebuild(run: _Run, graph: nx.DiGraph, **kw) -> tuple[Problem, BuildInfo]:
    """build_problem for another graph (the chosen pieces) or a what-if, with this run's settings."""
    return build_problem(graph, run.fleet, run.cost_model, slo=run.slo, weights=run.weights,
                         budget_usd_per_hour=run.budget, queueing=run.queueing,
                         latency_model=run.problem.latency_model, **kw)


def _alone(run: _Run) -> dict[str, SolveResult]:
    """Per class alone (a relaxation: the others' load is left out): can it meet its SLO at all,
    and its best placement (the joint solve's hint, or the answer when classes decouple)."""
    problem = replace(run.problem, segments=())
    share = 0.8 if run.separable else 0.5
    per_class = max(0.5, min(10.0, share * run.time_limit_s / max(1, len(problem.classes))))
    sec = run.secondary if run.separable else None
    alone: dict[str, SolveResult] = {}
    for i, c in enumerate(problem.classes):
        phase(f"edge class {c.name} alone ({i + 1}/{len(problem.classes)})")
        sub = replace(problem.only_class(c.name), budget_uusd_h=None)
        # the class's share of the time left (what earlier classes did not use goes to later ones)
        each = max(0.5, min(10.0, share * run.left() / (len(problem.classes) - i)))
        r = solve(sub, each, hint={c.name: run.hint[c.name]}, secondary=sec, secondary_share=_TIE_SHARE)
        if r.status == "infeasible" and c.slo_us:
            r2 = solve(sub.without_slo(), per_class, hint={c.name: run.hint[c.name]}, secondary=sec,
                       secondary_share=_TIE_SHARE)
            if r2.status == "infeasible":
                raise InfeasibleError(f"edge class {c.name}: no placement fits even without the SLO: "
                                      f"{diagnose(sub.without_slo(), per_class, run.sink_name)}")
            # why (its best latency per sink) is worked out after the plan is proven: it is only reported
            run.uncovered[c.name], run.notes[c.name] = "", ""
            r = r2
        elif r.status == "infeasible":
            raise InfeasibleError(f"edge class {c.name}: no placement fits: {diagnose(sub, per_class, run.sink_name)}")
        alone[c.name] = r
    return alone


def _explain_reserve(run: _Run) -> float:
    n_explain = sum(len(c.slo_us) for c in run.problem.classes if c.name in run.uncovered)
    return min(_EXPLAIN_MAX_SHARE * run.time_limit_s, _EXPLAIN_S * n_explain)


def _solve_left(run: _Run) -> float:
    """Time for the optimisation: the limit less what assembling and explaining the plan need."""
    return max(0.5, run.left() - _ASSEMBLY_SHARE * run.time_limit_s - _explain_reserve(run))


def _joint(run: _Run, alone: dict[str, SolveResult], max_coverage: bool) -> tuple[SolveResult, Problem]:
    """Every class together, the SLOs of those that can meet them alone enforced; when shared
    capacity cannot serve them all, the most devices within their SLOs (solve_coverage)."""
    t0 = run.t0
    main = replace(run.problem.without_slo(set(run.uncovered)) if run.uncovered else run.problem, segments=())
    hint = run.hint
    if run.separable:
        phase("proving each class's optimum")
        alone = _prove_alone(main, alone, hint, run.secondary, lambda: _solve_left(run))
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
    alone_sum = sum(r.objective or 0 for r in alone.values())
    if (run.separable and cev.feasible and all(r.status in ("optimal", "feasible") for r in alone.values())
            and cev.objective == alone_sum):
        # the classes' own optima respect every shared constraint and queue no longer together
        # than alone: their sum is the joint optimum (each alone-problem relaxes the joint one),
        # proven when each class was proven
        bound = sum(r.bound or 0 for r in alone.values())
        proven = all(r.status == "optimal" for r in alone.values())
        return SolveResult("optimal" if proven else "feasible", combined, cev.objective,
                           cev.objective if proven else min(bound, cev.objective),
                           time.perf_counter() - t0, cev.latency_term, dict(cev.levels),
                           proof_s=time.perf_counter() - t0), main
    per_class = max(0.5, min(10.0, 0.5 * run.time_limit_s / max(1, len(main.classes))))
    if not cev.feasible:
        # classes compete for shared capacity: plan them one after another (most requests
        # first) on what the previous ones left, a feasible start for the joint solve
        seq = _sequential(main, combined, per_class, run.secondary if run.separable else None)
        if evaluate(main, seq).feasible:
            combined, cev = seq, evaluate(main, seq)
    started = time.perf_counter() - t0
    phase(f"all {len(main.classes)} edge classes together")
    r = solve(main, _solve_left(run), hint=combined if cev.feasible else hint, secondary=run.secondary,
              secondary_share=_TIE_SHARE)
    r = replace(r, proof_s=started + (r.proof_s if r.proof_s is not None else r.solve_s))
    if run.separable and r.status in ("feasible", "unknown"):
        # each class alone relaxes the joint problem: the sum of their bounds bounds it
        lower = sum(x.bound or 0 for x in alone.values())
        if r.status == "unknown" and cev.feasible:
            r = SolveResult("feasible", combined, cev.objective, lower, r.solve_s, cev.latency_term,
                            dict(cev.levels))
        elif r.objective is not None and (r.bound is None or lower > r.bound):
            r = replace(r, bound=min(lower, r.objective))
    if r.status == "infeasible":
        # why: the binding constraints, from the solver (assumption literals)
        run.binding = diagnose(main, min(run.left(), max(1.0, run.time_limit_s / 4)), run.sink_name)
        if not max_coverage:
            raise InfeasibleError(run.binding)
        r, main = _most_covered(main, combined, run.left(), run)
        r = replace(r, proof_s=time.perf_counter() - t0)
        if r.status == "infeasible":
            raise InfeasibleError(run.binding)
    if r.status not in ("optimal", "feasible"):
        fallback = combined if cev.feasible else hint
        hev = cev if cev.feasible else evaluate(main, fallback)
        if not hev.feasible:
            raise InfeasibleError(f"CP-SAT found no plan within {run.time_limit_s:g} s (status {r.status}) and "
                                  f"the greedy placement violates: {'; '.join(hev.violations[:2])}. "
                                  f"To fix: --time-limit {int(run.time_limit_s * 4)}")
        run.reason = f"CP-SAT status {r.status} after {r.solve_s:.1f} s: the best per-class placement is shown"
        r = SolveResult("feasible", dict(fallback), hev.objective, None, r.solve_s, hev.latency_term,
                        dict(hev.levels))
    return r, main


def _missed(run: _Run, main: Problem, r: SolveResult) -> list[str]:
    """Classes whose planned latency misses an SLO the user gave."""
    ev = evaluate(main, r.assignment, r.levels)
    return [c.name for c in run.problem.classes if c.slo_us and not class_meets(main, run.info, ev, c.name)]


def _best_for_missed(run: _Run, r: SolveResult, main: Problem) -> tuple[SolveResult, Problem]:
    """Classes that miss their SLO get the best latency they can reach under the capacity the
    others leave, not the cheapest placement at any latency: one class at a time (most devices
    first), every other class kept where it is, its latency minimised, then its objective with
    that latency kept as its SLO. The covered classes keep the joint optimum; the plan is then
    `optimal` only when this costs nothing, else `feasible` with the joint optimum as its bound
    (the joint problem leaves the missing classes free, so it bounds any such plan)."""
    missed = _missed(run, main, r)
    run.joint_status = r.status
    if not missed:
        return r, main
    phase(f"best latency for the {len(missed)} class(es) missing their SLO")
    current = dict(r.assignment)
    levels = dict(r.levels)
    reached: dict[str, dict[int, int]] = {}
    order = sorted(missed, key=lambda n: -next(c.count for c in main.classes if c.name == n))
    for i, name in enumerate(order):
        pinned = main.with_classes(tuple(
            c if c.name == name else replace(c, allowed=tuple((s,) for s in current[c.name]))
            for c in main.classes))
        pinned = replace(pinned, budget_uusd_h=None, segments=())
        each = max(0.5, 0.5 * _solve_left(run) / (len(order) - i))
        # its least latency (only this class's sinks count; the others' SLOs still hold)
        r_lat = solve(pinned.without_slo({name}).with_objective("latency", 0, 1, 0), each, hint=current)
        if r_lat.status not in ("optimal", "feasible"):
            continue
        ev = evaluate(pinned.without_slo({name}), r_lat.assignment, r_lat.levels)
        reached[name] = {v: ev.classes[name].sink_us[v] for v in main.sink_nodes
                         if v in run.problem.only_class(name).classes[0].slo_us}
        # then its objective, at that latency
        keep = pinned.with_classes(tuple(replace(c, slo_us=reached[name]) if c.name == name else c
                                         for c in pinned.classes))
        r_obj = solve(keep, each, hint=r_lat.assignment)
        best = r_obj if r_obj.status in ("optimal", "feasible") else r_lat
        current, levels = dict(best.assignment), dict(best.levels)
    kept = main.with_classes(tuple(replace(c, slo_us=reached[c.name]) if c.name in reached else c
                                   for c in main.classes))
    kev = evaluate(kept, current, levels)
    if not kev.feasible:
        return r, main
    proven = r.status == "optimal" and r.objective is not None and kev.objective <= r.objective
    return SolveResult("optimal" if proven else "feasible", current, kev.objective,
                       r.bound if r.bound is not None else None, r.solve_s, kev.latency_term, dict(kev.levels),
                       r.scale, time.perf_counter() - run.t0), kept


def _bound_pieces(run: _Run, r: SolveResult, main: Problem) -> tuple[SolveResult, Problem]:
    """max_pieces per model over the cuts every class's placement needs: the phases above solve
    without it (a relaxation that lets classes decompose); when their plan needs more pieces, the
    whole problem is solved once more with the bound (one model, hinted)."""
    full = replace(main, segments=run.problem.segments)
    if not full.segments or evaluate(full, r.assignment, r.levels).feasible:
        return r, full
    phase("max_pieces over the chosen cuts")
    r2 = solve_model(full, _solve_left(run), hint=r.assignment, secondary=run.secondary,
                     secondary_share=_TIE_SHARE)
    if r2.status not in ("optimal", "feasible"):
        raise InfeasibleError(f"no plan within max_pieces per model was found in {run.time_limit_s:g} s "
                              f"(CP-SAT {r2.status}). To fix: raise models.<name>.max_pieces or --time-limit")
    return replace(r2, status=r2.status if r.status == "optimal" else "feasible",
                   proof_s=time.perf_counter() - run.t0), full


def _refine(run: _Run, r: SolveResult, main: Problem, space: CutSpace | None,
            regroup: Regroup | None) -> tuple[nx.DiGraph, BuildInfo, SolveResult, Problem]:
    """Finer candidate cuts around the chosen ones, re-solved in their neighbourhood while that
    lowers the objective of the plan merged into pieces (planner.refine); the SLOs as the phases
    left them and the re-plan's move cost carry over to the refined problem. Returns the graph
    and problem of the plan kept."""
    if (space is None or regroup is None or not main.segments or r.status not in ("optimal", "feasible")
            or not r.assignment):
        return run.graph, run.info, r, main
    phase("refining the chosen cuts")
    slo_by_id = {c.name: {main.nodes[v].id: us for v, us in c.slo_us.items()} for c in main.classes}
    default_of = segment_of_ops(run.graph)

    def rebuild(graph: nx.DiGraph) -> tuple[Problem, BuildInfo]:
        problem, info = _rebuild(run, graph)
        index = {n: i for i, n in enumerate(info.order)}
        problem = problem.with_classes(tuple(replace(c, slo_us={index[n]: us for n, us in slo_by_id[c.name].items()})
                                             for c in problem.classes))
        # moves are charged per default segment (what plan.json's pieces[].segments name)
        by_default = replace(info, order=tuple(
            default_of[(graph.nodes[n]["model"], graph.nodes[n]["piece"].nodes[0])]
            if graph.nodes[n].get("kind") == "piece" else n for n in info.order))
        problem = with_move_cost(problem, by_default, run.from_plan, run.move_cost_ms)
        return replace(problem, budget_uusd_h=main.budget_uusd_h), info

    def judge(graph: nx.DiGraph, info: BuildInfo, problem: Problem, result: SolveResult) -> int | None:
        _, merged, _, placed = _regroup(run, result, problem, regroup, graph, info)
        ev = evaluate(merged, placed.assignment, placed.levels)
        return ev.objective if ev.feasible else None

    # its share of the limit, what the limit leaves, but at least _REFINE_FLOOR_S: on a busy machine
    # the phases above may spend the whole limit, and the first round (one deterministic local solve)
    # is what keeps the plan the same there as on an idle machine
    end = time.perf_counter() + max(_REFINE_FLOOR_S, min(_REFINE_SHARE * run.time_limit_s, _solve_left(run)))
    graph, info, problem, r2, run.refined = refine(run.graph, run.info, main, r, space, rebuild,
                                                   lambda: end - time.perf_counter(), judge)
    return graph, info, r2, problem


def _regroup(run: _Run, r: SolveResult, main: Problem, regroup: Regroup | None, solved: nx.DiGraph,
             solved_info: BuildInfo) -> tuple[nx.DiGraph, Problem, BuildInfo, SolveResult]:
    """The chosen segments become the plan's pieces: consecutive segments of a model that every
    class runs on one site are merged (regroup extracts them, e.g. partition's cached extraction),
    the problem is rebuilt on those pieces and the placement carried over, node by node.

    `solved` is the graph the placement is on (the refined one after planner.refine); each piece
    records in `segments` the default candidate segments (run.graph's) whose first operator it
    holds, each exactly once: replanning compares plans by those (a refined cut lies inside one)."""
    if regroup is None or not main.segments:
        return run.graph, main, run.info, r
    phase("extracting the chosen pieces")
    meta = solved.graph["segments"]
    cuts = {m: tuple(meta[m]["cuts"][j] for j in used) for m, used in main.cuts_used(r.assignment).items()}
    graph = regroup(cuts)
    run.cuts = {m: sorted(int(x) for x in c) for m, c in cuts.items()}
    problem, info = _rebuild(run, graph)
    firsts = {(run.graph.nodes[n]["model"], run.graph.nodes[n]["piece"].nodes[0]): n for n in run.info.order
              if run.graph.nodes[n].get("kind") == "piece"}
    old_index = {n: i for i, n in enumerate(run.info.order)}
    for n, a in graph.nodes(data=True):     # recorded in plan.json: replanning compares plans by segment
        if a.get("kind") == "piece":
            a["segments"] = sorted({firsts[(a["model"], op)] for op in a["piece"].nodes if (a["model"], op) in firsts},
                                   key=old_index.__getitem__)
    # a merged piece runs where the solved segment holding its first operator ran (all its segments ran there)
    assignment = carry_over(solved, solved_info, graph, info, r.assignment)
    # the SLOs as the phases left them (dropped or kept at a missing class's best), by sink id
    slo_by_id = {c.name: {main.nodes[v].id: us for v, us in c.slo_us.items()} for c in main.classes}
    index = {n: i for i, n in enumerate(info.order)}
    problem = problem.with_classes(tuple(replace(c, slo_us={index[n]: us for n, us in slo_by_id[c.name].items()})
                                         for c in problem.classes))
    return graph, problem, info, replace(r, assignment=assignment)


def _report(run: _Run, graph: nx.DiGraph, main: Problem, info: BuildInfo, r: SolveResult, *,
            from_plan: Plan | None, pareto: bool, pareto_points: int, with_baselines: bool, analyse: bool) -> Plan:
    """The Plan: figures, per-class coverage with what the not-met classes could reach, baselines."""
    _explain(run, main, info)
    ev = evaluate(main, r.assignment, r.levels)
    plan = _assemble(graph, main, info, r, ev, run.t0, run.reason, run.joint_status)
    coverage = _coverage(run, graph, main, info, ev, r, analyse)
    plan = plan.model_copy(update={"coverage": coverage, "cuts": run.cuts, "refine": run.refined})
    not_met = _not_met(run, main, info, ev, coverage)
    plan = plan.model_copy(update={"coverage_summary": _coverage_summary(plan, info),
                                   "site_devices": site_devices(run.fleet), "not_met": not_met,
                                   "slo_met": None if not info.slo_ms else not not_met})
    if with_baselines:
        phase("baselines")
        base = run_baselines(replace(main, segments=()))
        plan = plan.model_copy(update={"baselines": {n: baseline_result(main, info, a, bev)
                                                     for n, (a, bev) in base.items()}})
    if from_plan is not None:
        plan = plan.model_copy(update={"moves": piece_moves(from_plan, plan),
                                       "move_cost_ms": run.move_cost_ms if run.problem.move_penalty else None})
    if pareto:
        phase("cost-latency frontier")
        plan = plan.model_copy(update={"pareto": _pareto(main, info, r, pareto_points, max(run.time_limit_s, 2.0))})
    return plan.model_copy(update={"solve_s": round(time.perf_counter() - run.t0, 4)})


def _explain(run: _Run, main: Problem, info: BuildInfo) -> None:
    """Why each class that cannot meet its SLO alone misses it: its best latency per sink."""
    n_explain = sum(len(c.slo_us) for c in run.problem.classes if c.name in run.uncovered)
    per_class = max(0.5, min(10.0, 0.5 * run.time_limit_s / max(1, len(run.problem.classes))))
    each = max(_EXPLAIN_S, min(per_class, (run.left() - _ASSEMBLY_SHARE * run.time_limit_s) / max(1, n_explain)))
    base = replace(run.problem, segments=())
    for name in run.uncovered:
        if name not in run.shared_out:
            run.uncovered[name], run.notes[name], run.best_ms[name] = slo_message(
                base, name, each, run.sink_name, info.percentile)
        else:   # it meets its SLO alone: its best alone still says what the shared capacity costs it
            run.best_ms[name] = slo_message(base, name, each, run.sink_name, info.percentile)[2]


def _not_met(run: _Run, main: Problem, info: BuildInfo, ev: Evaluation,
             coverage: Mapping[str, ClassCoverage]) -> list[dict[str, str | float | int]]:
    """Each (class, sink) that misses its SLO: planned and best achievable latency, and what would fix it."""
    out: list[dict[str, str | float | int]] = []
    for c in main.classes:
        cov = coverage[c.name]
        if cov.meets_slo:
            continue
        for v in main.sink_nodes:
            name = info.sink_names[main.nodes[v].id]
            slo_ms = info.slo_ms.get(name)
            planned = us_to_ms(ev.classes[c.name].sink_us[v])
            if slo_ms is None or planned <= slo_ms:
                continue
            best = run.best_ms.get(c.name, {}).get(name)
            out.append({"edge_class": c.name, "devices": c.count, "sink": name, "slo_ms": slo_ms,
                        "planned_ms": round(planned, 4),
                        "best_alone_ms": round(best, 4) if best is not None else round(planned, 4),
                        "why": ("shared capacity: " + run.binding) if c.name in run.shared_out
                        else (run.uncovered.get(c.name) or "cannot meet its SLO"),
                        "fix": cov.note.partition("would need ")[2] or ("relax the SLO or add capacity ("
                                                                         + run.binding + ")" if run.binding
                                                                         else "relax the SLO")})
    return out


def _most_covered(main: Problem, start: dict[str, tuple[str, ...]], limit_s: float,
                  run: _Run) -> tuple[SolveResult, Problem]:
    """Coverage mode: the most devices within their SLOs, then the least objective
    (planner.formulation.solve_coverage); the classes left out are recorded with why."""
    r, covered = solve_coverage(main, limit_s, hint=start)
    if r.status not in ("optimal", "feasible"):
        return r, main
    out = [c for c in main.classes if c.slo_us and c.name not in covered]
    total = sum(c.count for c in main.classes) or 1
    share = sum(c.count for c in main.classes if c.name in covered) / total
    for c in out:
        run.uncovered[c.name] = (f"{c.name} meets its SLO alone, but the shared sites and links cannot serve it "
                                 f"together with the classes covering more devices ({100 * share:.0f}% of "
                                 f"devices covered at most); {run.binding}")
        run.notes[c.name] = f"not served within its SLO: shared capacity goes to classes covering more devices ({run.binding})"
        run.shared_out.add(c.name)
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
        prev = alone[n].objective
        if r.status in ("optimal", "feasible") and (prev is None or r.status == "optimal"
                                                     or (r.objective is not None and r.objective <= prev)):
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


def _assemble(graph: nx.DiGraph, problem: Problem, info: BuildInfo, r: SolveResult, ev: Evaluation, t0: float,
              reason: str | None, joint_status: str = "") -> Plan:
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
                order=list(info.order), latency_semantics=latency_semantics(problem), percentile=info.percentile,
                solver={"engine": "cp-sat", "status": r.status, "objective_int": r.objective or 0,
                        "bound_int": r.bound if r.bound is not None else "none",
                        "proof_s": round(r.proof_s, 4) if r.proof_s is not None else "none",
                        "joint_status": joint_status or r.status,
                        "cp_sat_s": round(r.solve_s, 4)})


def _coverage(run: _Run, graph: nx.DiGraph, problem: Problem, info: BuildInfo, ev: Evaluation, r: SolveResult,
              analyse: bool) -> dict[str, ClassCoverage]:
    """Per class: devices, mode, planned latency, whether it meets its SLO, and for a class that
    misses it why and what it would need (the smallest uplink, by bisection on what-if problems)."""
    out = {}
    for c in problem.classes:
        mode = class_mode(problem, info, ev, c.name, r.assignment)
        meets = class_meets(problem, info, ev, c.name)
        note = run.notes.get(c.name, "") if not meets else ""
        if not meets and not note:
            note = f"planned at the best latency the capacity left allows ({run.binding or 'shared capacity'})"
        if not meets and analyse and c.name not in run.shared_out:
            note += "; would need " + _uplink_needed(run, graph, c.name)
        out[c.name] = ClassCoverage(devices=c.count, mode=mode, latency_ms=round(class_latency_ms(ev, c.name), 4),
                                    meets_slo=meets, note=note)
    return out


def _uplink_needed(run: _Run, graph: nx.DiGraph, cname: str) -> str:
    """The smallest multiple of the class's own uplink at which it meets its SLO alone (on the
    plan's pieces; each what-if solve is short, a few per class)."""
    link = run.fleet.classes[cname].link

    def ok(scale: float) -> bool:
        p, _ = _rebuild(run, graph, link_scale={cname: scale})
        sub = replace(p.only_class(cname), budget_uusd_h=None, segments=())
        return solve(sub, 0.5).status in ("optimal", "feasible")

    return uplink_needed(ok, link.uplink_mbps if link is not None else None, link.rtt_ms if link is not None else 0.0)


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


def plan_app(app: AppSpec, fleet: FleetSpec | Fleet, objective: Objective = None, cost_model: CostModel | None = None,
             time_limit_s: float = 10.0, from_plan: Plan | str | Path | None = None,
             pieces_dir: str | Path | None = None, pareto: bool = False, app_graph: nx.DiGraph | None = None,
             max_coverage: bool = True, progress: ProgressHook | None = None,
             segments: int | None = DEFAULT_SEGMENTS, move_cost_ms: float = 0.0) -> Plan:
    """Plan `app` on `fleet` (FleetSpec or resolved Fleet); see plan_graph.

    Each partitionable model is handed to the planner cut at its candidate cut points (at most
    `segments` segments, partition.candidates); the planner chooses where to cut with where each
    segment runs, then refines the chosen cuts among every candidate near them (planner.refine),
    and the chosen pieces are extracted (cached) for the plan. `segments=None`: the
    models are cut beforehand into `max_pieces` pieces by the cheapest cuts (the older behaviour).
    `progress`: called with a planner.progress.SolveEvent as phases start and CP-SAT improves its
    incumbent or bound (from CP-SAT's threads; see planner.progress)."""
    with reporting(progress):
        return _plan_app(app, fleet, objective, cost_model, time_limit_s, from_plan, pieces_dir, pareto, app_graph,
                         max_coverage, segments, move_cost_ms)


def _plan_app(app: AppSpec, fleet: FleetSpec | Fleet, objective: Objective, cost_model: CostModel | None,
              time_limit_s: float, from_plan: Plan | str | Path | None, pieces_dir: str | Path | None, pareto: bool,
              app_graph: nx.DiGraph | None, max_coverage: bool, segments: int | None,
              move_cost_ms: float = 0.0) -> Plan:
    from tierplan.devices.fleet import resolve_fleet
    resolved = fleet if isinstance(fleet, Fleet) else resolve_fleet(fleet)
    regroup: Regroup | None = None
    space: CutSpace | None = None
    if app_graph is None:
        from tierplan.partition.app_graph import build_app_graph
        phase("partitioning the models")
        app_graph = build_app_graph(app, pieces_dir, segments=segments)
        if segments is not None:
            def regroup(cuts: Mapping[str, tuple[int, ...]]) -> nx.DiGraph:
                return build_app_graph(app, pieces_dir, cuts=cuts)
            space = cut_space(app, pieces_dir)
    if isinstance(from_plan, (str, Path)):
        from_plan = Plan.load(from_plan)
    slo = {s.sink: SloTarget(s.latency_ms, s.percentile) for s in app.slo}
    plan = plan_graph(app_graph, resolved, cost_model or CostModel(), slo=slo,
                      objective=objective if objective is not None else app.weights,
                      budget_usd_per_hour=app.budget_usd_per_hour, time_limit_s=time_limit_s,
                      from_plan=from_plan, pareto=pareto, max_coverage=max_coverage, regroup=regroup,
                      move_cost_ms=move_cost_ms, refine_cuts=space)
    shas = {"app": _sha(app)}
    if not isinstance(fleet, Fleet):
        shas["fleet"] = _sha(fleet)
    return plan.model_copy(update={"inputs_sha256": shas}).with_inputs(app, resolved)
