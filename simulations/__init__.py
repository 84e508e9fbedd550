"""Fleet-scale simulation of placement plans: SimPy event model plus a vectorised fast path."""

from tierplan.simulations.api import DEFAULT_STRATEGIES, simulate
from tierplan.simulations.report import SimReport, SinkStats, StrategyResult

__all__ = ["simulate", "SimReport", "SinkStats", "StrategyResult", "DEFAULT_STRATEGIES"]
