"""Replay one strategy window by window and keep only aggregates (bounded memory at any run length).

Arrivals are drawn in time blocks (each from its own seeded stream, simulations.world.block_rng)
and per-stage work per (strategy, block), so the sample path does not depend on how many blocks a
window holds. The fast path takes the blocks a window at a time up to a horizon, carrying the
unfinished requests and the queues' state over (simulations.engine_fast); SimPy takes them all in
one window. Finished requests fold into `StrategyAgg`: latency sketches per sink (and per
producing class), SLO hits, outcome counts, egress bytes, busy time per instance and per bin,
batch counts. Nothing per request outlives its window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from tierplan.simulations.batching import BatchStage
from tierplan.simulations.engine_common import Requests, WindowResult, sink_done
from tierplan.simulations.engine_fast import FastState, run_fast
from tierplan.simulations.engine_simpy import run_simpy
from tierplan.simulations.journey import Journey
from tierplan.simulations.stats import BusyAccumulator, LatencySketch
from tierplan.simulations.world import ArrivalDraws, World, block_rng, strategy_rng

__all__ = ["Blocks", "SinkAgg", "StrategyAgg", "replay"]

_MS = 1000.0


@dataclass(frozen=True)
class Blocks:
    """The run cut into arrival blocks of equal length, each drawn from its own stream."""

    duration_s: float
    count: int

    @classmethod
    def for_run(cls, duration_s: float, expected_requests: float, per_block: int) -> Blocks:
        return cls(duration_s, max(1, math.ceil(expected_requests / per_block)))

    def span(self, b: int) -> tuple[float, float]:
        step = self.duration_s / self.count
        return b * step, (self.duration_s if b == self.count - 1 else (b + 1) * step)

    def windows(self, per_window: int) -> list[range]:
        """Consecutive runs of blocks, `per_window` blocks each (the last may be shorter)."""
        k = max(1, per_window)
        return [range(lo, min(lo + k, self.count)) for lo in range(0, self.count, k)]


@dataclass
class SinkAgg:
    """One sink's (or one producing class's share of a sink's) requests, folded."""

    sketch: LatencySketch
    n: int = 0
    ok: int = 0
    slo_hits: int = 0


@dataclass
class StrategyAgg:
    """Aggregates of one strategy's finished requests and busy intervals."""

    journeys: list[Journey]
    slo: dict[str, float | None]
    horizon_ms: float
    nbins: int
    exact_limit: int
    sinks: dict[str, SinkAgg] = field(default_factory=dict)
    classes: dict[str, dict[str, SinkAgg]] = field(default_factory=dict)
    busy: dict[str, BusyAccumulator] = field(default_factory=dict)
    batches: dict[str, list[int]] = field(default_factory=dict)    # site -> [runs, requests]
    egress_bytes: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    failed: int = 0
    rerouted: int = 0
    delayed: int = 0

    def __post_init__(self) -> None:
        origins: dict[str, set[str]] = {}
        for j in self.journeys:
            for name in j.sinks:
                origins.setdefault(name, set()).add(j.origin)
        self._split = {name for name, o in origins.items() if len(o) > 1}

    def _agg(self, name: str, origin: str | None) -> SinkAgg:
        if origin is None:
            if name not in self.sinks:
                self.sinks[name] = SinkAgg(LatencySketch(self.exact_limit))
            return self.sinks[name]
        by = self.classes.setdefault(name, {})
        if origin not in by:
            by[origin] = SinkAgg(LatencySketch(self.exact_limit))
        return by[origin]

    def add_requests(self, reqs: Sequence[Requests]) -> None:
        """Fold finished requests in (every stage settled)."""
        for j, R in zip(self.journeys, reqs):
            if not len(R):
                continue
            self.requests += len(R)
            self.failed += int(R.failed.sum())
            self.rerouted += int(R.rerouted.sum())
            self.delayed += int(R.delayed.sum())
            for name, d in sink_done(j, R.arr.t_ms, R.done, R.failed).items():
                lat = d - R.arr.t_ms
                ok = lat[~np.isnan(lat)]
                s = self.slo.get(name)
                hits = int((ok <= s).sum()) if s is not None else 0
                for agg in [self._agg(name, None)] + ([self._agg(name, j.origin)] if name in self._split else []):
                    agg.n += len(lat)
                    agg.ok += len(ok)
                    agg.slo_hits += hits
                    agg.sketch.add(ok)
            good = ~R.failed
            for st in j.stages:
                if st.kind == "link" and st.direction == "down" and not st.shared:
                    self.egress_bytes[st.site] = self.egress_bytes.get(st.site, 0.0) + float(
                        R.draws.work[st.index][good].sum())

    def add_window(self, wr: WindowResult) -> None:
        """Fold a window's busy intervals and batch runs in."""
        for label, b in wr.busy.items():
            acc = self.busy.get(label)
            if acc is None:
                acc = self.busy[label] = BusyAccumulator(b.instances, b.servers, self.horizon_ms, self.nbins)
            acc.add(*b.arrays())
        for site, sizes in wr.batch_sizes.items():
            if sizes:
                c = self.batches.setdefault(site, [0, 0])
                c[0] += len(sizes)
                c[1] += int(sum(sizes))


def _draw_window(world: World, journeys: list[Journey], blocks: Blocks, window: range, name: str,
                 keys: list[tuple[str, str]], rate_of: dict, spec, rfs: dict) -> list[Requests]:
    """The new requests of a window: arrivals block by block (shared by strategies), work per strategy."""
    out: list[Requests | None] = [None] * len(journeys)
    for b in window:
        t0, t1 = blocks.span(b)
        arng = block_rng(world.seed, b)
        arrs: dict[tuple[str, str], ArrivalDraws] = {k: world.draw_arrivals(k, rate_of[k], spec, rfs[k], t0, t1, arng)
                                                     for k in keys}
        srng = strategy_rng(world.seed, name, b)
        for ji, j in enumerate(journeys):
            a = arrs[(j.origin, j.source)]
            r = Requests.new(j, a, world.draw_stages(j, a, srng))
            prev = out[ji]
            out[ji] = r if prev is None else prev.extend(r)
    return [r for r in out if r is not None]


def replay(world: World, journeys: list[Journey], name: str, blocks: Blocks, keys: list[tuple[str, str]],
           rate_of: dict, spec, rfs: dict, agg: StrategyAgg, *, fast: bool, per_window: int,
           batching: dict[tuple, BatchStage], link_sharing: str, dispatch: str,
           on_window: Callable[[int, int], None] | None = None) -> str:
    """Replay one strategy into `agg`; returns the engine's name. The fast path goes window by
    window (`per_window` blocks each); SimPy takes the whole run at once."""
    windows = blocks.windows(per_window) if fast else [range(blocks.count)]
    state = FastState()
    carried: list[Requests] | None = None
    engine = "fast" if fast else "simpy"
    for w, window in enumerate(windows):
        new = _draw_window(world, journeys, blocks, window, name, keys, rate_of, spec, rfs)
        reqs = new if carried is None else [c.extend(n) for c, n in zip(carried, new)]
        last = w == len(windows) - 1
        horizon = math.inf if last else blocks.span(window[-1])[1] * _MS
        if fast:
            wr = run_fast(world, journeys, reqs, state, horizon, batching, link_sharing)
        else:
            wr = run_simpy(world, journeys, reqs, dispatch, batching=batching, link_sharing=link_sharing)
        agg.add_window(wr)
        done = [R.complete() for R in reqs]
        agg.add_requests([R.take(m) for R, m in zip(reqs, done)])
        carried = [R.take(~m) for R, m in zip(reqs, done)]
        for ji, m in enumerate(done):
            state.cycle.remap(ji, ~m)
        if on_window is not None:
            on_window(w + 1, len(windows))
    return engine
