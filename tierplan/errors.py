"""The small exception hierarchy every tierplan layer raises; the CLI maps it to exit codes."""

from __future__ import annotations

__all__ = ["TierplanError", "SpecError", "InputError", "InfeasibleError", "RuntimeFault"]


class TierplanError(Exception):
    """Base class. `exit_code` is what the CLI exits with; str(err) is the one-line message."""

    exit_code = 2


class InputError(TierplanError):
    """Bad user input (a file, a flag, a model): exit code 2, message names the culprit and the fix."""

    exit_code = 2


class SpecError(InputError):
    """A YAML spec is invalid. Carries every problem found, each naming file, line and YAML path."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(self.problems[0] if len(self.problems) == 1 else
                         f"{self.problems[0]} (and {len(self.problems) - 1} more problem(s))")

    def __str__(self) -> str:  # every problem, one per line
        return "\n".join(self.problems)


class InfeasibleError(TierplanError):
    """The input is fine but the goal cannot be met (e.g. SLO); exit code 1, says what is achievable."""

    exit_code = 1


class RuntimeFault(TierplanError):
    """A network, node or site fault that outlived its retries; exit code 1."""

    exit_code = 1
