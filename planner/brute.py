"""Brute-force enumeration of every assignment (the reference the exact solver must match).

Exponential: sum over classes of |chain|^|V|; for small problems in tests and checks only.
"""

from __future__ import annotations

import itertools

from planner.evaluate import Evaluation, evaluate
from planner.problem import Problem

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
    """The feasible assignment of least objective (ties: first in enumeration order), or None."""
    n = count_assignments(problem)
    if n > limit:
        raise ValueError(f"brute force would evaluate {n} assignments (> {limit})")
    per_class = [list(itertools.product(*c.allowed)) for c in problem.classes]
    best: tuple[Evaluation, dict] | None = None
    for combo in itertools.product(*per_class):
        asg = {c.name: sites for c, sites in zip(problem.classes, combo)}
        ev = evaluate(problem, asg)
        if not ev.feasible:
            continue
        if latency_max is not None and ev.latency_term > latency_max:
            continue
        if best is None or ev.objective < best[0].objective:
            best = (ev, asg)
    return best
