"""The small exception hierarchy every tierplan layer raises; the CLI maps it to exit codes."""

from __future__ import annotations

from typing import Callable

__all__ = ["TierplanError", "SpecError", "InputError", "InfeasibleError", "RuntimeFault"]


class TierplanError(Exception):
    """Base class. `exit_code` is what the CLI exits with; str(err) is the one-line message.

    `result_printed`: a command sets it on an error it raises after printing its `--json` result
    (e.g. an infeasible plan.json, exit 1); the CLI then prints no `{"error": ...}` object after it.
    """

    exit_code = 2
    result_printed = False


class InputError(TierplanError):
    """Bad user input (a file, a flag, a model): exit code 2, message names the culprit and the fix."""

    exit_code = 2


class SpecError(InputError):
    """A YAML spec is invalid. Carries every problem found, each naming file, line and YAML path.

    `problems` holds them all; `str(err)` (what the CLI prints) shows the first `SHOWN` and a count.
    """

    SHOWN = 50

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(self.problems[0] if len(self.problems) == 1 else
                         f"{self.problems[0]} (and {len(self.problems) - 1} more problem(s))")

    def shown(self) -> list[str]:
        """The first SHOWN problems, then '... and N more problems' when there are more."""
        more = len(self.problems) - self.SHOWN
        return self.problems[:self.SHOWN] + ([f"... and {more} more problem{'s' if more > 1 else ''} "
                                              "(fix these and run again to see them)"] if more > 0 else [])

    def __str__(self) -> str:  # one problem per line, capped
        return "\n".join(self.shown())


class InfeasibleError(TierplanError):
    """The input is fine but the goal cannot be met (e.g. SLO); exit code 1, says what is achievable."""

    exit_code = 1


class RuntimeFault(TierplanError):
    """A network, node or site fault that outlived its retries; exit code 1."""

    exit_code = 1


def finite_flag(flag: str, example: str, minimum: float = 0.0) -> Callable[[float | None], float | None]:
    """A typer callback refusing nan, inf and values below `minimum` for a float flag, naming it (exit 2)."""
    import math

    def check(value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value >= minimum):
            raise InputError(f"{flag} {value:g}: expected a finite number >= {minimum:g}. To fix: pass e.g. {flag} {example}")
        return value
    return check
