"""Sweeps: one plan replayed over strategies x seeds x parameter grids, each cell a Ray task.

    tierplan simulate plan.json --sweep seed=0..4 --sweep slo=100,150 --sweep scale=0.5,1,2
    tierplan simulate plan.json --sweep seed=0..9 --sweep link=cams=4g,cams=3g --ray-address HOST:6379

A cell is (strategy, seed, one value of every swept parameter): a `Scenario` with those fields
replaced, simulated by `simulate()` alone in its task, so its result depends on nothing but the
cell (the same on any worker, or run serially: tests/sim/test_sim_sweep.py checks it on a 3-node
local cluster). Parameters: seed (`0..4` or a list), slo (ms, every sink), rate (requests/s per
device, every source), link (SITE=PRESET|MBPS, `--link`'s grammar; several links: `a=4g+b=wifi`),
scale (every edge and base-station class's count times the factor, at least 1). Ray runs on the
embedded local cluster (loopback, no dashboard) unless given an address; `ray_address=None` runs
the cells in this process. Cells come back in grid order; `SweepReport.summary` groups them over
seeds with means and 95% confidence intervals (Student's t).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from tierplan.errors import InputError
from tierplan.planner.plan import Plan
from tierplan.simulations.api import simulate
from tierplan.simulations.config import Scenario
from tierplan.simulations.scenario import parse_link
from tierplan.spec import FleetSpec

__all__ = ["SweepCell", "CellResult", "SweepReport", "parse_sweep", "sweep_cells", "run_sweep", "run_cell",
           "LOCAL", "PARAMS"]

LOCAL = "local"      # ray_address for the embedded local cluster
PARAMS = ("seed", "slo", "rate", "link", "scale")
_METRICS = ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "slo_attainment")
# Student's t 97.5% quantiles for 1..30 degrees of freedom (a 95% two-sided interval); 1.96 beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def _numbers(name: str, text: str) -> tuple[float, ...]:
    out = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise InputError(f"--sweep {name}={text}: {part!r} is not a number. To fix: e.g. --sweep {name}=1,2") from None
        if not math.isfinite(v) or v <= 0:
            raise InputError(f"--sweep {name}={text}: values must be finite and > 0")
        out.append(v)
    return tuple(out)


def parse_sweep(items: Sequence[str]) -> dict[str, tuple]:
    """`--sweep NAME=VALUES` flags as {name: values}; seeds as ints (`0..4` is 0 to 4)."""
    out: dict[str, tuple] = {}
    for item in items:
        name, eq, text = item.partition("=")
        name = name.strip()
        if not eq or not text or name not in PARAMS:
            raise InputError(f"--sweep {item!r}: expected NAME=VALUES with NAME one of {', '.join(PARAMS)}, "
                             f"e.g. --sweep seed=0..4 --sweep slo=100,150")
        if name in out:
            raise InputError(f"--sweep {name}: given twice. To fix: list every value in one flag")
        if name == "seed":
            lo, dots, hi = text.partition("..")
            try:
                seeds = tuple(range(int(lo), int(hi) + 1)) if dots else tuple(int(x) for x in text.split(","))
            except ValueError:
                raise InputError(f"--sweep seed={text}: expected FIRST..LAST or a comma list of integers") from None
            if not seeds:
                raise InputError(f"--sweep seed={text}: no seeds in that range")
            out[name] = seeds
        elif name == "link":
            values = tuple(text.split(","))
            for v in values:   # checked here, one line naming the flag
                for one in v.split("+"):
                    parse_link(one)
            out[name] = values
        else:
            out[name] = _numbers(name, text)
    return out


@dataclass(frozen=True)
class SweepCell:
    """One run of a sweep: a strategy, a seed and a value for each swept parameter."""

    strategy: str
    seed: int
    params: tuple[tuple[str, float | str], ...] = ()

    @property
    def key(self) -> tuple:
        """The cell's group over seeds."""
        return (self.strategy, self.params)


class CellResult(BaseModel):
    """What a cell reports (per sink: latency quantiles and SLO attainment)."""

    model_config = ConfigDict(extra="forbid")
    strategy: str
    seed: int
    params: dict[str, float | str]
    sinks: dict[str, dict[str, float | None]]
    cost_per_hour_usd: float
    throughput_rps: float
    requests: int
    requests_failed: int
    engine: str
    wall_s: float = Field(description="Wall time of the cell on its worker (not part of the result's identity).")
    node: str = Field("", description="The Ray node that ran the cell ('' when run in this process).")


def sweep_cells(strategies: Sequence[str], grid: dict[str, tuple]) -> list[SweepCell]:
    """Every (strategy, seed, parameter values) of the grid, in a fixed order."""
    seeds = grid.get("seed", (0,))
    names = [n for n in PARAMS if n != "seed" and n in grid]
    out = []
    for strategy in strategies:
        for values in itertools.product(*(grid[n] for n in names)):
            for seed in seeds:
                out.append(SweepCell(strategy, int(seed), tuple(zip(names, values))))
    return out


def _scaled(spec: FleetSpec, factor: float) -> FleetSpec:
    """The fleet with every edge and base-station class's count times `factor` (at least 1)."""
    sites = {n: (s.model_copy(update={"count": max(1, round(s.count * factor))}) if s.tier != "cloud" else s)
             for n, s in spec.sites.items()}
    return spec.model_copy(update={"sites": sites})


def run_cell(plan: Plan, base: Scenario, cell: SweepCell, fleet: FleetSpec | None = None) -> CellResult:
    """Simulate one cell (everything it needs is in its arguments: the same on any worker)."""
    sc = replace(base, strategies=(cell.strategy,), seed=cell.seed)
    spec = fleet if fleet is not None else plan.fleet_spec()
    for name, value in cell.params:
        if name == "slo":
            sc = replace(sc, slo_ms={p.id.removeprefix("sink:"): float(value) for p in plan.pieces if p.kind == "sink"})
        elif name == "rate":
            sc = replace(sc, rates={p.id: float(value) for p in plan.pieces if p.kind == "source"})
        elif name == "link":
            sc = replace(sc, links=tuple(parse_link(v) for v in str(value).split("+")))
        elif name == "scale":
            spec = _scaled(spec, float(value))
    t0 = time.perf_counter()
    rep = simulate(plan, spec, sc)
    r = rep.strategies[cell.strategy]
    sinks = {name: {m: getattr(s, m) for m in _METRICS} for name, s in r.sinks.items()}
    return CellResult(strategy=cell.strategy, seed=cell.seed, params=dict(cell.params), sinks=sinks,
                      cost_per_hour_usd=r.cost_per_hour_usd, throughput_rps=r.throughput_rps, requests=r.requests,
                      requests_failed=r.requests_failed, engine=r.engine, wall_s=time.perf_counter() - t0,
                      node=_node())


def _node() -> str:
    """The Ray node running this task, or '' outside a Ray worker."""
    import sys
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return str(ray.get_runtime_context().get_node_id())


class SweepReport(BaseModel):
    """Every cell's result, in grid order, and where they ran."""

    model_config = ConfigDict(extra="forbid")
    cells: list[CellResult]
    grid: dict[str, list[float | str | int]]
    runner: str = Field(description="'serial', or the Ray cluster's address and its CPUs")
    wall_s: float

    def summary(self) -> list[dict]:
        """One row per (strategy, parameter values) and sink: mean and 95% CI half-width over seeds."""
        groups: dict[tuple, list[CellResult]] = {}
        for c in self.cells:
            groups.setdefault((c.strategy, tuple(sorted(c.params.items()))), []).append(c)
        rows = []
        for (strategy, params), cs in groups.items():
            for sink in cs[0].sinks:
                row: dict = {"strategy": strategy, **dict(params), "sink": sink, "seeds": len(cs)}
                for m in _METRICS + ("cost_per_hour_usd",):
                    xs = [c.sinks[sink][m] if m in _METRICS else c.cost_per_hour_usd for c in cs]
                    vals = [float(x) for x in xs if x is not None]
                    row[m], row[f"{m}_ci"] = _mean_ci(vals)
                rows.append(row)
        return rows

    def to_json(self) -> dict:
        return {**self.model_dump(mode="json"), "summary": self.summary()}


def _mean_ci(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * sd / math.sqrt(n)


def start_local_ray(cpus: int | None = None) -> str:
    """Start (or join) Ray in this process on loopback, without the dashboard; returns a description."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # else Ray binds the external interface (DESIGN.md)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=cpus or os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level=logging.WARNING)
    return f"local Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


def run_sweep(plan: Plan, base: Scenario, strategies: Sequence[str], grid: dict[str, tuple],
              fleet: FleetSpec | None = None, ray_address: str | None = LOCAL,
              progress: Callable[[int, int], None] | None = None) -> SweepReport:
    """Run every cell: as Ray tasks on `ray_address` (LOCAL: the embedded cluster, or the session
    this process is already connected to; an address: that cluster, leaving any other session) or,
    with None, one after another here."""
    cells = sweep_cells(strategies, grid)
    t0 = time.perf_counter()
    results: list[CellResult] = []
    if ray_address is None:
        runner = "serial"
        for k, cell in enumerate(cells):
            results.append(run_cell(plan, base, cell, fleet))
            if progress is not None:
                progress(k + 1, len(cells))
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        import ray
        if ray.is_initialized() and ray_address != LOCAL and \
                ray_address != ray.get_runtime_context().gcs_address:
            ray.shutdown()   # connected to another cluster (an earlier sweep's local one): join the one asked for
        if ray.is_initialized():
            runner = f"Ray ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
        elif ray_address == LOCAL:
            runner = start_local_ray()
        else:
            try:
                ray.init(address=ray_address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as e:  # Ray raises ConnectionError, RuntimeError or bare Exception here
                raise InputError(f"--ray-address {ray_address}: cannot join the Ray cluster "
                                 f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                                 f"To fix: start it with `ray start --head` or drop --ray-address") from None
            runner = f"Ray at {ray_address} ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"
        task = ray.remote(num_cpus=1, max_retries=2)(run_cell)
        plan_ref, base_ref, fleet_ref = ray.put(plan), ray.put(base), ray.put(fleet)
        refs = [task.remote(plan_ref, base_ref, c, fleet_ref) for c in cells]  # type: ignore[call-arg]  # Ray's stubs miss defaults
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            if progress is not None:
                progress(len(refs) - len(pending), len(refs))
        results = ray.get(refs)
    grid_json: dict[str, list[float | str | int]] = {k: list(v) for k, v in grid.items()}
    return SweepReport(cells=results, grid=grid_json, runner=runner, wall_s=time.perf_counter() - t0)
