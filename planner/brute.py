"""Brute-force enumeration of every assignment (the reference the exact solver must match).

Exponential: sum over classes of |chain|^|V|; for small problems in tests and checks only.
"""

from __future__ import annotations

import itertools

from tierplan.planner.evaluate import Evaluation, evaluate, level_options
from tierplan.planner.problem import Problem

__all__ = ["brute_force", "count_assignments"]


def count_assignments(problem: Problem) -> int:
    """How many assignments brute force would evaluate."""
    total = 1
    for c in problem.classes:
        for allowed in c.allowed:
            total *= len(allowed)
    return total


def brute_force(problem: Problem, limit: int = 2_000_000,
                latency_max: int | None = None) -> tuple[Evaluation, dict[str, tuple[str, ...]]] | None:
    """The feasible assignment of least objective (ties: first in enumeration order), or None.

    Per assignment, the utilisation levels of rented sites are enumerated too (the Evaluation
    carries the levels that won)."""
    n = count_assignments(problem)
    if n > limit:
        raise ValueError(f"brute force would evaluate {n} assignments (> {limit})")
    per_class = [list(itertools.product(*c.allowed)) for c in problem.classes]
    best: tuple[Evaluation, dict] | None = None
    for combo in itertools.product(*per_class):
        asg = {c.name: sites for c, sites in zip(problem.classes, combo)}
        first = evaluate(problem, asg)
        # rented sites may rent more instances to queue less: every level worth trying
        options = [[(s, j) for j in level_options(sd, first.load_ppm[s])]
                   for s, sd in problem.sites.items() if not sd.fixed_instances and sd.queues]
        for pick in itertools.product(*options):
            ev = evaluate(problem, asg, dict(pick)) if pick else first
            if not ev.feasible:
                continue
            if latency_max is not None and ev.latency_term > latency_max:
                continue
            if best is None or ev.objective < best[0].objective:
                best = (ev, asg)
    return best
