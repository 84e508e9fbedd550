"""Resources that requests come back to, for the fast path: one scan over visits in time order.

Where a request leaves a resource class and returns to it (device -> base station -> device),
Lindley's recursion cannot solve the classes one after another. A fixed-point iteration over
the classes does, but needs about one round per hand-off inside a busy period, so a loaded
device took hundreds of rounds (smart-city did not settle in 200). Here the visits of such a group are taken in order of arrival from one heap: a visit's
arrival is known once its predecessors are done, and it is never earlier than the visit being
served, so each FIFO queue sees its visits in arrival order, exactly as the SimPy path serves
them. Instances and transfer times are looked up per visit only where they change over time
(mobility, bandwidth traces); otherwise they come from one vectorised call per stage. Batching
stages join a batch queue per server, run by the rule of SimPy's `_BatchQueue`: a free server
takes the oldest waiting visit's group once max_batch of it wait or its wait has run out, else a
timer event looks again then; a batch's end frees the server (another event).

Windows: the scan stops at the horizon H (events at H or later wait for the next window, their
completion +inf); the queues' next-free times, round-robin counts and batch queues (waiting
visits, busy-until) carry over in a `CycleState`, so the scan goes on exactly where it stopped.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tierplan.simulations.batching import BatchStage, batch_ms, next_batch, stage_key
from tierplan.simulations.engine_common import Busy, Requests, resource_label
from tierplan.simulations.journey import Journey, Stage
from tierplan.simulations.world import World

__all__ = ["solve_cycle", "CycleState"]

_TIMER, _FREE, _PS = -1, -2, -3  # heap entries that are queue events, not visits (in the journey slot)
_PS_EPS_MS = 1e-9   # finish tags this close are one instant (as SimPy's _SharedLink)


class _PsLink:
    """A fair (processor-sharing) link direction: the transfers in flight share its rate equally.
    Virtual time v grows at 1/n per ms with n transfers in flight; a transfer is done when v
    reaches its tag (v at its arrival plus its full-rate time). `version` voids stale events."""

    __slots__ = ("jobs", "v", "last", "version")

    def __init__(self) -> None:
        self.jobs: list[tuple[float, int, int, int, int]] = []   # (tag, order, journey, stage, request)
        self.v = 0.0
        self.last = -math.inf
        self.version = 0

    def advance(self, t: float) -> None:
        if self.jobs:
            self.v += (t - self.last) / len(self.jobs)
        self.last = t

    def next_finish(self) -> float:
        return self.last + (self.jobs[0][0] - self.v) * len(self.jobs)


class _BatchQueue:
    """One batch server's waiting visits (oldest first), whether it is free (else until when), its
    armed timers, and where its batches are recorded."""

    __slots__ = ("waiting", "free", "free_at", "armed", "inst", "label", "site", "instances", "servers")

    def __init__(self, inst: int, label: str, site: str, instances: int, servers: int) -> None:
        self.waiting: list[tuple[BatchStage, float, float, int, int, int]] = []
        self.free = True
        self.free_at = -math.inf
        self.armed: set[float] = set()
        self.inst, self.label, self.site, self.instances, self.servers = inst, label, site, instances, servers


@dataclass
class CycleState:
    """Cycle scans' queues between windows: FIFO next-free times, round-robin counts, batch queues."""

    free: dict[tuple, float] = field(default_factory=dict)
    rr: dict[tuple, int] = field(default_factory=dict)
    bqs: dict[tuple, _BatchQueue] = field(default_factory=dict)
    pls: dict[tuple, _PsLink] = field(default_factory=dict)
    heap: list[tuple[float, int, int, object, int]] = field(default_factory=list)   # events at or after the horizon
    horizon_ms: float = -math.inf   # where the last window stopped

    def remap(self, ji: int, keep: np.ndarray) -> None:
        """Journey ji's requests were cut to `keep` (the unfinished ones, in order): renumber the visits kept."""
        new = np.cumsum(keep) - 1
        for bq in self.bqs.values():
            bq.waiting = [(sp, sv, t, j, si, int(new[i]) if j == ji else i) for sp, sv, t, j, si, i in bq.waiting]
        self.heap = [(t, q, j, x, int(new[i]) if j == ji else i) for t, q, j, x, i in self.heap]
        for pl in self.pls.values():
            pl.jobs = [(tag, o, j, si, int(new[i]) if j == ji else i) for tag, o, j, si, i in pl.jobs]


def _times_vary(world: World, journey: Journey, st: Stage) -> bool:
    """Whether the stage's instance can change over a run (a device moving, a hand-over)."""
    return bool(world.mobility.get(journey.origin)) or world.hands_over(st, journey.origin)


def solve_cycle(world: World, journeys: list[Journey], reqs: list[Requests], stages: list[tuple[int, int]],
                busy: dict[str, Busy], state: CycleState | None = None, horizon_ms: float = math.inf,
                batching: dict[tuple, BatchStage] | None = None, sizes: dict[str, list[int]] | None = None,
                fair: bool = False) -> None:
    """Complete the visits of `stages` (a strongly connected group of resource classes without
    outages) that happen before `horizon_ms` into `reqs[..].done`, recording busy intervals and
    batch sizes; predecessors outside the group are solved already (up to the same horizon).
    Stages in `batching` queue at batch servers; with `fair`, link stages share their link's rate
    (processor sharing, SimPy's _SharedLink) instead of queueing FIFO."""
    batching = batching or {}
    sizes = sizes if sizes is not None else {}
    state = state if state is not None else CycleState()
    H = horizon_ms
    group = set(stages)
    heap: list[tuple[float, int, int, Any, int]] = []
    first: list[tuple[np.ndarray, np.ndarray, int, int]] = []
    info: dict[tuple[int, int], tuple] = {}
    pending: dict[tuple[int, int], list[int]] = {}
    arrive: dict[tuple[int, int], list[float]] = {}
    succ: dict[tuple[int, int], list[int]] = {}
    labels: dict[str, tuple[list, list, list, int, int]] = {}
    waiting_now = {(ji, si, i) for bq in state.bqs.values() for _, _, _, ji, si, i in bq.waiting}
    waiting_now |= {(ji, int(x), i) for _, _, ji, x, i in state.heap if ji >= 0}  # type: ignore[call-overload]
    waiting_now |= {(ji, si, i) for pl in state.pls.values() for _, _, ji, si, i in pl.jobs}   # in flight
    seq = 0
    for ji, si in sorted(stages):
        j, st, R = journeys[ji], journeys[ji].stages[si], reqs[ji]
        dr, arr = R.draws, R.arr
        n = len(arr.t_ms)
        todo = np.isposinf(R.done[si])
        inside = [p for p in st.preds if (ji, p) in group]
        outside = [p for p in st.preds if (ji, p) not in group]
        if outside:
            a_out = R.done[outside[0]] if len(outside) == 1 else np.max(np.stack([R.done[p] for p in outside]), axis=0)
        elif st.preds:
            a_out = np.full(n, -math.inf)
        else:
            a_out = arr.t_ms
        left = np.zeros(n, dtype=np.int64)
        for p in inside:   # predecessors in the group settled in an earlier window count as outside ones
            dp = R.done[p]
            open_p = np.isposinf(dp)
            left += open_p
            a_out = np.maximum(a_out, np.where(open_p, -math.inf, dp))
        if inside:   # read and raised as its predecessors in the group finish
            arrive[(ji, si)] = a_out.astype(np.float64).tolist()
            pending[(ji, si)] = left.tolist()
        for p in inside:
            succ.setdefault((ji, p), []).append(si)
        varies = _times_vary(world, j, st)
        inst = None if varies else world.stage_instance(st, j.origin, arr.device, arr.t_ms).tolist()
        work = dr.work[si]
        bw_varies = st.kind == "link" and world.bandwidth.get(st.site) is not None
        svc = None if (st.kind == "link" and bw_varies) else np.asarray(
            work if st.kind == "compute" else world.transfer_ms(st, work, arr.t_ms), dtype=np.float64).tolist()
        label = resource_label(st)
        if label not in labels:
            labels[label] = ([], [], [], world.instance_count(st), world.servers(st))
        spec = batching.get(stage_key(st)) if st.kind == "compute" else None
        runs_si, delay_si = dr.runs[si], dr.delay_ms[si]
        info[(ji, si)] = (st, j.origin, arr.device.tolist() if varies else None, inst, svc,
                          work.tolist() if svc is None else None,
                          None if runs_si is None else runs_si.tolist(),
                          None if delay_si is None else delay_si.tolist(),
                          st.resource, world.servers(st), labels[label], spec)
        ready_now = todo & (left == 0) & ~np.isposinf(a_out)
        if waiting_now:
            for i in [i for (wj, ws, i) in waiting_now if wj == ji and ws == si]:
                ready_now[i] = False   # already waiting in a batch queue
        sel = np.flatnonzero(ready_now)
        if len(sel):
            first.append((np.asarray(a_out, dtype=np.float64)[sel], sel, ji, si))
    # visits whose arrival is known up front, sorted once; the heap holds only the ones released later
    t0 = np.concatenate([f[0] for f in first]) if first else np.zeros(0)
    order = np.argsort(t0, kind="stable")
    t0_sorted = t0[order].tolist()
    who = np.concatenate([np.full(len(f[0]), k) for k, f in enumerate(first)])[order].tolist() if first else []
    idx = np.concatenate([f[1] for f in first])[order].tolist() if first else []
    stage_of = [(f[2], f[3]) for f in first]
    nan_first = [k for k, t in enumerate(t0_sorted) if t != t]   # NaN sorts last: failed upstream
    n_first = len(t0_sorted) - len(nan_first)
    pos = 0
    free = state.free
    rr = state.rr
    bqs: list[_BatchQueue] = []
    bq_keys: list[tuple] = []
    bq_of: dict[tuple, int] = {}
    out = {k: reqs[k[0]].done[k[1]] for k in stages}
    ready: list[tuple[float, int, int, int]] = []    # NaN arrivals (a failed predecessor): no queueing

    def record(bq: _BatchQueue) -> tuple[list, list, list, int, int]:
        if bq.label not in labels:
            labels[bq.label] = ([], [], [], bq.instances, bq.servers)
        return labels[bq.label]

    def finish(ji: int, si: int, i: int, d: float) -> None:
        nonlocal seq
        out[(ji, si)][i] = d
        for sj in succ.get((ji, si), ()):
            key = (ji, sj)
            a = arrive[key]
            ai = a[i]
            if ai == ai and not d <= ai:   # the latest predecessor; a NaN (failed) one sticks
                a[i] = d
            left = pending[key]
            left[i] -= 1
            if left[i] == 0:
                if math.isnan(a[i]):
                    ready.append((a[i], ji, sj, i))
                else:
                    heapq.heappush(heap, (a[i], seq, ji, sj, i))
                    seq += 1

    def poke(b: int, now: float) -> None:
        """Start batches on batch queue b while its server is free (SimPy `_BatchQueue._poke`)."""
        nonlocal seq
        bq = bqs[b]
        while bq.free and bq.waiting:
            head = bq.waiting[0][0]
            same, due = next_batch(bq.waiting, now)
            if same is None:
                if due not in bq.armed:
                    bq.armed.add(due)
                    heapq.heappush(heap, (due, seq, _TIMER, b, 0))
                    seq += 1
                return
            taken = set(same)
            members = [bq.waiting[k] for k in same]
            bq.waiting = [w for k, w in enumerate(bq.waiting) if k not in taken]
            bq.free = False
            svc = batch_ms(head, (m[1] for m in members))
            end = now + svc
            bq.free_at = end
            rec = record(bq)
            rec[0].append(bq.inst)
            rec[1].append(now)
            rec[2].append(svc)
            sizes.setdefault(bq.site, []).append(len(members))
            for _, _, _, ji, si, i in members:
                delay = info[(ji, si)][7]
                finish(ji, si, i, end if delay is None else end + delay[i])
            heapq.heappush(heap, (end, seq, _FREE, b, 0))
            seq += 1

    pls: list[_PsLink] = []
    pl_keys: list[tuple] = []
    pl_of: dict[tuple, int] = {}

    def reschedule(p: int) -> None:
        """Arm the event of fair link p's next transfer to finish (voiding the one armed before)."""
        nonlocal seq
        pl = pls[p]
        pl.version += 1
        if pl.jobs:
            heapq.heappush(heap, (pl.next_finish(), seq, _PS, p, pl.version))
            seq += 1

    def ps_done(p: int, now: float) -> None:
        pl = pls[p]
        pl.advance(now)
        pl.v = max(pl.v, pl.jobs[0][0])
        while pl.jobs and pl.jobs[0][0] <= pl.v + _PS_EPS_MS:
            _, _, ji, si, i = heapq.heappop(pl.jobs)
            delay = info[(ji, si)][7]
            finish(ji, si, i, now if delay is None else now + delay[i])
        reschedule(p)

    for key, bq in state.bqs.items():   # batch queues carried from the last window go on where they were
        bq_of[key] = len(bqs)
        bqs.append(bq)
        bq_keys.append(key)
    for key, pl in state.pls.items():   # fair links too, with their transfers in flight
        pl_of[key] = len(pls)
        pls.append(pl)
        pl_keys.append(key)
    for t, _, ji, x, i in sorted(state.heap, key=lambda e: e[1]):   # and so do the events left at the horizon
        slot = (pl_of[x] if ji == _PS else bq_of[x]) if ji < 0 else x  # type: ignore[index]
        heapq.heappush(heap, (t, seq, ji, slot, i))
        seq += 1

    for k in nan_first:
        ji, si = stage_of[who[k]]
        ready.append((math.nan, ji, si, idx[k]))
    while heap or ready or pos < n_first:
        if ready:
            t, ji, si, i = ready.pop()
        elif pos < n_first and (not heap or t0_sorted[pos] <= heap[0][0]):
            t = t0_sorted[pos]
            if t >= H:
                break
            ji, si = stage_of[who[pos]]
            i = idx[pos]
            pos += 1
        else:
            if heap[0][0] >= H:
                break
            t, _, ji, si, i = heapq.heappop(heap)
            if ji == _PS:   # a fair link's next transfer may be done (unless the event is stale)
                if i == pls[si].version:
                    ps_done(si, t)
                continue
            if ji < 0:   # a batch queue's timer ran out or its server came free
                if ji == _TIMER:
                    bqs[si].armed.discard(t)
                else:
                    bqs[si].free = True
                poke(si, t)
                continue
        st, origin, device, inst, svc, work, runs, delay, res, servers, rec, spec = info[(ji, si)]
        if math.isnan(t) or (runs is not None and not runs[i]):
            finish(ji, si, i, t)
            continue
        q = inst[i] if inst is not None else world.stage_instance1(st, origin, device[i], t)
        s = svc[i] if svc is not None else float(world.transfer_ms(st, work[i], t))
        qk: tuple = (res, q)
        if servers > 1:
            c = rr.get(qk, 0)
            rr[qk] = c + 1
            qk = (res, q, c % servers)
        if fair and st.kind == "link":
            p = pl_of.get(qk, -1)
            if p < 0:
                p = pl_of[qk] = len(pls)
                pls.append(state.pls.setdefault(qk, _PsLink()))
                pl_keys.append(qk)
            pl = pls[p]
            pl.advance(t)
            heapq.heappush(pl.jobs, (pl.v + s, seq, ji, si, i))
            seq += 1
            rec[0].append(q)
            rec[1].append(t)
            rec[2].append(s)
            reschedule(p)
            continue
        if spec is not None:
            b = bq_of.get(qk)
            if b is None:
                b = bq_of[qk] = len(bqs)
                bq = _BatchQueue(q, resource_label(st), st.site, world.instance_count(st), servers)
                bqs.append(bq)
                bq_keys.append(qk)
                state.bqs[qk] = bq
            bqs[b].waiting.append((spec, s, t, ji, si, i))
            poke(b, t)
            continue
        start = free.get(qk, -math.inf)
        if start < t:
            start = t
        end = start + s
        free[qk] = end
        rec[0].append(q)
        rec[1].append(start)
        rec[2].append(s)
        finish(ji, si, i, end if delay is None else end + delay[i])
    state.horizon_ms = H
    state.heap = [(t, q, ji, (pl_keys[x] if ji == _PS else bq_keys[x]) if ji < 0 else x, i)
                  for t, q, ji, x, i in heap] if math.isfinite(H) else []
    for label, (qs, starts, svcs, count, servers) in labels.items():
        busy.setdefault(label, Busy(count, servers)).add(np.asarray(qs, dtype=np.int64), np.asarray(starts),
                                                          np.asarray(svcs))
