"""What the planner says while it works: the phase, and the running CP-SAT model's incumbent and bound.

A caller that wants to show progress passes a hook (`plan_app(..., progress=hook)`, or wraps any
planner call in `with reporting(hook):`); the hook gets a `SolveEvent` when a phase starts, when
CP-SAT finds a better placement and when it proves a better bound. Without a hook nothing is
reported and CP-SAT runs without callbacks. The hook is called from CP-SAT's worker threads: it
must be quick and thread-safe (updating a rich Progress is). The planner never imports the CLI.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from ortools.sat.python import cp_model

__all__ = ["SolveEvent", "ProgressHook", "reporting", "phase", "solve_cp"]


@dataclass(frozen=True)
class SolveEvent:
    """One progress report. `incumbent` and `bound` are the running CP-SAT model's objective and
    proven lower bound, in its integer objective units (weighted micro-dollars / microseconds);
    None before the model has them (a new phase)."""

    phase: str
    incumbent: float | None = None
    bound: float | None = None

    @property
    def gap(self) -> float | None:
        """(incumbent - bound) / |incumbent|: 0 when proven optimal, None without both."""
        if self.incumbent is None or self.bound is None:
            return None
        return max(0.0, (self.incumbent - self.bound) / max(abs(self.incumbent), 1.0))


ProgressHook = Callable[[SolveEvent], None]


class _Reporter:
    """The hook, the current phase and the running model's figures (updated from CP-SAT's threads)."""

    def __init__(self, hook: ProgressHook) -> None:
        self.hook = hook
        self.phase = "planning"
        self.incumbent: float | None = None
        self.bound: float | None = None
        self.lock = threading.Lock()

    def emit(self, *, phase: str | None = None, incumbent: float | None = None, bound: float | None = None,
             new_model: bool = False) -> None:
        with self.lock:
            if phase is not None:
                self.phase = phase
            if phase is not None or new_model:
                self.incumbent, self.bound = None, None
            if incumbent is not None:
                self.incumbent = incumbent
            if bound is not None:
                self.bound = bound
            event = SolveEvent(self.phase, self.incumbent, self.bound)
        self.hook(event)


_REPORTER: ContextVar[_Reporter | None] = ContextVar("tierplan_planner_progress", default=None)


@contextmanager
def reporting(hook: ProgressHook | None) -> Iterator[None]:
    """Report the planner's progress to `hook` inside the block (nothing when `hook` is None)."""
    if hook is None:
        yield
        return
    token = _REPORTER.set(_Reporter(hook))
    try:
        yield
    finally:
        _REPORTER.reset(token)


def phase(name: str) -> None:
    """Say that a new phase starts (its incumbent and bound start empty)."""
    rep = _REPORTER.get()
    if rep is not None:
        rep.emit(phase=name)


class _Callback(cp_model.CpSolverSolutionCallback):
    """Reports every improving solution CP-SAT finds, with the bound proven so far."""

    def __init__(self, rep: _Reporter) -> None:
        super().__init__()
        self._rep = rep

    def on_solution_callback(self) -> None:
        self._rep.emit(incumbent=self.ObjectiveValue(), bound=self.BestObjectiveBound())


def solve_cp(solver: cp_model.CpSolver, model: cp_model.CpModel) -> cp_model.CpSolverStatus:
    """`solver.Solve(model)`, reporting incumbents and bounds to the hook in force (if any)."""
    rep = _REPORTER.get()
    if rep is None:
        return solver.Solve(model)
    rep.emit(new_model=True)
    solver.best_bound_callback = lambda bound: rep.emit(bound=bound)
    return solver.Solve(model, _Callback(rep))
