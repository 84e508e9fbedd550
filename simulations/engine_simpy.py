"""SimPy event model: every request a process, every site instance a FIFO resource, links included.

The general path: it also runs networks the fast path cannot (a request coming back to a site it
left, shared-queue dispatch over replicas), and it is the reference the fast path is checked
against. It reads the same pre-drawn world (simulations.world) as the fast path, so on the same
scenario both replay the same sample path.

Per stage: wait for its predecessors (parallel branches are separate processes), skip when the
request's fan-out gave it nothing to do, find the instance (mobility), apply outages (fail,
reroute, wait), queue FIFO for a server of that instance (round-robin over replicas, or one
shared queue with `dispatch="shared"`), hold it for the service time, then the link's one-way
delay. A FIFO queue with non-preemptive service is kept as each server's next-free time (the
Kiefer-Wolfowitz workload vector for a shared queue), updated when a job joins it in event order:
exactly what a SimPy Resource would do, with one event per visit instead of three. Queues are
created on first use, but cost per request still grows with the fleet (measured x1.6 in CPU time
from 1,000 to 10,000 devices: more requests in flight deepen SimPy's event heap and spread the
queue tables over more memory); the fast path's does not (benchmarks/simulate.py). With every site on one
host (`colocate`), compute jobs hold real SimPy resources instead: their site's server, then one
of the host's cores (a job needs both, so the next-free shortcut no longer holds).

Batching stages (simulations.batching) queue at a `_BatchQueue` per server (per instance with
`dispatch="shared"`): the oldest waiting request's group runs once `max_batch` of it wait or it
has waited `max_wait_ms`, as one job of `ratio[b] x` the members' mean time. With
`link_sharing="fair"` a link direction is a `_SharedLink`: transfers in flight share its rate
equally (processor sharing) instead of going one at a time.
"""

from __future__ import annotations

import heapq
from typing import Callable

import numpy as np
import simpy

from tierplan.simulations.batching import BatchStage, batch_ms, next_batch, stage_key
from tierplan.simulations.engine_common import Busy, Requests, WindowResult, resource_label
from tierplan.simulations.journey import Journey
from tierplan.simulations.world import World

__all__ = ["run_simpy"]


class _Failed:
    """Marker value of a stage whose request failed."""


_FAILED = _Failed()
# Times closer than this (ms) are the same instant: float sums of waits and shares drift by ulps.
_EPS_MS = 1e-9


class _BatchQueue:
    """`servers` batch servers fed by one queue, run as the runtime's batching thread does.

    A server that is free takes the oldest waiting request and up to max_batch - 1 later ones of
    its group once max_batch of them wait or the oldest has waited max_wait_ms; otherwise a timer
    looks again when the oldest's wait runs out. Each member's event gets (start, batch time, size,
    whether it is the batch's first member)."""

    def __init__(self, env: simpy.Environment, servers: int, host: simpy.Resource | None) -> None:
        self.env, self.free, self.host = env, servers, host
        self.waiting: list[tuple[BatchStage, float, float, simpy.Event]] = []
        self.armed: set[float] = set()

    def join(self, spec: BatchStage, svc_ms: float) -> simpy.Event:
        ev = self.env.event()
        self.waiting.append((spec, svc_ms, self.env.now, ev))
        self._poke()
        return ev

    def _poke(self, _ev=None) -> None:
        env = self.env
        while self.free > 0 and self.waiting:
            head = self.waiting[0][0]
            same, due = next_batch(self.waiting, env.now)
            if same is None:
                if due not in self.armed:
                    self.armed.add(due)
                    env.timeout(due - env.now).callbacks.append(self._timer(due))
                return
            members = [self.waiting[k] for k in same]
            taken = set(same)
            self.waiting = [w for k, w in enumerate(self.waiting) if k not in taken]
            self.free -= 1
            env.process(self._serve(members, batch_ms(head, (m[1] for m in members))))

    def _timer(self, due: float) -> Callable[[simpy.Event], None]:
        """The callback of the timer armed for `due`: disarm it and look at the queue again."""
        def fire(_ev: simpy.Event) -> None:
            self.armed.discard(due)
            self._poke()
        return fire

    def _serve(self, members, svc: float):
        if self.host is not None:  # every site on one host: the batch also needs one of its cores
            with self.host.request() as got_core:
                yield got_core
                start = self.env.now
                yield self.env.timeout(svc)
        else:
            start = self.env.now
            yield self.env.timeout(svc)
        self.free += 1
        for k, m in enumerate(members):
            m[3].succeed((start, svc, len(members), k == 0))
        self._poke()


class _SharedLink:
    """A link direction whose transfers in flight share its rate equally (processor sharing);
    with c lanes each of n transfers gets min(1, c / n) of the full rate."""

    def __init__(self, env: simpy.Environment, lanes: int = 1) -> None:
        self.env, self.lanes = env, lanes
        self.jobs: dict[int, list] = {}   # id -> [full-rate ms left, event]
        self.last = 0.0
        self.version = 0
        self.next_id = 0

    def _share(self) -> float:
        return min(1.0, self.lanes / len(self.jobs)) if self.jobs else 1.0

    def _advance(self) -> None:
        dt = self.env.now - self.last
        if dt > 0 and self.jobs:
            done = dt * self._share()
            for job in self.jobs.values():
                job[0] -= done
        self.last = self.env.now

    def join(self, svc_ms: float) -> simpy.Event:
        self._advance()
        ev = self.env.event()
        self.jobs[self.next_id] = [svc_ms, ev]
        self.next_id += 1
        self._schedule()
        return ev

    def _schedule(self) -> None:
        self.version += 1
        if not self.jobs:
            return
        left = min(job[0] for job in self.jobs.values())
        wait = max(0.0, left / self._share())
        version = self.version
        self.env.timeout(wait).callbacks.append(lambda _ev: self._fire(version))

    def _fire(self, version: int) -> None:
        if version != self.version:
            return
        self._advance()
        left = min(job[0] for job in self.jobs.values())
        for k in [k for k, job in self.jobs.items() if job[0] <= left + _EPS_MS]:
            self.jobs.pop(k)[1].succeed(self.env.now)
        self._schedule()


def run_simpy(world: World, journeys: list[Journey], reqs: list[Requests], dispatch: str = "round_robin",
              batching: dict[tuple, BatchStage] | None = None, link_sharing: str = "fifo") -> WindowResult:
    """Simulate every journey's requests to completion as SimPy processes (completion times go into
    `reqs[..].done`, outcomes into their flags).

    batching: simulations.batching.batch_stages' result (stages not in it run one at a time);
    link_sharing: "fifo" (one transfer at a time per link direction) or "fair" (rate shared)."""
    env = simpy.Environment()
    arrivals = [r.arr for r in reqs]
    draws = [r.draws for r in reqs]
    n_req = [len(a.t_ms) for a in arrivals]
    done = [r.done for r in reqs]
    failed = [r.failed for r in reqs]
    rerouted = [r.rerouted for r in reqs]
    delayed = [r.delayed for r in reqs]
    # every site on one host: its cores, and each site server as a SimPy resource (a job holds both)
    host = simpy.Resource(env, capacity=world.host_cores) if world.host_cores is not None else None
    held: dict = {}
    free: dict = {}  # queue -> when its server is next free (a heap of servers with dispatch="shared")
    rr: dict[tuple, int] = {}
    rec: dict[str, tuple[list, list, list]] = {}
    meta: dict[str, tuple[int, int]] = {}
    windows = {(ji, st.index): world.windows_for(st) for ji, j in enumerate(journeys) for st in j.stages}
    handover = {(ji, st.index): world.hands_over(st, j.origin) for ji, j in enumerate(journeys) for st in j.stages}
    batching = batching or {}
    batch_of = {(ji, st.index): batching.get(stage_key(st)) for ji, j in enumerate(journeys)
                for st in j.stages if st.kind == "compute"}
    bqueues: dict = {}
    links: dict = {}
    sizes: dict[str, list[int]] = {}
    # plain Python lists for the per-event lookups (numpy scalar indexing is slow in a hot loop)
    t_list = [a.t_ms.tolist() for a in arrivals]
    dev_list = [a.device.tolist() for a in arrivals]
    work = [[w.tolist() for w in d.work] for d in draws]
    runs = [[None if r is None else r.tolist() for r in d.runs] for d in draws]
    delay = [[None if x is None else x.tolist() for x in d.delay_ms] for d in draws]

    def stage(ji, i, si):
        j = journeys[ji]
        st = j.stages[si]
        if runs[ji][si] is not None and not runs[ji][si][i]:
            done[ji][si][i] = env.now
            return
        t = env.now
        inst = world.stage_instance1(st, j.origin, dev_list[ji][i], t)
        if handover[(ji, si)] and inst != world.stage_instance1(st, j.origin, dev_list[ji][i], t, handover=False):
            rerouted[ji][i] = True
        win = windows[(ji, si)]
        if win:
            fo = world.apply_failures(st, win, np.array([inst]), np.array([t]))
            if fo.failed[0]:
                failed[ji][i] = True
                return _FAILED
            rerouted[ji][i] |= bool(fo.rerouted[0])
            delayed[ji][i] |= bool(fo.delayed[0])
            inst = int(fo.inst[0])
            if fo.t_ms[0] > t:
                yield env.timeout(float(fo.t_ms[0]) - t)
                t = env.now
        w = work[ji][si][i]
        svc = w if st.kind == "compute" else float(world.transfer_ms(st, w, float(t)))
        servers = world.servers(st)
        label = resource_label(st)
        if label not in rec:
            rec[label] = ([], [], [])
            meta[label] = (world.instance_count(st), servers)
        key = (st.resource, inst)
        first = True
        bspec = batch_of.get((ji, si))
        if bspec is not None:  # dynamic batching: wait for the batch, run with it
            if dispatch == "shared":
                bkey, cap = key, servers
            else:
                k = rr.get(key, 0)
                rr[key] = k + 1
                bkey, cap = (key, k % servers), 1
            bq = bqueues.get(bkey)
            if bq is None:
                bq = bqueues[bkey] = _BatchQueue(env, cap, host)
            start, svc, size, first = yield bq.join(bspec, svc)
            if first:
                sizes.setdefault(st.site, []).append(size)
        elif st.kind == "link" and link_sharing == "fair":  # transfers in flight share the rate
            sl = links.get(key)
            if sl is None:
                sl = links[key] = _SharedLink(env, servers)
            start = t
            yield sl.join(svc)
        elif host is not None and st.kind == "compute":
            # every site on one host: the job holds its site's server (FIFO), then waits for one of
            # the host's cores (FIFO across all sites), computes, and releases both
            if dispatch == "shared":
                skey, cap = key, servers
            else:
                k = rr.get(key, 0)
                rr[key] = k + 1
                skey, cap = (key, k % servers), 1
            site_res = held.get(skey)
            if site_res is None:
                site_res = held[skey] = simpy.Resource(env, capacity=cap)
            with site_res.request() as got_server:
                yield got_server
                with host.request() as got_core:
                    yield got_core
                    start = env.now
                    yield env.timeout(svc)
        elif dispatch == "shared":  # c servers, one FIFO queue: the job takes the earliest-free server
            heap = free.get(key)
            if heap is None:
                heap = free[key] = [0.0] * servers
            start = max(t, heapq.heappop(heap))
            heapq.heappush(heap, start + svc)
            yield env.timeout(start + svc - t)
        else:  # round-robin over replicas, each a FIFO server
            k = rr.get(key, 0)
            rr[key] = k + 1
            pk = (key, k % servers)
            start = max(t, free.get(pk, 0.0))
            free[pk] = start + svc
            yield env.timeout(start + svc - t)
        if first:  # a batch occupies its server once, whatever its size
            r = rec[label]
            r[0].append(inst)
            r[1].append(start)
            r[2].append(svc)
        dl = delay[ji][si]
        if dl is not None and dl[i] > 0:
            yield env.timeout(dl[i])
        done[ji][si][i] = env.now

    def request_chain(ji, i):
        for si in range(len(journeys[ji].stages)):
            out = yield from stage(ji, i, si)
            if out is _FAILED:
                return

    def request_dag(ji, i):
        procs = []
        for st in journeys[ji].stages:
            procs.append(env.process(dag_stage(ji, i, st.index, [procs[p] for p in st.preds])))
        yield env.all_of(procs)

    def dag_stage(ji, i, si, preds):
        if preds:
            res = yield env.all_of(preds)
            if any(v is _FAILED for v in res.values()):
                return _FAILED
        out = yield from stage(ji, i, si)
        return out

    def source(ji):
        body = request_chain if journeys[ji].is_chain else request_dag
        for i, t in enumerate(t_list[ji]):
            if t > env.now:
                yield env.timeout(t - env.now)
            env.process(body(ji, i))

    for ji in range(len(journeys)):
        if n_req[ji]:
            env.process(source(ji))
    env.run()
    busy = {}
    for label, (q, s, v) in rec.items():
        b = Busy(*meta[label])
        b.add(np.array(q, dtype=np.int64), np.array(s), np.array(v))
        busy[label] = b
    for ji in range(len(journeys)):
        for si in range(len(journeys[ji].stages)):
            done[ji][si][failed[ji]] = np.nan
    return WindowResult("simpy", busy, batch_sizes=sizes)
