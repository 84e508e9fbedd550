"""Dynamic batching for the fast path: batch queues solved by a scan per queue, not by events.

A batch server (simulations.batching; the runtime's batching thread) is causal and FIFO by
batch: when it is free at time t with the oldest waiting request h of its group, it starts
at max(t, min(A_h + max_wait, A_(h+max_batch-1))) with every request of the group that has
arrived by then (at most max_batch), for `ratio[b] x` the members' mean time. With one group
per queue (the common case) that is one step per batch, a jump to the batch's last member;
queues that mix groups are scanned arrival by arrival. The rule is the SimPy `_BatchQueue`'s,
so both engines agree request for request on the same draws (tests/sim/test_sim_engines.py).

Windows: a batch that starts before the horizon H (by more than the same-instant tolerance) took
only jobs that arrived before H, and whether it was due depended only on them, so it is final;
the jobs of later batches are handed back (+inf) to be queued again with the next window's
arrivals, and each server's next-free time carries over.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from tierplan.simulations.batching import SAME_INSTANT_MS, BatchStage, batch_ms, next_batch

__all__ = ["batch_departures", "round_robin_queues"]


def round_robin_queues(arrival_ms: np.ndarray, queue: np.ndarray, servers: int,
                       rr: np.ndarray | None = None) -> np.ndarray:
    """Replica queue id (instance * servers + r) of each job when every instance sends its k-th
    arrival to replica k mod servers, as both engines dispatch; `rr[instance]` counts the jobs
    dispatched in earlier windows (updated in place)."""
    queue = np.asarray(queue, dtype=np.int64)
    if servers <= 1 or len(queue) == 0:
        return queue * max(servers, 1)
    order = np.lexsort((arrival_ms, queue))
    q = queue[order]
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    rank = np.arange(len(q)) - np.repeat(starts, np.diff(np.r_[starts, len(q)]))
    if rr is not None:
        rank += rr[q]
        rr += np.bincount(q, minlength=len(rr))[: len(rr)]
    out = np.empty(len(q), dtype=np.int64)
    out[order] = q * servers + rank % servers
    return out


def batch_departures(arrival_ms: np.ndarray, service_ms: np.ndarray, queue: np.ndarray,
                     group: np.ndarray, specs: list[BatchStage], free: np.ndarray | None = None,
                     horizon_ms: float = math.inf):
    """Departure time of every job at batch servers (one per `queue` id), and the batches run.

    `group[k]` indexes `specs`: jobs batch only with jobs of the same group. Returns
    (departure_ms, batches) with batches = (queue, start_ms, batch_ms, size) arrays, one entry per batch.
    `free[queue]`: when each server is next free (from an earlier window; updated in place). Jobs
    whose batch would start at `horizon_ms` or later get +inf (they queue again next window).

    >>> spec = BatchStage(group=("n",), max_batch=2, max_wait_ms=1.0, ratio=(0.0, 1.0, 1.5), source="linear")
    >>> d, b = batch_departures(np.array([0.0, 0.5, 5.0]), np.array([2.0, 2.0, 2.0]), np.zeros(3, int),
    ...                         np.zeros(3, int), [spec])
    >>> d.tolist(), b[3].tolist()
    ([3.5, 3.5, 8.0], [2, 1])
    """
    n = len(arrival_ms)
    dep = np.empty(n)
    if n == 0:
        z = np.zeros(0)
        return dep, (z.astype(np.int64), z, z, z.astype(np.int64))
    order = np.lexsort((arrival_ms, queue))
    a_all = np.asarray(arrival_ms, dtype=np.float64)[order].tolist()
    s_all = np.asarray(service_ms, dtype=np.float64)[order].tolist()
    g_sorted = np.asarray(group, dtype=np.int64)[order]
    q_sorted = np.asarray(queue, dtype=np.int64)[order]
    bounds = np.r_[np.flatnonzero(np.r_[True, q_sorted[1:] != q_sorted[:-1]]), n].tolist()
    out = [0.0] * n
    bq: list[int] = []
    bstart: list[float] = []
    bsvc: list[float] = []
    bsize: list[int] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        gs = g_sorted[lo:hi]
        qid = int(q_sorted[lo])
        f0 = -math.inf if free is None else float(free[qid])
        if bool(np.all(gs == gs[0])):
            runs, f1 = _one_group(a_all, s_all, lo, hi, specs[int(gs[0])], out, f0, horizon_ms)
        else:
            runs, f1 = _mixed_groups(a_all, s_all, gs.tolist(), lo, specs, out, f0, horizon_ms)
        if free is not None:
            free[qid] = f1
        for start, svc, size in runs:
            bq.append(qid)
            bstart.append(start)
            bsvc.append(svc)
            bsize.append(size)
    dep[order] = out
    return dep, (np.asarray(bq, dtype=np.int64), np.asarray(bstart), np.asarray(bsvc), np.asarray(bsize, dtype=np.int64))


def _one_group(a: list[float], s: list[float], lo: int, hi: int, spec: BatchStage, out: list[float],
               free: float = -math.inf, horizon: float = math.inf):
    """One queue whose jobs all batch together: a step per batch. Returns (batches, next-free time)."""
    cap, wait = spec.max_batch, spec.max_wait_ms
    i = lo
    runs = []
    while i < hi:
        t = a[i] if a[i] > free else free
        last = i + cap - 1
        full = a[last] if last < hi else math.inf
        due = a[i] + wait
        go = min(due, full)
        start = t if t >= go - SAME_INSTANT_MS else go
        if start + SAME_INSTANT_MS >= horizon:   # later arrivals may join it: not final in this window
            for k in range(i, hi):
                out[k] = math.inf
            break
        j = min(i + cap, bisect.bisect_right(a, start + SAME_INSTANT_MS, i, hi))
        b = j - i
        svc = batch_ms(spec, s[i:j])
        free = start + svc
        for k in range(i, j):
            out[k] = free
        runs.append((start, svc, b))
        i = j
    return runs, free


def _mixed_groups(a: list[float], s: list[float], g: list[int], lo: int, specs: list[BatchStage], out: list[float],
                  free: float = -math.inf, horizon: float = math.inf):
    """One queue whose jobs belong to several groups: the oldest waiting job's group goes next.
    Returns (batches, next-free time)."""
    n = len(g)
    waiting: list[tuple[BatchStage, float, float, int]] = []   # arrived and waiting, oldest first
    nxt = 0
    runs = []
    while nxt < n or waiting:
        t = max(free, waiting[0][2] if waiting else a[lo + nxt])
        while True:
            if t + SAME_INSTANT_MS >= horizon:
                break
            while nxt < n and a[lo + nxt] <= t + SAME_INSTANT_MS:
                waiting.append((specs[g[nxt]], s[lo + nxt], a[lo + nxt], lo + nxt))
                nxt += 1
            same, due = next_batch(waiting, t)
            if same is not None:
                break
            t = min(due, a[lo + nxt]) if nxt < n else due
        if t + SAME_INSTANT_MS >= horizon:   # not final: every job not yet in a batch queues again
            for w in waiting:
                out[w[3]] = math.inf
            for k in range(nxt, n):
                out[lo + k] = math.inf
            break
        assert same is not None   # the loop above left only when a batch was due
        taken = set(same)
        members = [waiting[k] for k in same]
        waiting = [w for k, w in enumerate(waiting) if k not in taken]
        svc = batch_ms(members[0][0], (m[1] for m in members))
        free = t + svc
        for m in members:
            out[m[3]] = free
        runs.append((t, svc, len(members)))
    return runs, free
