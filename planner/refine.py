"""Cut refinement: finer candidate cuts around the cuts a plan chose, re-solved locally (issue #16).

plan_graph first solves on each model's default candidates (partition.candidates: at most
DEFAULT_SEGMENTS segments per model, what CP-SAT proves quickly). The cuts it chooses are where a
finer choice can still gain: a device's load just under its cap (one rented instance fewer), a
smaller tensor a few operators on. Each round puts every candidate cut between the default
candidates on either side of a chosen cut (the `WINDOW` nearest to it) into the model's
candidates, rebuilds the problem on those segments and solves the neighbourhood: the segments of
the windows are free, every other node stays where the plan runs it: a small model, solved by one
CP-SAT worker within a deterministic time (a work count), so the result does not depend on how
busy the machine is. A round is kept only when it lowers the objective of the plan merged into
its pieces (what runs); rounds stop when one gains nothing, adds no candidate, or the time
is spent. The plan stays feasible throughout: the hint is always a solution of the refined problem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

import networkx as nx

from tierplan.planner.build import BuildInfo
from tierplan.planner.evaluate import evaluate
from tierplan.planner.formulation import solve_model
from tierplan.planner.problem import Problem
from tierplan.planner.result import SolveResult
from tierplan.spec import AppSpec

__all__ = ["CutSpace", "cut_space", "refine", "carry_over", "segment_of_ops", "WINDOW", "ROUNDS"]

WINDOW = 3         # candidate cuts added per chosen cut and round (the nearest to it)
ROUNDS = 2         # refinement rounds at most (a third never gained on the examples)
DETERMINISTIC_S = 0.3  # CP-SAT deterministic time per local solve (one worker; the examples' first rounds prove within it)
_MIN_ROUND_S = 0.3  # no round starts with less time left than this

# model -> candidate cut positions -> the app graph with those candidates as segments
GraphAt = Callable[[Mapping[str, tuple[int, ...]]], nx.DiGraph]
# the problem rebuilt on another graph with the run's settings (planner.api._rebuild and the SLOs kept)
Rebuild = Callable[[nx.DiGraph], tuple[Problem, BuildInfo]]
# a plan on segments -> its objective once merged into pieces (None: infeasible then), see refine
Judge = Callable[[nx.DiGraph, BuildInfo, Problem, SolveResult], int | None]


@dataclass(frozen=True)
class CutSpace:
    """Every candidate cut of each partitionable model, and how to build the app graph whose
    segments are a chosen subset of them (plan_app makes one with `cut_space`)."""

    every: Mapping[str, tuple[int, ...]]    # model -> every candidate cut position (partition.candidates)
    graph_at: GraphAt


def cut_space(app: AppSpec, pieces_dir: str | Path | None) -> CutSpace:
    """The cut space of `app`'s models: every candidate cut (partition.candidates with no limit),
    and the app graph at any subset of them (partition's cached extraction)."""
    from tierplan.partition.app_graph import build_app_graph
    from tierplan.partition.candidates import DEFAULT_SEGMENTS, EVERY

    fine = build_app_graph(app, pieces_dir, segments=EVERY)
    every = {m: tuple(int(x) for x in meta["cuts"]) for m, meta in (fine.graph.get("segments") or {}).items()}

    def graph_at(cands: Mapping[str, tuple[int, ...]]) -> nx.DiGraph:
        return build_app_graph(app, pieces_dir, segments=DEFAULT_SEGMENTS, cuts=cands)
    return CutSpace(every, graph_at)


def segment_of_ops(graph: nx.DiGraph) -> dict[tuple[str, str], str]:
    """(model, operator) -> the graph's piece node holding it (operator names repeat across models)."""
    return {(a["model"], op): n for n, a in graph.nodes(data=True) if a.get("kind") == "piece"
            for op in a["piece"].nodes}


def carry_over(old_graph: nx.DiGraph, old_info: BuildInfo, new_graph: nx.DiGraph, new_info: BuildInfo,
               assignment: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """`assignment` (on old_graph's nodes) on new_graph's nodes: a piece runs where the old piece
    holding its first operator ran, any other node where it ran (same id in both graphs)."""
    where = segment_of_ops(old_graph)
    old_index = {n: i for i, n in enumerate(old_info.order)}

    def old(n: str) -> int:
        a = new_graph.nodes[n]
        if a.get("kind") == "piece":
            return old_index[where[(a["model"], a["piece"].nodes[0])]]
        return old_index[n]
    index = [old(n) for n in new_info.order]
    return {c: tuple(sites[i] for i in index) for c, sites in assignment.items()}


def _bounds(default: tuple[int, ...], p: int) -> tuple[int, float]:
    """The default candidates on either side of position p (0 and infinity at the model's ends)."""
    return max((d for d in default if d < p), default=0), min((d for d in default if d > p), default=float("inf"))


def _windows(cands: tuple[int, ...], default: tuple[int, ...], every: tuple[int, ...],
             chosen: tuple[int, ...]) -> tuple[int, ...]:
    """The model's candidates with, for each chosen cut, the WINDOW candidates nearest to it that
    lie strictly between the default candidates on either side of it."""
    out = set(cands)
    for p in chosen:
        lo, hi = _bounds(default, p)
        inside = [q for q in every if lo < q < hi and q not in out]
        out.update(sorted(inside, key=lambda q: (abs(q - p), q))[:WINDOW])
    return tuple(sorted(out))


def _free(graph: nx.DiGraph, order: tuple[str, ...], cands: Mapping[str, tuple[int, ...]],
          spans: Mapping[str, list[tuple[int, float]]]) -> set[int]:
    """Indices (in `order`) of the segments lying inside a window (lo, hi) of their model."""
    out = set()
    for v, n in enumerate(order):
        a = graph.nodes[n]
        if a.get("kind") != "piece" or a.get("model") not in spans:
            continue
        c, k = cands[a["model"]], int(a["piece"].index)
        start, end = (c[k - 1] if k else 0), (c[k] if k < len(c) else float("inf"))
        if any(lo <= start and end <= hi for lo, hi in spans[a["model"]]):
            out.add(v)
    return out


def _neighbourhood(problem: Problem, assignment: Mapping[str, tuple[str, ...]], free: set[int]) -> Problem:
    """`problem` with every node outside `free` held on its site in `assignment` (per class)."""
    classes = tuple(replace(c, allowed=tuple(a if v in free else (assignment[c.name][v],)
                                             for v, a in enumerate(c.allowed)))
                    for c in problem.classes)
    return problem.with_classes(classes)


def refine(graph: nx.DiGraph, info: BuildInfo, problem: Problem, result: SolveResult, space: CutSpace,
           rebuild: Rebuild, left: Callable[[], float], judge: Judge
           ) -> tuple[nx.DiGraph, BuildInfo, Problem, SolveResult, list[dict]]:
    """Refine the cuts of `result` (a plan of `problem`, built from `graph`) while it gains and
    time is `left()`; returns the graph, info, problem and result of the best plan (the inputs
    when no round gains) and one record per round (candidates per model, objective, seconds).

    A round is kept when `judge` (the plan merged into its pieces, evaluated) finds it feasible
    and lower than the best so far: on segments the overlap model lets a segment start before a
    later segment of its piece has its inputs, so a plan on finer segments can look faster than
    it runs (smart-city's legacy_cams: 391.7 ms on segments, 403.9 ms once merged, over its SLO)."""
    meta = graph.graph.get("segments") or {}
    default = {m: tuple(int(x) for x in meta[m]["cuts"]) for m in meta}
    cands = dict(default)
    best = (graph, info, problem, result)
    best_merged = judge(graph, info, problem, result)
    rounds: list[dict] = []
    for _ in range(ROUNDS):
        g, inf, p, r = best
        if not r.assignment or left() < _MIN_ROUND_S:
            break
        t0 = time.perf_counter()
        gmeta = g.graph.get("segments") or {}
        chosen = {m: tuple(int(gmeta[m]["cuts"][j]) for j in used) for m, used in p.cuts_used(r.assignment).items()}
        grown = {m: _windows(cands[m], default[m], space.every.get(m, ()), chosen[m])
                 for m in chosen if chosen[m] and m in default}
        grown = {m: c for m, c in grown.items() if c != cands[m]}
        if not grown:
            break
        cands.update(grown)
        g2 = space.graph_at(cands)
        p2, inf2 = rebuild(g2)
        start = carry_over(g, inf, g2, inf2, r.assignment)
        base = evaluate(p2, start, r.levels)
        if not base.feasible:       # the refined problem prices the same plan differently: stop here
            break
        # the segments inside the windows are free; every other node stays where the plan runs it
        free = _free(g2, inf2.order, cands, {m: [_bounds(default[m], x) for x in chosen[m]] for m in grown})
        sub = _neighbourhood(p2, start, free)
        r2 = solve_model(sub, max(0.2, left()), hint=start, deterministic_s=DETERMINISTIC_S)
        ev = evaluate(p2, r2.assignment, r2.levels) if r2.status in ("optimal", "feasible") else None
        gained = ev is not None and ev.feasible and ev.objective < base.objective
        merged = judge(g2, inf2, p2, replace(r2, assignment=dict(r2.assignment))) if ev is not None and gained else None
        kept = merged is not None and (best_merged is None or merged < best_merged)
        rounds.append({"segments": {m: len(c) + 1 for m, c in grown.items()}, "before": best_merged,
                       "after": merged if kept else best_merged, "status": r2.status,
                       "s": round(time.perf_counter() - t0, 3)})
        if ev is None or not kept:
            break
        best_merged = merged
        # the status and bound stay those of the solve on the default candidates (what was proven)
        bound = None if result.bound is None else min(result.bound, ev.objective)
        best = (g2, inf2, p2, SolveResult(result.status, dict(r2.assignment), ev.objective, bound, result.solve_s,
                                          ev.latency_term, dict(ev.levels), 1, result.proof_s))
    return (*best, rounds)
