"""Baseline placements evaluated with the same cost model and latency semantics as the plan.

- all_on_device: every piece on the device that produced the request.
- all_in_cloud: every piece in the top site of the class's chain (the cloud class).
- neurosurgeon: the best single split of the topological order (a prefix on the device, the
  rest in the cloud), as Neurosurgeon does; best = meets the SLO, then least objective.
- greedy: start on the device; visit pieces in topological order and move each to the site
  that most reduces (constraint violations, SLO excess, objective). Also CP-SAT's hint.
Sources and sinks stay where they are pinned in every baseline.
"""

from __future__ import annotations

from typing import Callable

from tierplan.planner.evaluate import Evaluation, evaluate
from tierplan.planner.problem import COMPUTE_KINDS, ClassData, Problem

__all__ = ["Baseline", "BASELINES", "all_on_device", "all_in_cloud", "neurosurgeon", "greedy",
           "run_baselines"]

Baseline = Callable[[Problem], dict[str, tuple[str, ...]]]   # problem -> class -> site per node


def _fill(problem: Problem, c: ClassData, choose: Callable[[int], str]) -> tuple[str, ...]:
    """Pinned nodes keep their site; compute nodes take `choose(v)` when allowed, else the nearest allowed."""
    out = []
    for v, node in enumerate(problem.nodes):
        allowed = c.allowed[v]
        if node.kind not in COMPUTE_KINDS or len(allowed) == 1:
            out.append(allowed[0])  # pinned (a free sink is moved to its producer below)
            continue
        want = choose(v)
        private_from = [it.producer for it in problem.items if it.private and v in it.consumers]
        if private_from and out[private_from[0]] in allowed:
            want = out[private_from[0]]  # raw private data stays where it was produced
        out.append(want if want in allowed else min(allowed, key=lambda s: abs(c.chain.index(s) - c.chain.index(want))))
    return _fix_free_sinks(problem, c, tuple(out))


def _fix_free_sinks(problem: Problem, c: ClassData, sites: tuple[str, ...]) -> tuple[str, ...]:
    """A sink free to go anywhere sits where its input is produced (no transfer)."""
    out = list(sites)
    for v in problem.sink_nodes:
        if len(c.allowed[v]) > 1:
            prods = [it.producer for it in problem.items if v in it.consumers]
            if prods and out[prods[0]] in c.allowed[v]:
                out[v] = out[prods[0]]
    return tuple(out)


def all_on_device(problem: Problem) -> dict[str, tuple[str, ...]]:
    """Every compute node on the edge device of its class."""
    return {c.name: _fill(problem, c, lambda v: c.chain[0]) for c in problem.classes}


def all_in_cloud(problem: Problem) -> dict[str, tuple[str, ...]]:
    """Every compute node on the highest site of its class's chain (the cloud)."""
    return {c.name: _fill(problem, c, lambda v: c.chain[-1]) for c in problem.classes}


def _score(problem: Problem, ev: Evaluation) -> tuple:
    excess = 0
    for c in problem.classes:
        ce = ev.classes.get(c.name)
        if ce is None:
            return (len(ev.violations) + 10**6, 0, 0)
        excess += sum(max(0, ce.sink_us[v] - lim) for v, lim in c.slo_us.items())
    return (len(ev.violations), excess, ev.objective)


def neurosurgeon(problem: Problem) -> dict[str, tuple[str, ...]]:
    """Per class, the best prefix of the topological order on the device, the rest in the cloud."""
    out = {}
    compute = problem.compute_nodes
    for c in problem.classes:
        sub = problem.only_class(c.name)
        best = None
        for k in range(len(compute) + 1):
            head = set(compute[:k])
            sites = _fill(problem, c, lambda v: c.chain[0] if v in head else c.chain[-1])  # called within _fill
            key = _score(sub, evaluate(sub, {c.name: sites}))
            if best is None or key < best[0]:
                best = (key, sites)
        assert best is not None   # range(len(compute) + 1) is never empty
        out[c.name] = best[1]
    return out


def greedy(problem: Problem) -> dict[str, tuple[str, ...]]:
    """Per class, from all-on-device, move each node (topological order) to its best site."""
    start = all_on_device(problem)
    out = {}
    for c in problem.classes:
        sub = problem.only_class(c.name)
        cur = list(start[c.name])
        best_key = _score(sub, evaluate(sub, {c.name: tuple(cur)}))
        for _ in range(2):  # two sweeps: a later move can make an earlier one pay
            improved = False
            for v in problem.compute_nodes:
                for s in c.allowed[v]:
                    if s == cur[v]:
                        continue
                    trial = list(cur)
                    trial[v] = s
                    trial = list(_fix_free_sinks(problem, c, tuple(trial)))
                    key = _score(sub, evaluate(sub, {c.name: tuple(trial)}))
                    if key < best_key:
                        best_key, cur, improved = key, trial, True
            if not improved:
                break
        out[c.name] = tuple(cur)
    return out


BASELINES: dict[str, Baseline] = {
    "all_on_device": all_on_device,
    "all_in_cloud": all_in_cloud,
    "neurosurgeon": neurosurgeon,
    "greedy": greedy,
}


def run_baselines(problem: Problem) -> dict[str, tuple[dict[str, tuple[str, ...]], Evaluation]]:
    """Every baseline's assignment and its exact evaluation on the whole problem."""
    out = {}
    for name, fn in BASELINES.items():
        asg = fn(problem)
        out[name] = (asg, evaluate(problem, asg))
    return out
