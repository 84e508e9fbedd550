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
number of devices or sites. Stages that batch (dynamic batching at cloud sites) queue at batch
servers solved by a scan per queue with a step per batch (simulations/batch_fast.py), the same
rule as the SimPy path's.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from tierplan.simulations.batch_fast import batch_departures, round_robin_queues
from tierplan.simulations.batching import BatchStage, stage_key
from tierplan.simulations.cycle_fast import solve_cycle
from tierplan.simulations.engine_common import Busy, EngineResult, resource_label
from tierplan.simulations.journey import Journey
from tierplan.simulations.world import ArrivalDraws, StageDraws, World

__all__ = ["FastPathUnsupported", "fifo_departures", "run_fast"]

_INT64_SAFE = 2 ** 62
_ALL = slice(None)          # "every request" as an index (a view, not a gather)
_LIFT_LIMIT_MS = 2.0 ** 40


class FastPathUnsupported(Exception):
    """The scenario is not a feed-forward queueing network (or needs a shared-queue dispatch)."""


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
                    order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Departure times and the served queue id of FIFO jobs at many queues at once.

    `queue` is each job's instance id; with `servers` > 1 each instance dispatches round-robin over
    its replicas in arrival order. Returns (departure_ms, replica queue id = instance*servers+r, or
    None when `with_queue` is False). `order`, when given, is a permutation already sorting the jobs by
    (queue, arrival) (a single-server tandem successor keeps its predecessor's order); with_queue
    False then returns that permutation in place of the queue ids.

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
    x += c_prev
    x += s                                        # D_n = C_n + max_{k<=n}(A_k - C_{k-1})
    out = np.empty(n)
    out[order] = x
    if not with_queue:
        return out, order
    qid = np.empty(n, dtype=np.int64)
    qid[order] = q
    return out, qid


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


def _tandem_order(world: World, journeys: list[Journey], draws: list[StageDraws], parts: list,
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
    if not same_queue or draws[ji].delay_ms[pred.index] is not None:
        return None
    return last[(ji, st.preds[0])]


def run_fast(world: World, journeys: list[Journey], arrivals: list[ArrivalDraws],
             draws: list[StageDraws], batching: dict[tuple, BatchStage] | None = None) -> EngineResult:
    """Simulate every journey's requests to completion with the vectorised recursion; stages in
    `batching` (simulations.batching.batch_stages) queue at batch servers (simulations.batch_fast)."""
    batching = batching or {}
    sizes: dict[str, list[int]] = {}
    if world.host_binds(journeys):
        raise FastPathUnsupported(f"the shared host's {world.host_cores} cores are fewer than the site servers "
                                  f"that compute on it (a job needs both; the SimPy path models that)")
    groups = _resource_groups(journeys)
    n_req = [len(a.t_ms) for a in arrivals]
    done = [[np.full(n, np.nan) for _ in j.stages] for j, n in zip(journeys, n_req)]
    failed = [np.zeros(n, dtype=bool) for n in n_req]
    rerouted = [np.zeros(n, dtype=bool) for n in n_req]
    delayed = [np.zeros(n, dtype=bool) for n in n_req]
    busy: dict[str, Busy] = {}
    visits_of: dict[tuple, list[tuple[int, int]]] = {}
    for ji, j in enumerate(journeys):
        for st in j.stages:
            visits_of.setdefault(st.resource, []).append((ji, st.index))
    last: dict[tuple[int, int], np.ndarray] = {}  # (journey, stage) -> its queue order, when reusable

    def arrival(ji: int, st) -> np.ndarray:
        if len(st.preds) == 1:
            return done[ji][st.preds[0]]
        if st.preds:
            return np.max(np.stack([done[ji][p] for p in st.preds]), axis=0)
        return arrivals[ji].t_ms

    def solve(res: tuple) -> None:
        """Queue every visit of one resource class (its predecessors are done)."""
        parts = []  # (ji, stage, request idx, arrival, instance, service)
        for ji, si in visits_of[res]:
            j, st, arr, dr = journeys[ji], journeys[ji].stages[si], arrivals[ji], draws[ji]
            a = arrival(ji, st)
            live = ~np.isnan(a)  # a failed predecessor fails the stage (failure follows the data)
            runs = live if dr.runs[si] is None else live & dr.runs[si]
            if runs.all():  # the common case: every request runs this stage, no gathers needed
                idx, ai, device = _ALL, a, arr.device
            else:
                skip = live & ~runs
                done[ji][si][skip] = a[skip]
                idx = np.flatnonzero(runs)
                ai, device = a[idx], arr.device[idx]
            inst = world.stage_instance(st, j.origin, device, ai)
            if world.hands_over(st, j.origin):
                moved = inst != world.stage_instance(st, j.origin, device, ai, handover=False)
                rerouted[ji][np.arange(len(a))[idx][moved] if idx is not _ALL else moved] = True
            windows = world.windows_for(st)
            if windows:
                if idx is _ALL:
                    idx = np.arange(len(a))
                fo = world.apply_failures(st, windows, inst, ai)
                failed[ji][idx[fo.failed]] = True
                done[ji][si][idx[fo.failed]] = np.nan
                rerouted[ji][idx[fo.rerouted]] = True
                delayed[ji][idx[fo.delayed]] = True
                keep = ~fo.failed
                idx, ai, inst = idx[keep], fo.t_ms[keep], fo.inst[keep]
            work = dr.work[si][idx]
            svc = work if st.kind == "compute" else world.transfer_ms(st, work, ai)
            parts.append((ji, si, idx, ai, inst, svc))
        if not parts:
            return 0.0
        st0 = journeys[parts[0][0]].stages[parts[0][1]]
        servers = world.servers(st0)
        a_all = np.concatenate([p[3] for p in parts])
        s_all = np.concatenate([p[5] for p in parts])
        q_all = np.concatenate([p[4] for p in parts])
        specs = [batching.get(stage_key(journeys[ji].stages[si])) if journeys[ji].stages[si].kind == "compute"
                 else None for ji, si, *_ in parts]
        if any(specs):
            dep = _solve_batched(parts, specs, a_all, s_all, q_all, servers, st0)
        else:
            hint = _tandem_order(world, journeys, draws, parts, servers, last)
            dep, perm = fifo_departures(a_all, s_all, q_all, servers, with_queue=False, order=hint)
            if len(parts) == 1 and servers == 1 and parts[0][2] is _ALL:
                last[(parts[0][0], parts[0][1])] = perm
            b = busy.setdefault(resource_label(st0), Busy(world.instance_count(st0), servers))
            b.add(q_all, dep - s_all, s_all)
        off = 0
        for ji, si, idx, ai, inst, svc in parts:
            d = dep[off: off + len(ai)]
            off += len(ai)
            dl = draws[ji].delay_ms[si]
            done[ji][si][idx] = d if dl is None else d + dl[idx]

    def _solve_batched(parts, specs, a_all, s_all, q_all, servers, st0) -> np.ndarray:
        """A resource class some of whose stages batch: replicas by round-robin over all its
        arrivals (as SimPy's shared counter), then batch servers for the batching stages and
        FIFO servers (of their own, as on the SimPy path) for the rest."""
        rq = round_robin_queues(a_all, q_all, servers)
        gid = {}
        group = np.concatenate([np.full(len(p[3]), gid.setdefault(sp.group, len(gid)) if sp else -1)
                                for p, sp in zip(parts, specs)])
        spec_of = [None] * len(gid)
        for sp in specs:
            if sp is not None:
                spec_of[gid[sp.group]] = sp
        dep = np.empty(len(a_all))
        inb = group >= 0
        d_b, (bq, bstart, bsvc, bsize) = batch_departures(a_all[inb], s_all[inb], rq[inb], group[inb], spec_of)
        dep[inb] = d_b
        if (~inb).any():
            dep[~inb] = fifo_departures(a_all[~inb], s_all[~inb], rq[~inb], 1, with_queue=False)[0]
        b = busy.setdefault(resource_label(st0), Busy(world.instance_count(st0), servers))
        b.add(bq // max(servers, 1), bstart, bsvc)
        if (~inb).any():
            b.add(q_all[~inb], dep[~inb] - s_all[~inb], s_all[~inb])
        sizes.setdefault(st0.site, []).extend(bsize.tolist())
        return dep

    for members, cyclic in groups:
        if not cyclic:
            solve(members[0])
            continue
        stages = [(ji, si) for r in members for ji, si in visits_of[r]]
        if any(world.windows_for(journeys[ji].stages[si]) for ji, si in stages):
            raise FastPathUnsupported("outages on resources that requests come back to")
        solve_cycle(world, journeys, arrivals, draws, done, stages, busy, batching, sizes)
    for ji in range(len(journeys)):
        for si in range(len(journeys[ji].stages)):
            done[ji][si][failed[ji]] = np.nan
    return EngineResult("fast", done, failed, rerouted, delayed, busy, events=sum(n_req), batch_sizes=sizes)

