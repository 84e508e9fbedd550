"""SimReport: per strategy, latency per sink, SLO attainment, throughput, utilisation and cost.

`SimReport.to_json()` is the machine-readable output of `tierplan simulate --json` (DESIGN.md):
{"strategies": {name: {"sinks": {sink: {"p50_ms", "p95_ms", "p99_ms", "slo_attainment"}},
"cost_per_hour_usd", "requests", "throughput_rps", "utilisation": {...}}}, "seed"} plus more
fields; curves for figures (CDF points, utilisation over time) stay out of the JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SinkStats", "StrategyResult", "SimReport"]


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SinkStats(_M):
    """Latency of the requests that reached one sink, and the share that met its SLO."""

    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    slo_ms: float | None = None
    slo_attainment: float | None = Field(None, description="Share of arrived requests delivered within the SLO; failed ones count as misses.")
    requests: int = 0
    ok: int = 0
    failed: int = 0
    classes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per producing class (when several): p50_ms, p95_ms, requests, slo_attainment.")
    exact_quantiles: bool = Field(True, description="Quantiles from every latency (True) or from the streaming sketch, within 0.05% (simulations.stats).")
    cdf_ms: list[float] = Field(default_factory=list, exclude=True, description="Latency quantiles 0..1 for figures.")


class StrategyResult(_M):
    """One strategy replayed over the fleet."""

    sinks: dict[str, SinkStats]
    cost_per_hour_usd: float
    predicted_cost_per_hour_usd: float | None = None
    requests: int
    requests_ok: int
    requests_failed: int
    requests_rerouted: int = 0
    requests_delayed: int = 0
    throughput_rps: float
    utilisation: dict[str, float] = Field(default_factory=dict, description="Mean busy share per resource (site class or link:SITE:DIR).")
    utilisation_max: dict[str, float] = Field(default_factory=dict, description="Busiest instance's busy share.")
    replicas: dict[str, int] = Field(default_factory=dict, description="Servers per site instance used.")
    engine: str
    wall_s: float
    sim_requests_per_s: float
    notes: list[str] = Field(default_factory=list)
    batch_mean: dict[str, float] = Field(default_factory=dict, description="Mean requests per batch run, per batching site class.")
    batches: dict[str, int] = Field(default_factory=dict, description="Batch runs per batching site class.")
    utilisation_series: dict[str, list[float]] = Field(default_factory=dict, exclude=True)
    instance_utilisation: dict[str, list[float]] = Field(default_factory=dict, exclude=True)


class SimReport(_M):
    """Every strategy's result for one (plan, fleet, scenario, seed)."""

    strategies: dict[str, StrategyResult]
    seed: int
    duration_s: float
    arrivals: str
    scenario: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict, description="Strategies not simulated, and why.")
    series_step_s: float = Field(1.0, exclude=True)

    def to_json(self) -> dict:
        """The `--json` document (DESIGN.md field names, plus extra fields)."""
        return self.model_dump(mode="json")
