"""Vectorised fast path: FIFO queues in a feed-forward network solved by Lindley's recursion in numpy.

For one FIFO server with arrivals A_n (sorted) and service S_n, the departure of job n is

    D_n = max(A_n, D_{n-1}) + S_n = C_n + max_{k <= n} (A_k - C_{k-1}),   C_n = S_1 + ... + S_n,

Lindley's recursion W_{n+1} = max(0, W_n + S_n - A_{n+1}) unrolled, which is a cumulative sum and
a cumulative maximum: no Python loop per request. Thousands of queues (one per device, base
station, replica) are solved in one pass: sort visits by (queue, arrival), then a segmented
cumulative max (each segment lifted above the previous by an offset; float64 ms, with a guard
that keeps rounding under a microsecond).
A site instance with c identical replicas dispatches its arrivals round-robin (the k-th arrival
goes to replica k mod c), so each replica is again a single FIFO server.

Resource classes (compute on site class X, link of class X up/down) are processed in a
topological order of the network they form across all journeys. Where requests come back to a
resource class they left (device -> base station -> device), the classes of that cycle are solved
together by one scan over their visits in arrival order (simulations/cycle_fast.py: a heap of
released visits, FIFO next-free times per queue, batch queues as events), which is the sample
path itself; outages on such a cycle raise `FastPathUnsupported` and the SimPy path runs
instead. Time-varying bandwidth uses the rate in force when a transfer reaches its link (the
SimPy path does the same, so both agree).
Work per simulated request is a few sorts and scans over the requests: it does not grow with the
number of devices or sites.

Windows (bounded memory): `run_fast` solves the requests of one window up to a time horizon H.
Every request of a later window arrives at H or after, so a visit that reaches its queue before
H is final in FIFO order: it is solved, and each queue keeps its server's next-free time and its
round-robin count for the next window. Visits that reach a queue at H or later wait (their
completion stays +inf) and their requests move on to the next window. A fair (processor-sharing)
link's busy period still open at H, and a batch that would start at H or later, are solved again
with the next window's arrivals (their fate depends on them). A resource's own horizon can be
later than H: no open visit of its stages' predecessors can finish before a bound (behind a FIFO
class, its servers' earliest next-free time), so behind an overloaded class the queued requests
move on instead of travelling from window to window. The result is the one-window solution
exactly, whatever the window size.

Fair link sharing (processor sharing, one transfer rate shared equally by the transfers in flight)
runs here too: busy periods are those of the FIFO recursion (any work-conserving discipline has
the same), a transfer alone in its busy period leaves at its FIFO time, and the busy periods that
hold several are replayed by a virtual-time scan (simulations.engine_fast.ps_departures). Stages that batch (dynamic batching at cloud sites) queue at batch
servers solved by a scan per queue with a step per batch (simulations/batch_fast.py), the same
rule as the SimPy path's.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from tierplan.simulations.batch_fast import batch_departures, round_robin_queues
from tierplan.simulations.batching import BatchStage, stage_key
from tierplan.simulations.cycle_fast import CycleState, solve_cycle
from tierplan.simulations.engine_common import Busy, Requests, WindowResult, resource_label
from tierplan.simulations.journey import Journey, Stage
from tierplan.simulations.world import World

__all__ = ["FastPathUnsupported", "FastState", "fifo_departures", "ps_departures", "run_fast"]

_INT64_SAFE = 2 ** 62
_ALL = slice(None)          # "every request" as an index (a view, not a gather)
_LIFT_LIMIT_MS = 2.0 ** 40
_PS_EPS_MS = 1e-9           # finish tags this close are one instant (SimPy's _SharedLink uses the same)


class FastPathUnsupported(Exception):
    """The scenario is not a feed-forward queueing network (or needs a shared-queue dispatch)."""


@dataclass
class FastState:
    """Queue state carried from one window to the next (one strategy): servers' next-free times and
    round-robin counts per resource class, and the cycle scans' state."""

    free: dict[tuple, np.ndarray] = field(default_factory=dict)
    rr: dict[tuple, np.ndarray] = field(default_factory=dict)
    cycle: CycleState = field(default_factory=CycleState)
    horizon_ms: float = -math.inf    # where the last window ended
    res_horizon: dict[tuple, float] = field(default_factory=dict)   # each resource's horizon in the last window

    def arrays(self, res: tuple, instances: int, servers: int) -> tuple[np.ndarray, np.ndarray]:
        if res not in self.free:
            self.free[res] = np.full(instances * servers, -np.inf)
            self.rr[res] = np.zeros(instances, dtype=np.int64)
        return self.free[res], self.rr[res]


def _stable_int_argsort(key: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative ints; a linear-time radix sort when they fit in 16 bits."""
    if len(key) and int(key.max()) < 2 ** 16:
        return np.argsort(key.astype(np.uint16), kind="stable")
    return np.argsort(key, kind="stable")


def _queue_time_order(queue: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Permutation sorting jobs by (queue, time): time-sort (skipped when sorted), then stable by queue."""
    if len(t) > 1 and not bool(np.all(t[1:] >= t[:-1])):
        by_t = np.argsort(t, kind="stable")
    else:
        by_t = np.arange(len(t))
    if int(queue.max()) < 2 ** 16:
        return by_t[np.argsort(queue[by_t].astype(np.uint16), kind="stable")]
    span = int(t.max()) + 1
    if int(queue.max()) * span < _INT64_SAFE:
        return np.argsort(queue * span + t, kind="stable")
    return np.lexsort((t, queue))


def fifo_departures(arrival_ms: np.ndarray, service_ms: np.ndarray, queue: np.ndarray,
                    servers: int = 1, with_queue: bool = True,
                    order: np.ndarray | None = None, free: np.ndarray | None = None,
                    rr: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Departure times and the served queue id of FIFO jobs at many queues at once.

    `queue` is each job's instance id; with `servers` > 1 each instance dispatches round-robin over
    its replicas in arrival order. Returns (departure_ms, replica queue id = instance*servers+r, or
    None when `with_queue` is False). `order`, when given, is a permutation already sorting the jobs by
    (queue, arrival) (a single-server tandem successor keeps its predecessor's order); with_queue
    False then returns that permutation in place of the queue ids. `free[replica queue]` (the
    servers' next-free times) and `rr[instance]` (jobs dispatched so far), when given, are where an
    earlier window left the queues; both are updated in place.

    >>> d, _ = fifo_departures(np.array([0.0, 1.0, 1.5]), np.array([2.0, 2.0, 2.0]), np.array([0, 0, 1]))
    >>> d.tolist()
    [2.0, 4.0, 3.5]
    """
    n = len(arrival_ms)
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    a_all = np.asarray(arrival_ms, dtype=np.float64)
    queue = np.asarray(queue, dtype=np.int64)
    if order is None:
        order = _queue_time_order(queue, a_all)
    q = queue[order]
    if servers > 1:
        new_seg = np.r_[True, q[1:] != q[:-1]]
        starts = np.flatnonzero(new_seg)
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        if rr is not None:
            rank += rr[q]
            rr += np.bincount(q, minlength=len(rr))[: len(rr)]
        rq = q * servers + rank % servers
        sub = _stable_int_argsort(rq)
        order, q = order[sub], rq[sub]
    a = a_all[order]
    s = np.asarray(service_ms, dtype=np.float64)[order]
    new_seg = np.empty(n, dtype=bool)
    new_seg[0] = True
    np.not_equal(q[1:], q[:-1], out=new_seg[1:])
    seg_id = np.cumsum(new_seg)
    seg_id -= 1
    c_prev = np.cumsum(s)
    c_prev -= s                                   # work before each job, all segments
    c_prev -= c_prev[new_seg][seg_id]             # ... within its own segment: C_{k-1}
    x = a - c_prev                                # A_k - C_{k-1}
    span = float(x.max()) - float(x.min()) + 1.0
    if float(seg_id[-1]) * span < _LIFT_LIMIT_MS:
        lift = seg_id * span                      # lifts each segment above the previous one
        x += lift
        np.maximum.accumulate(x, out=x)
        x -= lift
    else:  # the lifted values would lose sub-microsecond precision: one scan per segment
        bounds = np.r_[np.flatnonzero(new_seg), n]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            np.maximum.accumulate(x[lo:hi], out=x[lo:hi])
    if free is not None:                          # the server is busy until free[q] from earlier windows
        np.maximum(x, free[q], out=x)
    x += c_prev
    x += s                                        # D_n = C_n + max(F, max_{k<=n}(A_k - C_{k-1}))
    if free is not None:
        last = np.r_[np.flatnonzero(new_seg[1:]), n - 1]
        free[q[last]] = x[last]
    out = np.empty(n)
    out[order] = x
    if not with_queue:
        return out, order
    qid = np.empty(n, dtype=np.int64)
    qid[order] = q
    return out, qid


def _ps_busy_period(a: list[float], s: list[float], horizon: float = math.inf) -> tuple[list[float], list[float]]:
    """Departures of one busy period of a processor-sharing server (each of n jobs served at 1/n):
    a virtual-time scan, a job leaves when the virtual time reaches its arrival's plus its work.
    Jobs still in flight at `horizon` get +inf and the work they have left then (else NaN)."""
    m = len(a)
    out = [0.0] * m
    left = [math.nan] * m
    heap: list[tuple[float, int]] = []
    v, t, i = 0.0, a[0], 0
    push, pop = heapq.heappush, heapq.heappop
    while i < m or heap:
        n = len(heap)
        tf = t + (heap[0][0] - v) * n if n else math.inf
        if i < m and a[i] < tf:          # the next arrival comes first
            if n:
                v += (a[i] - t) / n
            t = a[i]
            push(heap, (v + s[i], i))
            i += 1
        elif tf > horizon:               # the rest is still in flight at the horizon
            vh = v + (horizon - t) / n
            for tag, k in heap:
                out[k], left[k] = math.inf, max(0.0, tag - vh)
            break
        else:
            t, v = tf, heap[0][0]
            while heap and heap[0][0] <= v + _PS_EPS_MS:
                out[pop(heap)[1]] = t
    return out, left


def ps_departures(arrival_ms: np.ndarray, service_ms: np.ndarray, queue: np.ndarray,
                  horizon_ms: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Departures of jobs at many processor-sharing queues (one rate shared equally by the jobs in
    flight). With a finite horizon (every later job arrives after it), a job still in flight then
    gets +inf and the work it has left at the horizon (else NaN): the second array; it goes on in
    the next window as a job arriving at the horizon with that much work.

    >>> ps_departures(np.array([0.0, 0.0, 10.0]), np.array([4.0, 4.0, 1.0]), np.zeros(3, int))[0].tolist()
    [8.0, 8.0, 11.0]
    """
    n = len(arrival_ms)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    a_all = np.asarray(arrival_ms, dtype=np.float64)
    order = _queue_time_order(np.asarray(queue, dtype=np.int64), a_all)
    fifo, _ = fifo_departures(a_all, service_ms, queue, 1, with_queue=False, order=order)
    a, q, d = a_all[order], np.asarray(queue)[order], fifo[order]
    new_bp = np.r_[True, (q[1:] != q[:-1]) | (a[1:] >= d[:-1])]
    starts = np.flatnonzero(new_bp)
    size = np.diff(np.r_[starts, n])
    out = d.copy()                               # a job alone in its busy period: PS = FIFO
    left = np.full(n, np.nan)
    alone = np.repeat(size == 1, size)
    late = alone & (d > horizon_ms)
    left[late] = d[late] - horizon_ms
    out[late] = np.inf
    s = np.asarray(service_ms, dtype=np.float64)[order]
    for lo, m in zip(starts[size > 1].tolist(), size[size > 1].tolist()):
        o, r = _ps_busy_period(a[lo: lo + m].tolist(), s[lo: lo + m].tolist(), horizon_ms)
        out[lo: lo + m] = o
        left[lo: lo + m] = r
    res, res_left = np.empty(n), np.empty(n)
    res[order] = out
    res_left[order] = left
    return res, res_left


def _resource_groups(journeys: list[Journey]) -> list[tuple[list[tuple], bool]]:
    """Resource classes in a topological order of their network, as (members, cyclic) groups.

    A group is one resource, or a strongly connected set of them that requests come back to
    (e.g. device -> base station -> device); cyclic groups are solved by simulations.cycle_fast."""
    g = nx.DiGraph()
    first: dict[tuple, int] = {}
    for j in journeys:
        for st in j.stages:
            g.add_node(st.resource)
            first.setdefault(st.resource, len(first))
            for p in st.preds:
                g.add_edge(j.stages[p].resource, st.resource)
    cond = nx.condensation(g)
    out = []
    for c in nx.lexicographical_topological_sort(cond, key=lambda c: min(first[r] for r in cond.nodes[c]["members"])):
        members = sorted(cond.nodes[c]["members"], key=first.__getitem__)
        cyclic = len(members) > 1 or g.has_edge(members[0], members[0])
        out.append((members, cyclic))
    return out


def _tandem_order(world: World, journeys: list[Journey], reqs: list[Requests], parts: list,
                  servers: int, last: dict) -> np.ndarray | None:
    """The predecessor's queue order when this visit is its single-server FIFO successor on the same
    instances with no delay in between (departures leave in arrival order, so no sort is needed)."""
    if len(parts) != 1 or servers != 1:
        return None
    ji, si, idx = parts[0][0], parts[0][1], parts[0][2]
    st = journeys[ji].stages[si]
    if idx is not _ALL or len(st.preds) != 1 or (ji, st.preds[0]) not in last or world.windows_for(st):
        return None
    pred = journeys[ji].stages[st.preds[0]]
    same_queue = (pred.shared == st.shared and pred.site == st.site and not st.shared) or (
        pred.kind == "compute" and st.kind == "link" and not st.shared and pred.site == st.site)
    if not same_queue or reqs[ji].draws.delay_ms[pred.index] is not None:
        return None
    return last[(ji, st.preds[0])]


def check_fast(world: World, journeys: list[Journey], link_sharing: str) -> None:
    """Raise FastPathUnsupported where the fast path cannot run these journeys."""
    if world.host_binds(journeys):
        raise FastPathUnsupported(f"the shared host's {world.host_cores} cores are fewer than the site servers "
                                  f"that compute on it (a job needs both; the SimPy path models that)")
    for members, cyclic in _resource_groups(journeys):
        if not cyclic:
            continue
        stages = [st for j in journeys for st in j.stages if st.resource in members]
        if any(world.windows_for(st) for st in stages):
            raise FastPathUnsupported("outages on resources that requests come back to")


def run_fast(world: World, journeys: list[Journey], reqs: list[Requests], state: FastState | None = None,
             horizon_ms: float = math.inf, batching: dict[tuple, BatchStage] | None = None,
             link_sharing: str = "fifo") -> WindowResult:
    """Solve every visit of `reqs` that reaches its queue before `horizon_ms` (all of them by default)
    with the vectorised recursion, writing completion times into `reqs[..].done`; stages in
    `batching` (simulations.batching.batch_stages) queue at batch servers (simulations.batch_fast),
    links are FIFO or shared fairly (`link_sharing`). `state` carries the queues between windows."""
    batching = batching or {}
    state = state if state is not None else FastState()
    sizes: dict[str, list[int]] = {}
    check_fast(world, journeys, link_sharing)
    groups = _resource_groups(journeys)
    busy: dict[str, Busy] = {}
    visits_of: dict[tuple, list[tuple[int, int]]] = {}
    for ji, j in enumerate(journeys):
        for st in j.stages:
            visits_of.setdefault(st.resource, []).append((ji, st.index))
    last: dict[tuple[int, int], np.ndarray] = {}  # (journey, stage) -> its queue order, when reusable
    H = horizon_ms
    # (journey, stage) -> a time before which none of its visits still open (this window's or any later
    # one's) can finish: a resource may take every visit that reaches it before the smallest such
    # bound of its stages' predecessors (H for a request's first stage). Behind an overloaded FIFO
    # class that bound is its servers' next-free time, so the requests queued there move on
    # instead of waiting for the horizon window after window (bounded memory under overload).
    lb_done: dict[tuple[int, int], float] = {}

    def stage_horizon(ji: int, st: Stage) -> float:
        return max((lb_done.get((ji, p), H) for p in st.preds), default=H)

    def arrival(ji: int, st: Stage) -> np.ndarray:
        done = reqs[ji].done
        if len(st.preds) == 1:
            return done[st.preds[0]]
        if st.preds:
            return np.max(np.stack([done[p] for p in st.preds]), axis=0)
        return reqs[ji].arr.t_ms

    def solve(res: tuple) -> None:
        """Queue every visit of one resource class that reaches it before its horizon, then bound
        when its still-open visits can finish."""
        Hr = min(stage_horizon(ji, journeys[ji].stages[si]) for ji, si in visits_of[res])
        fifo = solve_at(res, Hr)
        free = state.free.get(res) if fifo else None
        lb = max(Hr, float(free.min())) if free is not None and len(free) else Hr
        for ji, si in visits_of[res]:
            skips = reqs[ji].draws.runs[si] is not None   # a skipped visit is done when it arrives
            lb_done[(ji, si)] = min(stage_horizon(ji, journeys[ji].stages[si]), lb) if skips else lb

    def solve_at(res: tuple, Hr: float) -> bool:
        """Queue every visit of `res` that reaches it before Hr; True when it is a plain FIFO class."""
        fifo = not any(batching.get(stage_key(journeys[ji].stages[si])) for ji, si in visits_of[res]
                       if journeys[ji].stages[si].kind == "compute") and not (
            res[0] == "link" and link_sharing == "fair")
        parts = []  # (ji, stage, request idx, arrival, instance, service)
        for ji, si in visits_of[res]:
            j, st, R = journeys[ji], journeys[ji].stages[si], reqs[ji]
            done_i = R.done[si]
            a = arrival(ji, st)
            pending = np.isposinf(done_i)
            dead = pending & np.isnan(a)      # a failed predecessor fails the stage (failure follows the data)
            done_i[dead] = np.nan
            go = pending & (a < Hr)           # reaches the queue before the horizon: final in FIFO order
            only = R.draws.runs[si]
            runs = go if only is None else go & only
            idx: slice | np.ndarray
            if runs.all():  # the common case: every request runs this stage, no gathers needed
                idx, ai, device = _ALL, a, R.arr.device
            else:
                skip = go & ~runs
                done_i[skip] = a[skip]
                idx = np.flatnonzero(runs)
                ai, device = a[idx], R.arr.device[idx]
            inst = world.stage_instance(st, j.origin, device, ai)
            if world.hands_over(st, j.origin):
                moved = inst != world.stage_instance(st, j.origin, device, ai, handover=False)
                R.rerouted[np.arange(len(a))[idx][moved] if idx is not _ALL else moved] = True
            windows = world.windows_for(st)
            if windows:
                sel = np.arange(len(a)) if isinstance(idx, slice) else idx
                fo = world.apply_failures(st, windows, inst, ai)
                R.failed[sel[fo.failed]] = True
                done_i[sel[fo.failed]] = np.nan
                R.rerouted[sel[fo.rerouted]] = True
                R.delayed[sel[fo.delayed]] = True
                keep = ~fo.failed & (fo.t_ms < Hr)  # held past the horizon: queues next window
                idx, ai, inst = sel[keep], fo.t_ms[keep], fo.inst[keep]
            work = R.draws.work[si][idx]
            svc = work if st.kind == "compute" else world.transfer_ms(st, work, ai)
            parts.append((ji, si, idx, ai, inst, svc))
        if not parts:
            return fifo
        st0 = journeys[parts[0][0]].stages[parts[0][1]]
        servers = world.servers(st0)
        a_all = np.concatenate([p[3] for p in parts])
        s_all = np.concatenate([p[5] for p in parts])
        q_all = np.concatenate([p[4] for p in parts]).astype(np.int64)
        if not len(a_all):
            return fifo
        specs = [batching.get(stage_key(journeys[ji].stages[si])) if journeys[ji].stages[si].kind == "compute"
                 else None for ji, si, *_ in parts]
        b = busy.setdefault(resource_label(st0), Busy(world.instance_count(st0), servers))
        if any(specs):
            dep = _solve_batched(parts, specs, a_all, s_all, q_all, servers, st0, b, Hr)
        elif st0.kind == "link" and link_sharing == "fair":
            dep = _solve_fair(res, parts, a_all, s_all, q_all, b, Hr)
        else:
            free, rr = state.arrays(res, world.instance_count(st0), servers)
            hint = _tandem_order(world, journeys, reqs, parts, servers, last)
            dep, perm = fifo_departures(a_all, s_all, q_all, servers, with_queue=False, order=hint, free=free, rr=rr)
            if len(parts) == 1 and servers == 1 and parts[0][2] is _ALL and perm is not None:
                last[(parts[0][0], parts[0][1])] = perm
            b.add(q_all, dep - s_all, s_all)
        off = 0
        for ji, si, idx, ai, inst, svc in parts:
            d = dep[off: off + len(ai)]
            off += len(ai)
            dl = reqs[ji].draws.delay_ms[si]
            reqs[ji].done[si][idx] = d if dl is None else d + dl[idx]
        return fifo

    def _solve_fair(res: tuple, parts, a_all, s_all, q_all, b: Busy, Hr: float) -> np.ndarray:
        """Processor-sharing link queues. A transfer still in flight at an earlier window's horizon
        goes on from that horizon with the work it had left (Requests.ps_left)."""
        carried = np.concatenate([reqs[p[0]].ps_left_of(p[1])[p[2]] for p in parts])
        cont = ~np.isnan(carried)
        a_ps = np.where(cont, state.res_horizon.get(res, -math.inf), a_all)
        s_ps = np.where(cont, carried, s_all)
        dep, left = ps_departures(a_ps, s_ps, q_all, Hr)
        state.res_horizon[res] = Hr
        off = 0
        for ji, si, idx, ai, *_ in parts:
            reqs[ji].ps_left_of(si)[idx] = left[off: off + len(ai)]
            off += len(ai)
        ok = np.isfinite(dep)
        b.add(q_all[ok], a_all[ok], s_all[ok])
        return dep

    def _solve_batched(parts, specs, a_all, s_all, q_all, servers, st0, b: Busy, Hr: float) -> np.ndarray:
        """A resource class some of whose stages batch: replicas by round-robin over all its
        arrivals (as SimPy's shared counter; a visit carried from an earlier window keeps its
        replica), then batch servers for the batching stages and FIFO servers (of their own, as on
        the SimPy path) for the rest."""
        free, rr = state.arrays(st0.resource, world.instance_count(st0), servers)
        kept = np.concatenate([reqs[p[0]].replicas_of(p[1])[p[2]] for p in parts])
        rq = kept.copy()
        new = kept < 0
        if new.any():
            rq[new] = round_robin_queues(a_all[new], q_all[new], servers, rr)
        off = 0
        for ji, si, idx, ai, *_ in parts:
            reqs[ji].replicas_of(si)[idx] = rq[off: off + len(ai)]
            off += len(ai)
        gid: dict = {}
        group = np.concatenate([np.full(len(p[3]), gid.setdefault(sp.group, len(gid)) if sp else -1)
                                for p, sp in zip(parts, specs)])
        spec_of: list[BatchStage] = [sp for sp in dict((sp.group, sp) for sp in specs if sp is not None).values()]
        dep = np.empty(len(a_all))
        inb = group >= 0
        d_b, (bq, bstart, bsvc, bsize) = batch_departures(a_all[inb], s_all[inb], rq[inb], group[inb], spec_of,
                                                          free=free, horizon_ms=Hr)
        dep[inb] = d_b
        b.add(bq // max(servers, 1), bstart, bsvc)
        if (~inb).any():
            key = st0.resource + ("unbatched",)
            free_u, _ = state.arrays(key, world.instance_count(st0), servers)
            dep[~inb] = fifo_departures(a_all[~inb], s_all[~inb], rq[~inb], 1, with_queue=False, free=free_u)[0]
            b.add(q_all[~inb], dep[~inb] - s_all[~inb], s_all[~inb])
        sizes.setdefault(st0.site, []).extend(bsize.tolist())
        return dep

    for members, cyclic in groups:
        if not cyclic:
            solve(members[0])
            continue
        stages = [(ji, si) for r in members for ji, si in visits_of[r]]
        solve_cycle(world, journeys, reqs, stages, busy, state.cycle, H, batching, sizes, fair=link_sharing == "fair")
        lb_done.update({k: H for k in stages})   # the scan stops at H
    state.horizon_ms = H
    if not math.isfinite(H):
        for R in reqs:
            for d in R.done:
                d[R.failed] = np.nan
    return WindowResult("fast", busy, batch_sizes=sizes)
