"""What one CP-SAT solve found (`SolveResult`): status, assignment, objective, bound and timing.

Its own module so that the formulation and the decomposition (which solves independent groups and
combines their results) both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SolveResult"]


@dataclass(frozen=True)
class SolveResult:
    """What CP-SAT found: status, assignment (class -> site per node), objective and bound."""

    status: str
    assignment: dict[str, tuple[str, ...]] = field(default_factory=dict)
    objective: int | None = None
    bound: int | None = None
    solve_s: float = 0.0
    latency_term: int | None = None
    levels: dict[str, int] = field(default_factory=dict)   # site -> utilisation level chosen
    scale: int = 1              # objective and bound in units of 1/scale (fractional relaxations)
    proof_s: float | None = None  # seconds until the primary result was final (before tie-breaking)

    @property
    def gap(self) -> float | None:
        """Relative optimality gap (objective - bound) / |objective|; 0 when proven optimal."""
        if self.objective is None or self.bound is None:
            return None
        if self.status == "optimal":
            return 0.0
        return max(0.0, (self.objective - self.bound) / max(abs(self.objective), 1))
