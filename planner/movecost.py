"""Moves carry a cost in a warm-started re-plan's objective (issue #19: a re-plan "prefers few moves").

`plan --from OLD --move-cost MS` and the `--adapt` loop hand the planner the old plan: each
compute node (a candidate segment or a transform) that an edge class's requests would run on
another site than the old plan ran it costs `MS` milliseconds of that class's latency in the
objective (weighted like the latency term: by the class's share of the requests), so a placement
only moves what gains more than it charges. A node the old plan did not run (or ran on a site it
may no longer use) is free wherever it goes. Latency objectives only: a pure cost or energy
objective has no latency term to charge in (the adopt rule, planner.adaptpolicy.decide, still
charges moves there).

The planner's unit is the segment: a piece that moves with its k segments is charged k times.
`penalties` builds the charges, planner.formulation adds them to the CP-SAT objective
(`Problem.move_penalty`), `charged` reports what a plan's moves cost.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from tierplan.errors import InputError
from tierplan.planner.units import ms_to_us

if TYPE_CHECKING:
    from tierplan.planner.build import BuildInfo
    from tierplan.planner.plan import Plan
    from tierplan.planner.problem import Problem

__all__ = ["penalties", "with_move_cost", "charged", "check_move_cost"]


def check_move_cost(move_cost_ms: float, flag: str = "--move-cost") -> float:
    """`move_cost_ms` if it is a finite number >= 0, else InputError naming `flag`."""
    value = float(move_cost_ms)
    if not (value >= 0 and value != float("inf")):
        raise InputError(f"{flag} {move_cost_ms}: must be a finite number of ms >= 0. To fix: e.g. {flag} 10")
    return value


def penalties(problem: "Problem", info: "BuildInfo", old: "Plan", move_cost_ms: float) -> dict[tuple[str, int, str], int]:
    """(class, node index, site) -> what running the node there adds to the objective: the class's
    weight x `move_cost_ms` (in us) for every site but the one `old` ran it on."""
    us = ms_to_us(move_cost_ms)
    if us <= 0:
        return {}
    by_segment = old.segment_sites()
    out: dict[tuple[str, int, str], int] = {}
    for c in problem.classes:
        was = by_segment.get(c.name) or {}
        for v in problem.compute_nodes:
            site = was.get(info.order[v])
            if site is None or site not in c.allowed[v]:
                continue
            for s in c.allowed[v]:
                if s != site:
                    out[(c.name, v, s)] = int(c.weight) * us
    return out


def with_move_cost(problem: "Problem", info: "BuildInfo", old: "Plan | None", move_cost_ms: float) -> "Problem":
    """`problem` charging moves off `old` (unchanged without an old plan, a zero cost or a latency term)."""
    if old is None or move_cost_ms <= 0 or not problem.coef_latency:
        return problem
    return replace(problem, move_penalty=penalties(problem, info, old, move_cost_ms))


def charged(moves: list, move_cost_ms: float) -> dict[str, float | int]:
    """What the moves of a re-plan (planner.plan.PieceMove list) were charged: segments moved and ms."""
    segments = sum(len(getattr(m, "segments", None) or [m]) for m in moves if getattr(m, "to_site", None))
    return {"move_cost_ms": move_cost_ms, "segments_moved": segments, "charged_ms": round(move_cost_ms * segments, 3)}
