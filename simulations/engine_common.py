"""What the engines share: one journey's requests in a window (draws, completion, outcomes) and busy intervals.

A stage's completion time is +inf while it is not yet known (the fast path solves a window of
requests up to a time horizon and carries unfinished requests to the next window), NaN where the
request failed, else the time in ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tierplan.simulations.journey import Journey, Stage
from tierplan.simulations.world import ArrivalDraws, StageDraws

__all__ = ["Busy", "Requests", "WindowResult", "resource_label", "sink_done"]


def resource_label(stage: Stage) -> str:
    """Name of the resource class in utilisation tables: a site class, or link:SITE:DIR[:shared]."""
    if stage.kind == "compute":
        return stage.site
    return f"link:{stage.site}:{stage.direction}" + (":shared" if stage.shared else "")


@dataclass
class Busy:
    """Service intervals on one resource class: which instance, when service started, for how long."""

    instances: int
    servers: int
    inst: list[np.ndarray] = field(default_factory=list)
    start_ms: list[np.ndarray] = field(default_factory=list)
    service_ms: list[np.ndarray] = field(default_factory=list)

    def add(self, inst: np.ndarray, start_ms: np.ndarray, service_ms: np.ndarray) -> None:
        self.inst.append(np.asarray(inst, dtype=np.int64))
        self.start_ms.append(np.asarray(start_ms, dtype=np.float64))
        self.service_ms.append(np.asarray(service_ms, dtype=np.float64))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.inst:
            z = np.zeros(0)
            return z.astype(np.int64), z, z
        return np.concatenate(self.inst), np.concatenate(self.start_ms), np.concatenate(self.service_ms)


def _take_draws(d: StageDraws, m: np.ndarray) -> StageDraws:
    return StageDraws([w[m] for w in d.work], [None if r is None else r[m] for r in d.runs],
                      [None if x is None else x[m] for x in d.delay_ms])


def _cat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    return None if a is None or b is None else np.concatenate([a, b])


@dataclass
class Requests:
    """One journey's requests in a window, in arrival order: draws, per-stage completion, outcomes.

    `replica[stage]` keeps the replica queue a batching visit was dispatched to (-1: not yet), so a
    visit carried to the next window waits at the same server; `ps_left[stage]` the work a transfer
    on a fair link still had at the last window's horizon (NaN: none)."""

    arr: ArrivalDraws
    draws: StageDraws
    done: list[np.ndarray]
    failed: np.ndarray
    rerouted: np.ndarray
    delayed: np.ndarray
    replica: dict[int, np.ndarray] = field(default_factory=dict)
    ps_left: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def new(cls, journey: Journey, arr: ArrivalDraws, draws: StageDraws) -> Requests:
        n = len(arr.t_ms)
        return cls(arr, draws, [np.full(n, np.inf) for _ in journey.stages], np.zeros(n, dtype=bool),
                   np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))

    def __len__(self) -> int:
        return len(self.arr.t_ms)

    def complete(self) -> np.ndarray:
        """Requests whose every stage is settled (done or failed)."""
        out = np.ones(len(self), dtype=bool)
        for d in self.done:
            out &= ~np.isposinf(d)
        return out

    def take(self, m: np.ndarray) -> Requests:
        arr = ArrivalDraws(self.arr.t_ms[m], self.arr.device[m], {k: v[m] for k, v in self.arr.k.items()})
        return Requests(arr, _take_draws(self.draws, m), [d[m] for d in self.done], self.failed[m],
                        self.rerouted[m], self.delayed[m], {k: v[m] for k, v in self.replica.items()},
                        {k: v[m] for k, v in self.ps_left.items()})

    def extend(self, other: Requests) -> Requests:
        """These requests followed by `other` (later arrivals)."""
        a, b = self.arr, other.arr
        arr = ArrivalDraws(np.concatenate([a.t_ms, b.t_ms]), np.concatenate([a.device, b.device]),
                           {k: np.concatenate([a.k[k], b.k[k]]) for k in a.k})
        d1, d2 = self.draws, other.draws
        draws = StageDraws([np.concatenate([x, y]) for x, y in zip(d1.work, d2.work)],
                           [_cat(x, y) for x, y in zip(d1.runs, d2.runs)],
                           [_cat(x, y) for x, y in zip(d1.delay_ms, d2.delay_ms)])
        replica = {k: np.concatenate([self.replicas_of(k), other.replicas_of(k)])
                   for k in set(self.replica) | set(other.replica)}
        ps_left = {k: np.concatenate([self.ps_left_of(k), other.ps_left_of(k)])
                   for k in set(self.ps_left) | set(other.ps_left)}
        return Requests(arr, draws, [np.concatenate([x, y]) for x, y in zip(self.done, other.done)],
                        np.concatenate([self.failed, other.failed]), np.concatenate([self.rerouted, other.rerouted]),
                        np.concatenate([self.delayed, other.delayed]), replica, ps_left)

    def ps_left_of(self, stage: int) -> np.ndarray:
        """The carried-work array of a fair link stage (created on first use, NaN everywhere)."""
        r = self.ps_left.get(stage)
        if r is None:
            r = self.ps_left[stage] = np.full(len(self), np.nan)
        return r

    def replicas_of(self, stage: int) -> np.ndarray:
        """The replica array of a stage (created on first use, -1 everywhere)."""
        r = self.replica.get(stage)
        if r is None:
            r = self.replica[stage] = np.full(len(self), -1, dtype=np.int64)
        return r


@dataclass
class WindowResult:
    """What an engine hands back for a window besides the completion times it wrote into Requests."""

    engine: str
    busy: dict[str, Busy]
    batch_sizes: dict[str, list[int]] = field(default_factory=dict)  # site class -> size of each batch run


def sink_done(journey: Journey, t_ms: np.ndarray, done: list[np.ndarray], failed: np.ndarray) -> dict[str, np.ndarray]:
    """Completion time of each sink of a journey: the last of its final stages (NaN if failed)."""
    out = {}
    for name, stages in journey.sinks.items():
        d = t_ms.copy() if not stages else np.max(np.stack([done[s] for s in stages]), axis=0)
        out[name] = np.where(failed, np.nan, d)
    return out
