"""Independent parts of a placement problem: edge classes that share no site, link or budget.

The joint model couples edge classes only through what they share: a site's instances, memory
and utilisation (and its level when renting for queueing), a link's capacity, and the budget.
The objective (cost, latency, energy or weights) is a sum of per-site and per-class terms, so
when the classes split into groups that share none of these, the joint optimum is the union of
the groups' optima and its objective (and bound) the sum of theirs: each group can be solved
on its own, which is far faster than one model of all of them (CP-SAT's effort grows faster
than linearly with the model).
"""

from __future__ import annotations

from planner.problem import Problem

__all__ = ["components", "class_size"]


def class_size(problem: Problem, name: str) -> int:
    """How many placement literals the class adds to the model (a proxy for its solve effort)."""
    c = next(c for c in problem.classes if c.name == name)
    return sum(len(a) for a in c.allowed)


def components(problem: Problem) -> list[tuple[str, ...]]:
    """Groups of edge class names that share no site, link capacity or budget (problem order).

    One group holding every class when a budget couples them all (or there is one class).
    """
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
        shared = set()
        for allowed in c.allowed:
            shared.update(f"site:{s}" for s in allowed)
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
