"""Exact decomposition of a placement problem: independent groups of classes, then cloud splits.

The joint model couples edge classes only through what they share: a site's instances, memory
and utilisation (and its level when renting for queueing), a link's capacity, and the budget.
The objective (cost, latency, energy or weights) is a sum of per-site and per-class terms, so

1. Components. When the classes split into groups that share none of these, the joint
   optimum is the union of the groups' optima, its objective (and bound) the sum of theirs.
2. Cloud splits (verified relaxation). Inside a group, classes often share nothing but a cloud
   region that at most one of them wants (by the classes' own placements, the hint). Split the
   group there: the one part that wants the site pays for it exactly (ceil instances), the
   other parts use it free; a site no part wants is priced per busy fraction of an instance
   (price x load / cap) by every part. Every part sees the site's whole capacity. Since
   p ceil(sum_i L_i) >= p ceil(L_j) and >= sum_i p L_i / cap, this relaxes the group's
   problem, and the relaxation splits into independent parts: the sum of their proven bounds
   is a lower bound of the group's optimum. If the union of their placements satisfies every
   constraint of the group (planner.evaluate, integer instances) at a true objective no
   higher than that bound, it is the group's optimum, proven. Otherwise the group is solved as
   one model, hinted with the union, its bound raised to the relaxation's.

Either way nothing is approximated: a result is reported optimal only with a proof. Solving the
pieces is far faster than one model of all of them (CP-SAT's effort grows faster than
linearly with the model, and a shared cloud region couples every class below it).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from fractions import Fraction
from typing import Callable, Iterable

from tierplan.planner.result import SolveResult
from tierplan.planner.evaluate import evaluate
from tierplan.planner.problem import Problem

__all__ = ["components", "class_size", "solve_groups", "split_sites", "split_plan"]

_FALLBACK_MIN_SHARE = 0.15  # of a group's time left at least to try the group as one model


def class_size(problem: Problem, name: str) -> int:
    """How many placement literals the class adds to the model (a proxy for its solve effort)."""
    c = next(c for c in problem.classes if c.name == name)
    return sum(len(a) for a in c.allowed)


def components(problem: Problem, relaxed: frozenset[str] = frozenset()) -> list[tuple[str, ...]]:
    """Groups of edge class names that share no site (other than `relaxed` ones), link capacity or
    budget, in problem order. One group of every class when a budget couples them all."""
    names = [c.name for c in problem.classes]
    if problem.budget_uusd_h is not None or len(names) < 2:
        return [tuple(names)]
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    owner: dict[str, str] = {}
    for c in problem.classes:
        shared: set[str] = set()
        for allowed in c.allowed:
            shared.update(f"site:{s}" for s in allowed if s not in relaxed)
        for hops in c.hops.values():
            for h in hops:
                shared.update(f"link:{k}" for k in h.cap_keys)
        for key in shared:
            if key in owner:
                parent[root(c.name)] = root(owner[key])
            else:
                owner[key] = c.name
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(root(n), []).append(n)
    return [tuple(g) for g in groups.values()]


def split_sites(problem: Problem) -> frozenset[str]:
    """The sites a group may be split at: rented cloud sites planned at one utilisation level
    (their instance cost is then the only thing a relaxation changes)."""
    return frozenset(s for s, sd in problem.sites.items()
                     if sd.tier == "cloud" and not sd.fixed_instances and len(sd.levels()) == 1)


def split_plan(problem: Problem, hint: dict | None) -> tuple[list[tuple[str, ...]], dict[str, int | None]]:
    """(parts, user): the sub-groups a group splits into at its cloud sites, and per split site
    the index of the one part whose classes' own placements (the hint) run something there
    (None: no part does). A site two parts want is not split at (the parts merge)."""
    compute = set(problem.compute_nodes)
    wants = {c.name: {s for v, s in enumerate((hint or {}).get(c.name, ())) if v in compute}
             for c in problem.classes}
    relaxed = split_sites(problem)
    while True:
        parts = components(problem, relaxed) if relaxed else [tuple(c.name for c in problem.classes)]
        user: dict[str, int | None] = {}
        shared = set()
        for s in relaxed:
            users = [i for i, g in enumerate(parts) if any(s in wants[n] for n in g)]
            if len(users) > 1:
                shared.add(s)
            user[s] = users[0] if users else None
        if not shared:
            return parts, user
        relaxed = relaxed - shared


def _restrict(problem: Problem, names: tuple[str, ...], extra_sites: Iterable[str] = frozenset()) -> Problem:
    """The sub-problem of the named classes, with the sites they may use (and `extra_sites`)."""
    by_name = {c.name: c for c in problem.classes}
    keep = {s for n in names for a in by_name[n].allowed for s in a} | set(extra_sites)
    return replace(problem, classes=tuple(by_name[n] for n in names),
                   sites={s: sd for s, sd in problem.sites.items() if s in keep})


def solve_groups(problem: Problem, solve_model: Callable, tie_break: Callable, time_limit_s: float, *,
                 hint: dict | None = None, secondary: str | None = None, seed: int = 0,
                 secondary_share: float = 1.0):
    """Solve independent groups of classes one by one (smallest first; each gets its share of
    the time left, so what an easy group leaves goes to the harder ones) and add them up.

    The groups share no variable and no constraint and the objective is their sum, so the union
    of their optima is the joint optimum, the sum of their bounds bounds it, and the status is
    the weakest of theirs (one infeasible group makes the whole problem infeasible). Ties are
    broken (`secondary`) only once every group is solved, within `secondary_share` of the limit
    and the time left: the proofs come first. `solve_model` and `tie_break` are
    planner.formulation's (one CP-SAT model each).
    """

    t0 = time.perf_counter()
    results, subs = _solve_primary(problem, solve_model, time_limit_s, hint=hint, seed=seed)
    proof_s = time.perf_counter() - t0
    failed = [r for r in results if r.status not in ("optimal", "feasible")]
    if failed:
        return replace(failed[0], solve_s=time.perf_counter() - t0)
    if secondary:
        budget = min(time_limit_s - (time.perf_counter() - t0), secondary_share * time_limit_s)
        end = time.perf_counter() + budget
        for i, (sub, r) in enumerate(zip(subs, results)):
            left = (end - time.perf_counter()) / (len(results) - i)
            if r.status == "optimal" and left > 0.2:
                results[i] = tie_break(sub, r, secondary, left, seed)
    if len(results) == 1:
        return replace(results[0], solve_s=time.perf_counter() - t0, proof_s=proof_s)
    assignment: dict[str, tuple[str, ...]] = {}
    levels: dict[str, int] = {}
    for r in results:
        assignment.update(r.assignment)
        levels.update(r.levels)
    status = "optimal" if all(r.status == "optimal" for r in results) else "feasible"
    bounds = [r.bound for r in results]
    return SolveResult(status, {c.name: assignment[c.name] for c in problem.classes},
                       sum(r.objective for r in results), None if None in bounds else sum(bounds),
                       time.perf_counter() - t0, sum(r.latency_term or 0 for r in results), levels,
                       proof_s=proof_s)


def _solve_primary(problem: Problem, solve_model: Callable, time_limit_s: float, *, hint: dict | None,
                   seed: int):
    """(results, sub-problems) of the groups for the primary objective, up to the first that has
    no solution (infeasible, or none found in time)."""
    t0 = time.perf_counter()
    groups = components(problem)
    sizes = {g: sum(class_size(problem, n) for n in g) for g in groups}
    order = sorted(groups, key=lambda g: sizes[g])
    used = {s for c in problem.classes for a in c.allowed for s in a}
    # sites no class may use (only a base load there) belong to the first group: counted once
    spare = set(problem.sites) - used
    results, subs = [], []
    for i, g in enumerate(order):
        left = time_limit_s - (time.perf_counter() - t0)
        share = sizes[g] / sum(sizes[h] for h in order[i:])
        sub = _restrict(problem, g, spare if i == 0 else set()) if len(groups) > 1 else problem
        r = _solve_split(sub, solve_model, max(0.05, left * share), hint=hint, seed=seed)
        results.append(r)
        subs.append(sub)
        if r.status not in ("optimal", "feasible"):
            break
    return results, subs


def _solve_split(problem: Problem, solve_model: Callable, time_limit_s: float, *, hint: dict | None,
                 seed: int):
    """One group: split it at its cloud sites (verified relaxation, see the module docstring),
    or solve it as one model when it does not split or the relaxed optimum is not the group's."""

    t0 = time.perf_counter()
    parts, user = split_plan(problem, hint)
    kw = dict(hint=hint, seed=seed)
    if len(parts) < 2:
        return _or_hint(problem, solve_model(problem, time_limit_s, **kw), hint)
    sizes = {g: sum(class_size(problem, n) for n in g) for g in parts}
    order = sorted(range(len(parts)), key=lambda i: sizes[parts[i]])
    results: list[SolveResult] = []
    bounds: list[Fraction] = []   # each part's bound in group units
    for k, i in enumerate(order):
        left = time_limit_s - (time.perf_counter() - t0)
        share = sizes[parts[i]] / sum(sizes[parts[j]] for j in order[k:])
        sub = _restrict(problem, parts[i])
        # a split site: priced exactly by the part that wants it, free for the others; wanted by
        # none, priced per busy fraction by every part
        fractional = frozenset(s for s, u in user.items() if u is None and s in sub.sites)
        free = frozenset(s for s, u in user.items() if u is not None and u != i and s in sub.sites)
        r = solve_model(sub, max(0.05, left * share), fractional=fractional, free=free, **kw)
        if r.status not in ("optimal", "feasible"):
            results = []
            break
        assert r.bound is not None    # CP-SAT reports a bound with every solution
        results.append(r)
        bounds.append(Fraction(r.bound, r.scale))
    start, best, lower = hint, None, None
    if results:
        # every sub-group's bound bounds its relaxation: their sum bounds the group (group units)
        lower = sum(bounds, Fraction(0))
        levels = {k: v for r in results for k, v in r.levels.items()}
        union = {n: s for r in results for n, s in r.assignment.items()}
        ev = evaluate(problem, union, levels)
        if ev.feasible and ev.objective <= lower:
            # feasible for the group at the relaxation's bound: the group's optimum, proven
            return SolveResult("optimal", union, ev.objective, ev.objective, time.perf_counter() - t0,
                               ev.latency_term, levels)
        if ev.feasible:
            start = union
            best = SolveResult("feasible", union, ev.objective, min(math.ceil(lower), ev.objective),
                               time.perf_counter() - t0, ev.latency_term, levels)
    left = time_limit_s - (time.perf_counter() - t0)
    if best is not None and left < _FALLBACK_MIN_SHARE * time_limit_s:
        # the relaxation took the time: its feasible union and bound are the answer
        return best
    r = _or_hint(problem, solve_model(problem, max(0.05, left), **{**kw, "hint": start}), start)
    if best is not None and (r.status not in ("optimal", "feasible") or
                             (r.status == "feasible" and r.objective > best.objective)):
        r = replace(best, bound=best.bound if r.bound is None or best.bound is None else max(best.bound, r.bound))
    if lower is not None and r.status == "feasible" and (r.bound is None or math.ceil(lower) > r.bound):
        r = replace(r, bound=min(math.ceil(lower), r.objective))
    return r


def _or_hint(problem: Problem, r, start: dict | None):
    """`r`, or, when CP-SAT found no solution in time, the hint (the relaxation's union or the
    caller's placement) as a feasible result without a bound, if it satisfies every constraint."""

    if r.status != "unknown" or not start or any(c.name not in start for c in problem.classes):
        return r
    placed = {c.name: start[c.name] for c in problem.classes}
    ev = evaluate(problem, placed)
    if not ev.feasible:
        return r
    return SolveResult("feasible", placed, ev.objective, None, r.solve_s, ev.latency_term, {})
