"""The deployed service: controller, result collector, health loop, client API and gRPC front door.

The controller runs in the deploying process. It knows where each site's stage worker listens
(workers register on every start), pushes the plan and peer table to them (`Configure`), checks
their health every `health_interval_s`, and collects sink results keyed by request id.

Request lifecycle: `predict` gives the request an id and a deadline, delivers each source's
tensor to the site that hosts the source, and waits. Results arrive from the sites that run the
last pieces (over the emulated route to the sink's site). A request ends exactly once: with its
results, with the first error a site reports (a failed piece, a hop not delivered before the
deadline), with "site X went down" when the health loop loses a site it was using, or with
"deadline exceeded" when the deadline passes; it never hangs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, start_http_server

from tierplan.planner.plan import Plan
from tierplan.runtime.fleetrun import ClassRun, split_node
from tierplan.runtime.graph import SINK_PREFIX, ExecGraph, branch_weight
from tierplan.runtime.links import LinkEmulator
from tierplan.runtime.metrics import Counter, Histogram  # cheap per-request updates, same exposition
from tierplan.runtime.localwire import LocalServer
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.proto import runtime_pb2_grpc as pbg
from tierplan.runtime.security import TlsConfig, TokenInterceptor, channel, peer_name, server_credentials
from tierplan.runtime.shm import ShmReader, sweep_stale
from tierplan.runtime.options import StageOptions
from tierplan.runtime.transport import Sender, delivery_handlers, parsed, pick_address, rotating
from tierplan.runtime.wire import (GRPC_OPTIONS, MAX_DEADLINE_AHEAD_MS, RAW_CONTROL_METHOD, RAW_CONTROL_ONE_METHOD, Delivery,
                          WireError, frames_to_delivery, pb_to_tensor, tensor_to_pb)
from tierplan.errors import InputError, RuntimeFault

if TYPE_CHECKING:
    from tierplan.runtime.cluster import LocalCluster   # for the type only: a service runs without one too

__all__ = ["Service", "Trace", "SiteState", "slot_key", "MAX_REPLICA_RETRIES"]

log = logging.getLogger("tierplan.runtime")

_HEALTH_TIMEOUT_S = 1.0
_CONFIGURE_TIMEOUT_S = 120.0
MAX_REPLICA_RETRIES = 1   # a request is started again on another replica at most this often
_LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class Trace:
    """What one request went through: end-to-end latency and its compute/transfer steps."""

    request_id: str
    latency_ms: float
    steps: list = field(default_factory=list)   # [kind, name, ms]
    device_class: str | None = None             # the edge class whose request it was (fleet deployments)


@dataclass
class SiteState:
    """The controller's view of one site's worker."""

    site: str
    address: str = ""
    up: bool = False
    replica: int = 0
    configured_generation: int = -1
    pid: int = 0
    metrics_address: str = ""
    last_seen_s: float = 0.0
    error: str = ""
    queue_sum: float = 0.0      # the worker's queue depth summed over the health checks since `reset_queues`
    queue_checks: int = 0


def _sink_name(sink: str) -> str:
    return sink[len(SINK_PREFIX):] if sink.startswith(SINK_PREFIX) else sink


def _generation(node: str) -> str:
    """The generation prefix of an executable node id (`g2~`; "" for the deployment's first plan)."""
    head, sep, _ = node.partition("~")
    return head + sep if sep and head[:1] == "g" and head[1:].isdigit() else ""


def slot_key(site: str, replica: int) -> str:
    """The controller's key of one worker: the site's name for replica 0, `site#k` for the others."""
    return site if replica == 0 else f"{site}#{replica}"


class _Pending:
    """One request in flight: the sinks it waits for and what has arrived."""

    def __init__(self, rid: str, sinks: list[str], deadline_s: float) -> None:
        self.rid = rid
        self.attempt_rid = rid          # the id of its latest attempt (a retry on a replica gets a new one)
        self.attempts = 1
        self.feeds: dict[str, dict[str, np.ndarray]] = {}
        self.device_class: str | None = None
        self.prefix = ""                # the generation's node prefix it runs on (runtime.livemove)
        self.deadline_s = deadline_s
        self.t0 = time.perf_counter()
        self.items: dict[str, dict[str, dict | None]] = {s: {} for s in sinks}
        self.weight: dict[str, Fraction | int] = {s: 0 for s in sinks}
        self.steps: list = []
        self._seen: set[tuple] = set()  # steps already in `steps` (joins and fan-out items repeat their past)
        self.error = ""
        self.latency_ms = 0.0
        self.done = threading.Event()
        self.lock = threading.Lock()
        self._callbacks: list[Callable[["_Pending"], None]] = []

    def on_done(self, fn: Callable[["_Pending"], None]) -> None:
        """Call fn(self) once the request ends (at once when it has): on the thread that ends it, so fn
        must be quick and must not block (Service.predict_async resolves a Future with it)."""
        with self.lock:
            if not self.done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _fire(self) -> None:
        for fn in self._callbacks:
            try:
                fn(self)
            except Exception:   # a caller's callback must not break the thread that delivers results
                log.exception("request %s: a done-callback failed", self.rid)
        self._callbacks = []

    def add(self, d: Delivery) -> None:
        with self.lock:
            if self.done.is_set() or d.dst not in self.items or d.branch in self.items[d.dst]:
                return    # late, unknown, or a branch an earlier attempt already delivered
            self.items[d.dst][d.branch] = None if d.empty else d.tensors
            self.weight[d.dst] += branch_weight(d.branch) if d.branch else 1
            # each step once: a join's trace holds its inputs' traces one after another, so their common
            # past comes twice even in the first result, and a fan-out's results repeat theirs (the run
            # report and the simulator's calibration count every step: a repeat would count as work)
            seen, steps = self._seen, self.steps
            for step in d.trace:
                key = (step[0], step[1], step[2])
                if key not in seen:
                    seen.add(key)
                    steps.append(step)
            if not all(w >= 1 for w in self.weight.values()):
                return
            self._finish()
        if self._callbacks:
            self._fire()

    def fail(self, message: str) -> None:
        with self.lock:
            if self.done.is_set():
                return
            self.error = message
            self._finish()
        if self._callbacks:
            self._fire()

    def _finish(self) -> None:
        self.latency_ms = (time.perf_counter() - self.t0) * 1e3
        self.done.set()

    def outputs(self) -> dict[str, Any]:
        """sink name -> its tensors (a list of them when a fan-out feeds the sink)."""
        out: dict[str, Any] = {}
        for sink, got in self.items.items():
            name = sink[len(SINK_PREFIX):] if sink.startswith(SINK_PREFIX) else sink
            if list(got) == [""]:
                out[name] = got[""] if got[""] is not None else []   # an empty fan-out: no items
                continue

            def order(branch: str) -> tuple:
                return tuple(int(p.split("/")[0]) for p in branch.split(".") if p)
            out[name] = [got[b] for b in sorted(got, key=order) if got[b] is not None]
        return out


class _Control(pbg.ControlServicer):
    def __init__(self, service: "Service") -> None:
        self.s = service

    def Deliver(self, request_iterator, context) -> pb.Ack:
        return self.deliver_raw(parsed(frames_to_delivery, request_iterator, context), context)

    def DeliverBundle(self, request: pb.Bundle, context) -> pb.Ack:
        return self.Deliver(iter(request.frames), context)

    def deliver_raw(self, d: Delivery, context) -> pb.Ack:
        """A result (a sink's tensors from a node of the plan) or a request's error, in any form (runtime.wire)."""
        kinds = self.s.graph.kinds
        if not d.error and (kinds.get(d.dst) != "sink" or d.src not in kinds):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a result goes from a node of the plan to a sink, not {d.src[:64]!r} -> {d.dst[:64]!r}")
        self.s._on_result(d)
        return pb.Ack(ok=True)

    def Register(self, request: pb.RegisterRequest, context) -> pb.Ack:
        if self.s.tls is not None and peer_name(context) != request.site:   # a site speaks for itself only
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"Register for site {request.site!r} needs that site's certificate")
        st = self.s.sites.get(slot_key(request.site, request.replica))
        if st is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"this deployment has no site {request.site[:64]!r} "
                                                     f"replica {request.replica}")
            return pb.Ack(ok=False)   # not reached: abort raises
        if request.address != st.address:   # a (re)started worker: it must answer there as that site
            why = _not_the_worker(request.address, st, request.pid, self.s.tls)
            if why:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"Register site {request.site!r} at {request.address[:80]!r}: {why}")
        self.s._on_register(request.site, request.address, request.pid, request.replica)
        return pb.Ack(ok=True)


def _not_the_worker(address: str, st: SiteState, pid: int, tls: TlsConfig | None) -> str:
    """Why `address` is not the worker of `st`'s site and replica (its Health says so), or ""."""
    host, _, port = address.rpartition(":")
    if not host or len(address) > 300 or not port.isdigit() or not 0 < int(port) < 65536:
        return "not a host:port address"
    ch = channel(address, tls, GRPC_OPTIONS)
    try:
        h = pbg.StageStub(ch).Health(pb.HealthRequest(), timeout=_HEALTH_TIMEOUT_S)
    except grpc.RpcError as e:
        return f"no worker answers there ({e.code().name})"
    finally:
        ch.close()
    if h.site != st.site or h.replica != st.replica or (pid and h.pid != pid):
        return f"the worker there is site {h.site!r} replica {h.replica} pid {h.pid}"
    return ""


class _FrontDoor(pbg.FrontDoorServicer):
    def __init__(self, service: "Service") -> None:
        self.s = service

    def Predict(self, request: pb.PredictRequest, context) -> pb.PredictReply:
        try:
            inputs = {k: pb_to_tensor(t) for k, t in request.inputs.items()}
        except WireError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"predict: {e}")
        if not (math.isfinite(request.timeout_ms) and 0 <= request.timeout_ms <= MAX_DEADLINE_AHEAD_MS):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"predict: timeout_ms must be in [0, {MAX_DEADLINE_AHEAD_MS:.0f}] "
                                                            f"(0: the service's default), got {request.timeout_ms}")
        try:
            outs, trace = self.s.predict_traced(inputs, timeout_s=request.timeout_ms / 1e3 or None)
        except (RuntimeFault, InputError) as e:
            return pb.PredictReply(error=str(e))
        reply = pb.PredictReply(latency_ms=trace.latency_ms, request_id=trace.request_id)
        for sink, val in outs.items():
            items = val if isinstance(val, list) else [val]
            reply.outputs[sink].items.extend(
                pb.SinkResult(tensors=[tensor_to_pb(k, v) for k, v in item.items()]) for item in items)
        return reply

    def Health(self, request, context) -> pb.HealthReply:
        ok = all(st.up for st in self.s.sites.values())
        return pb.HealthReply(site="front-door", configured=ok, generation=self.s.generation,
                              metrics_address=self.s.metrics_address)


class Service:
    """A running deployment of a plan (context manager: leaving it tears everything down).

    `launchers` start and stop the site workers (Ray actors, agent processes); the service only
    needs each worker to register its address with the controller.
    """

    def __init__(self, plan: Plan, *, routes: dict[str, list[dict]] | None = None,
                 files: Mapping[str, pb.PieceFile] | None = None, options: StageOptions | None = None,
                 tls: TlsConfig | None = None, request_timeout_s: float = 30.0,
                 health_interval_s: float = 0.3, listen_host: str = "127.0.0.1",
                 replicas: Mapping[str, int] | None = None, fleet_run: ClassRun | None = None) -> None:
        self.plan = plan
        self.fleet_run = fleet_run      # the device classes that run and their nodes (runtime.fleetrun)
        self.graph = ExecGraph.from_plan(plan)
        self.routes = dict(routes or {})
        self.files = dict(files or {})
        self.options = options or StageOptions()
        self.tls = tls
        self.request_timeout_s = request_timeout_s
        self.health_interval_s = health_interval_s
        self.listen_host = listen_host
        # workers per site (replicas: any of them takes a delivery; a request whose worker dies is
        # retried once on the others, within its deadline)
        self.replicas = {s: max(1, int((replicas or {}).get(s, 1))) for s in self.graph.used_sites()}
        self.sites: dict[str, SiteState] = {slot_key(s, k): SiteState(s, replica=k)
                                            for s in self.graph.used_sites() for k in range(self.replicas[s])}
        self.generation = 1
        self.node_prefix = ""           # new requests run on the nodes with this prefix (runtime.livemove)
        self.switches: list[dict] = []  # live moves to a new plan, as runtime.livemove reports them
        self.observers: list[Callable[[Trace], None]] = []   # called with every successful request's trace
        self.address = ""               # controller (results, registrations)
        self.front_door_address = ""
        self.metrics_address = ""
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sender = Sender("controller", tls, lambda: LinkEmulator(), shm=self.options.shm)
        self._shm_reader = ShmReader()
        self._pool = futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="svc")
        self._servers: list[grpc.Server] = []
        self._closers: list[Callable[[], None]] = []
        self._ids = itertools.count()
        # request ids: a random part (not guessable from the counter) without a getrandom call per request
        self._id_bits = random.Random(os.urandom(16)).getrandbits
        self._emulator = LinkEmulator(self.routes, shared_dir=self.options.links_shared_dir or None)
        self._registry = CollectorRegistry()
        self._latency = Histogram("tierplan_request_latency_seconds", "End-to-end latency per request",
                                  registry=self._registry, buckets=_LATENCY_BUCKETS_S)
        self._requests = Counter("tierplan_requests_total", "Requests by outcome", ["status"],
                                 registry=self._registry)
        self._requests_ok = self._requests.labels("ok")        # children cached: one update per request
        self._requests_error = self._requests.labels("error")
        self._health_thread: threading.Thread | None = None
        self._configure_lock = threading.Lock()
        self.agents: dict[str, Any] = {}      # edge site -> AgentProcess (local deployments)
        self.actors: dict[str, Any] = {}      # Ray site -> actor handle
        self.cluster: LocalCluster | None = None   # when the deployment uses one
        self._needed_sites: dict[tuple[str, ...], set[str]] = {}
        self._sinks_of: dict[tuple[str, ...], list[str]] = {}   # sources fed -> the sinks they reach
        self._sinks_graph = self.graph                           # the graph `_sinks_of` was worked out on

    # ------------------------------------------------------------------ lifecycle
    def _server(self) -> grpc.Server:
        interceptors = [TokenInterceptor(self.tls.token)] if self.tls else []
        srv = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="ctl"),
                          options=GRPC_OPTIONS, interceptors=interceptors)
        self._servers.append(srv)
        return srv

    def _bind(self, srv: grpc.Server, listen: str) -> int:
        port = srv.add_secure_port(listen, server_credentials(self.tls)) if self.tls else srv.add_insecure_port(listen)
        if port == 0:
            raise InputError(f"cannot listen on {listen}. To fix: choose a free port")
        return port

    def start_controller(self, metrics_port: int = 0) -> str:
        """Start the controller's gRPC server and metrics endpoint (on loopback, `metrics_port` or a
        free port when 0); returns its address."""
        srv = self._server()
        control = _Control(self)
        pbg.add_ControlServicer_to_server(control, srv)
        srv.add_generic_rpc_handlers(delivery_handlers(RAW_CONTROL_METHOD, RAW_CONTROL_ONE_METHOD, control.deliver_raw,
                                                       self._shm_reader))
        port = self._bind(srv, f"{self.listen_host}:0")
        srv.start()
        self.address = f"{self.listen_host}:{port}"
        if self.tls is None and self.options.shm:   # results from same-host sites (runtime.localwire)
            local = LocalServer(self.address, control.deliver_raw, self._shm_reader)
            if local.start():
                self._closers.append(local.stop)
        try:
            http, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=self._registry)
        except OSError as e:
            raise InputError(f"--metrics-port: cannot serve the controller's metrics on 127.0.0.1:{metrics_port} "
                             f"({e.strerror or e}). To fix: choose a free base port") from None
        def close_http() -> None:
            http.shutdown()
            http.server_close()
        self._closers.append(close_http)
        self.metrics_address = f"127.0.0.1:{http.server_port}"
        return self.address

    def add_closer(self, fn: Callable[[], None]) -> None:
        """Run `fn` at close (in reverse order of registration): stops launchers' processes."""
        self._closers.append(fn)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until every site has registered, been configured and answers health checks."""
        deadline = time.time() + timeout_s
        if self._health_thread is None:
            self._health_thread = threading.Thread(target=self._health_loop, name="health", daemon=True)
            self._health_thread.start()
        while time.time() < deadline:
            self._check_all()
            if all(st.up and st.configured_generation == self.generation for st in self.sites.values()):
                return
            time.sleep(0.05)
        bad = {s: (st.error or ("not registered" if not st.address else "not configured"))
               for s, st in self.sites.items() if not st.up or st.configured_generation != self.generation}
        raise RuntimeFault(f"sites not ready after {timeout_s:.0f} s: {bad}")

    def serve_front_door(self, listen: str = "127.0.0.1:0") -> str:
        """Start the FrontDoor gRPC service (runtime.proto) for clients in any language."""
        srv = self._server()
        pbg.add_FrontDoorServicer_to_server(_FrontDoor(self), srv)
        port = self._bind(srv, listen)
        srv.start()
        self.front_door_address = f"{listen.rsplit(':', 1)[0]}:{port}"
        return self.front_door_address

    def close(self) -> None:
        """Fail what is in flight, stop workers (launchers), servers and threads."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self._lock:
            pending = list(self._pending.values())
        for p in pending:
            p.fail(f"request {p.rid}: the service was shut down")
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception as e:  # keep tearing down the rest; say what failed
                log.warning("teardown step failed: %s", e)
        for srv in self._servers:
            srv.stop(grace=0.2).wait()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sender.close()
        self._shm_reader.close()
        if self._health_thread is not None:
            self._health_thread.join(timeout=2)
        sweep_stale()   # segments of site workers that were killed rather than stopped

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ sites
    def _on_register(self, site: str, address: str, pid: int, replica: int = 0) -> None:
        st = self.sites.get(slot_key(site, replica))
        if st is None:
            return
        with self._lock:
            if st.address != address:
                st.address = address
                st.up = False
                self.generation += 1      # peers changed: everyone gets the new table
            st.pid = pid
        if not self._stop.is_set():
            self._pool.submit(self._check_all)

    def set_address(self, site: str, address: str) -> None:
        """Point the controller at a worker it did not start (an agent on another host)."""
        self._on_register(site, address, 0)

    def _configure_request(self, site: str, generation: int) -> pb.ConfigureRequest:
        nodes = set(self.graph.nodes_on(site))
        return pb.ConfigureRequest(
            site=site, plan_json=self.plan.model_dump_json(), generation=generation,
            peers=self._peers(),
            collector=self.address, links_json=json.dumps(self.routes),
            files=[f for n, f in self.files.items() if n in nodes],
            options_json=self.options.to_json())

    def _peers(self) -> dict[str, str]:
        """site -> its workers' addresses, comma-separated (one address without replicas)."""
        out: dict[str, list[str]] = {}
        for st in self.sites.values():
            if st.address:
                out.setdefault(st.site, []).append(st.address)
        return {s: ",".join(a) for s, a in out.items()}

    def _live(self, site: str) -> str:
        """The addresses of a site's workers that are up (all known ones if none is), comma-separated."""
        slots = [st for st in self.sites.values() if st.site == site and st.address]
        return ",".join(st.address for st in (slots if not any(st.up for st in slots) else
                                              [st for st in slots if st.up]))

    def _check_all(self) -> None:
        with self._configure_lock:
            for st in list(self.sites.values()):
                self._check(st)

    def _check(self, st: SiteState) -> None:
        if not st.address:
            return
        stub = self._sender.stub(st.address)
        try:
            h = stub.Health(pb.HealthRequest(), timeout=_HEALTH_TIMEOUT_S)
        except grpc.RpcError as e:
            if st.up:
                st.up = False
                who = f"site {st.site!r}" + (f" (replica {st.replica})" if self.replicas[st.site] > 1 else "")
                st.error = f"{who} went down ({e.code().name})"
                if any(o.up for o in self.sites.values() if o.site == st.site):
                    self._retry_elsewhere(st.site, st.error)
                else:
                    self._fail_site(st.site, st.error)
            st.error = st.error or f"unreachable ({e.code().name})"
            return
        generation = self.generation
        if not h.configured or h.generation != generation:
            try:
                ack = stub.Configure(self._configure_request(st.site, generation), timeout=_CONFIGURE_TIMEOUT_S)
            except grpc.RpcError as e:
                st.error = f"configure failed ({e.code().name}: {e.details()})"
                return
            if not ack.ok:
                st.error = ack.error
                st.up = False
                return
            h = stub.Health(pb.HealthRequest(), timeout=_HEALTH_TIMEOUT_S)
        st.up = True
        st.error = ""
        st.queue_sum += h.queue_depth
        st.queue_checks += 1
        st.configured_generation = h.generation
        st.pid = h.pid
        st.metrics_address = h.metrics_address
        st.last_seen_s = time.time()

    def _health_loop(self) -> None:
        while not self._stop.wait(self.health_interval_s):
            try:
                self._check_all()
                self._expire()
            except Exception as e:  # keep checking: one bad round must not stop health checks
                log.warning("health check failed: %s", e)

    def _expire(self) -> None:
        """End the requests whose deadline has passed (a blocking `wait` ends its own; a request of
        `predict_async` has nobody waiting, so this check ends it, within one health interval)."""
        now = time.time()
        with self._lock:
            late = [p for p in self._pending.values() if p.deadline_s < now and not p.done.is_set()]
        for p in late:
            p.fail(f"request {p.rid}: deadline exceeded ({self._where(p)})")

    def _needed(self, sinks: list[str]) -> set[str]:
        key = tuple(sorted(sinks))
        if key not in self._needed_sites:
            self._needed_sites[key] = self.graph.sites_upstream(list(key))
        return self._needed_sites[key]

    def _fail_site(self, site: str, message: str) -> None:
        """End the in-flight requests that need `site` (their data may have died with it)."""
        with self._lock:
            pending = list(self._pending.values())
        for p in pending:
            if site in self._needed(list(p.items)):
                p.fail(f"request {p.rid}: {message} while the request was in flight")

    def _retry_elsewhere(self, site: str, message: str) -> None:
        """A replica of `site` died: its in-flight requests (any that needed the site: which replica
        held them is not known) start again on the live replicas, once, under a new attempt id,
        within their own deadline; a request already retried ends with the error instead."""
        with self._lock:
            pending = [p for p in self._pending.values() if not p.done.is_set()]
        for p in {id(p): p for p in pending}.values():
            if site not in self._needed(list(p.items)):
                continue
            if p.attempts > MAX_REPLICA_RETRIES or time.time() >= p.deadline_s:
                p.fail(f"request {p.rid}: {message} while the request was in flight (retried {p.attempts - 1} times)")
                continue
            p.attempts += 1
            p.attempt_rid = f"{p.rid}~{p.attempts}"
            with self._lock:
                self._pending[p.attempt_rid] = p
            log.info("request %s: %s; retrying on a replica as %s", p.rid, message, p.attempt_rid)
            self._send_feeds(p, p.attempt_rid)

    def reset_queues(self) -> None:
        """Start the queue-depth averages afresh (`mean_queues`), e.g. when the measured requests start."""
        for st in self.sites.values():
            st.queue_sum, st.queue_checks = 0.0, 0

    def mean_queues(self) -> dict[str, float]:
        """Per site: deliveries waiting for its compute thread, mean over the health checks (every
        `health_interval_s`) since `reset_queues`, summed over the site's workers."""
        out: dict[str, float] = {}
        for st in self.sites.values():
            if st.queue_checks:
                out[st.site] = out.get(st.site, 0.0) + st.queue_sum / st.queue_checks
        return out

    def health(self) -> dict[str, dict]:
        """Per site: up, address, worker pid, metrics endpoint, last error."""
        return {s: {"up": st.up, "address": st.address, "pid": st.pid, "metrics": st.metrics_address,
                    "error": st.error} for s, st in self.sites.items()}

    # ------------------------------------------------------------------ requests
    def _on_result(self, d: Delivery) -> None:
        with self._lock:
            p = self._pending.get(d.request_id)
        if p is None:
            return
        if d.error:
            if d.request_id == p.attempt_rid:   # errors of a superseded attempt do not end the request
                p.fail(d.error)
            return
        src_site = self.graph.sites.get(d.src, "")
        sink_site = self.graph.sites.get(d.dst, "")
        if d.sent_unix_ms and src_site and sink_site and src_site != sink_site:
            d.trace.append(["transfer", f"{src_site}->{sink_site}", time.time() * 1e3 - d.sent_unix_ms])
        p.add(d)

    def _class_of_request(self, device_class: str | None) -> str | None:
        """The class a request runs as: `device_class`, else the first class that runs (None: one placement)."""
        run = self.fleet_run
        if run is None or not run.classes:
            if device_class is not None:
                raise InputError(f"predict: device_class={device_class!r}, but this deployment runs one placement "
                                 "(no device classes). To fix: leave device_class out")
            return None
        if device_class is None:
            return run.classes[0]
        if device_class not in run.classes:
            raise InputError(f"predict: device class {device_class!r} does not run here (running: "
                             f"{', '.join(run.classes)}). To fix: name one of those")
        return device_class

    def _source_tensors(self, inputs: Mapping[str, np.ndarray], device_class: str | None = None,
                        prefix: str = "") -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        sources = self.graph.sources()
        run = self.fleet_run
        if run is not None and run.prefixed and device_class is not None:   # the class's own copies
            names = {k: prefix + v for k, v in run.sources.get(device_class, {}).items()}
            inputs = {names.get(k, k): v for k, v in inputs.items()}
            sources = [s for s in sources if s in names.values()]
        else:   # the current generation's copies only (runtime.livemove: gK~NODE beside the old ones)
            if prefix:
                inputs = {(prefix + k if self.graph.kinds.get(prefix + k) == "source" else k): v for k, v in inputs.items()}
            sources = [s for s in sources if _generation(s) == prefix]
        for s in sources:
            out_names = self.graph.source_outputs(s)
            if s in inputs:
                out[s] = {out_names[0]: np.asarray(inputs[s])}
            elif all(n in inputs for n in out_names):
                out[s] = {n: np.asarray(inputs[n]) for n in out_names}
        if not out:
            want = ", ".join(self.graph.sources())
            raise InputError(f"predict: inputs {sorted(inputs)} name no source of the plan. To fix: pass {want}")
        return out

    def submit(self, inputs: Mapping[str, np.ndarray], timeout_s: float | None = None,
               device_class: str | None = None) -> _Pending:
        """Start one request (from a device of `device_class` in a fleet deployment: the first class
        that runs by default); returns its pending record (wait on `.done`)."""
        if self._stop.is_set():
            raise RuntimeFault("the service is shut down")
        cls = self._class_of_request(device_class)
        prefix = self.node_prefix
        feeds = self._source_tensors(inputs, cls, prefix)
        rid = f"{self._id_bits(48):012x}-{next(self._ids)}"
        deadline_s = time.time() + (timeout_s or self.request_timeout_s)
        key = tuple(feeds)
        if self._sinks_graph is not self.graph:    # a new plan's graph (runtime.livemove): start afresh
            self._sinks_of, self._sinks_graph = {}, self.graph
        sinks = self._sinks_of.get(key)
        if sinks is None:     # worked out once per set of sources (graph walks cost tens of microseconds)
            sinks = self._sinks_of[key] = self.graph.sinks_reached(list(feeds))
        p = _Pending(rid, sinks, deadline_s)
        p.device_class = cls
        p.prefix = prefix
        needed = self._needed(list(p.items))
        up = {st.site for st in self.sites.values() if st.up}
        down = sorted(needed - up)
        if down:
            errors = [st.error for st in self.sites.values() if st.site in down and st.error]
            p.fail(f"request {rid}: site(s) {', '.join(down)} down ({'; '.join(errors) or 'not ready'})")
            return p
        p.feeds = feeds
        with self._lock:
            self._pending[rid] = p
        self._send_feeds(p, rid)
        return p

    def _send_feeds(self, p: _Pending, rid: str) -> None:
        for src, tensors in p.feeds.items():
            site = self.graph.sites[src]
            d = Delivery(rid, "", src, tensors, deadline_unix_ms=p.deadline_s * 1e3)

            def resend(p: _Pending = p, d: Delivery = d, site: str = site) -> None:
                if not self._stop.is_set():
                    self._pool.submit(self._feed, p, d, site)
            # same host: sent from this thread, its ack read later (no wait, no handoff); a refusal or
            # a silent peer resends it with `_feed`'s retries
            if not self._sender.try_start(pick_address(self._live(site), rid), d, "", resend):
                resend()

    def _feed(self, p: _Pending, d: Delivery, site: str) -> None:
        err = self._sender.send(rotating(lambda: self._live(site), d.request_id), d, "", what=f"input {d.dst}")
        if err and d.request_id == p.attempt_rid:
            p.fail(err)

    def wait(self, p: _Pending) -> tuple[dict[str, Any], Trace]:
        """Block until the request ends; its outputs and trace, or RuntimeFault."""
        remaining = p.deadline_s - time.time()
        if not p.done.wait(max(remaining, 0)):
            p.fail(f"request {p.rid}: deadline exceeded ({self._where(p)})")
        with self._lock:
            self._pending.pop(p.rid, None)
            for k in range(2, p.attempts + 1):
                self._pending.pop(f"{p.rid}~{k}", None)
        if p.error:
            self._requests_error.inc()
            raise RuntimeFault(p.error)
        self._requests_ok.inc()
        self._latency.observe(p.latency_ms / 1e3)
        outs = p.outputs()
        if p.prefix:   # a later generation's sinks (runtime.livemove): named as the plan names them
            outs = {_sink_name(k[len(p.prefix):] if k.startswith(p.prefix) else k): v for k, v in outs.items()}
        if self.fleet_run is not None and self.fleet_run.prefixed and p.device_class is not None:
            plain = {exe: name for name, exe in self.fleet_run.sinks.get(p.device_class, {}).items()}
            outs = {_sink_name(plain.get(k, k)): v for k, v in outs.items()}
        trace = Trace(p.rid, p.latency_ms, list(p.steps), p.device_class)
        for fn in list(self.observers):
            fn(trace)
        return outs, trace

    def _where(self, p: _Pending) -> str:
        missing = [s for s, w in p.weight.items() if w < 1]
        return f"no result yet for {', '.join(missing)}; sites up: " + \
            ", ".join(f"{s}={'yes' if st.up else 'no'}" for s, st in self.sites.items())

    def predict_traced(self, inputs: Mapping[str, np.ndarray], timeout_s: float | None = None,
                       device_class: str | None = None):
        """One request: (outputs by sink, Trace)."""
        return self.wait(self.submit(inputs, timeout_s, device_class))

    def predict(self, inputs: Mapping[str, np.ndarray], timeout_s: float | None = None,
                device_class: str | None = None) -> dict[str, Any]:
        """One request: sink name -> {tensor: array} (a list of those for sinks fed by a fan-out).
        `device_class`: in a deployment of several device classes, the class the request comes from
        (its sources, pieces and sinks: the first class that runs by default)."""
        return self.predict_traced(inputs, timeout_s, device_class)[0]

    def predict_async(self, inputs: Mapping[str, np.ndarray], timeout_s: float | None = None,
                      device_class: str | None = None, traced: bool = False) -> futures.Future:
        """One request without a waiting thread: a Future of what `predict` returns (of `predict_traced`'s
        (outputs, Trace) with `traced`), or of its RuntimeFault. A client keeps many requests in flight
        from one thread this way (`fut.add_done_callback` starts the next); bad inputs raise here."""
        fut: futures.Future = futures.Future()
        fut.set_running_or_notify_cancel()

        def done(p: _Pending) -> None:
            try:
                outs, trace = self.wait(p)
            except Exception as e:   # RuntimeFault, or an observer's own error: the Future carries it either way
                fut.set_exception(e)
                return
            fut.set_result((outs, trace) if traced else outs)
        self.submit(inputs, timeout_s, device_class).on_done(done)
        return fut

    def predict_batch(self, inputs: Mapping[str, np.ndarray] | list[Mapping[str, np.ndarray]],
                      timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Several requests at once (cloud stages batch them): a list of inputs, or arrays whose first
        axis is the batch (each item keeps a leading axis of 1). Raises on the first failed item."""
        if isinstance(inputs, Mapping):
            sizes = {np.asarray(v).shape[0] for v in inputs.values()}
            if len(sizes) != 1:
                raise InputError(f"predict_batch: inputs disagree on the batch size {sorted(sizes)}")
            n = sizes.pop()
            items = [{k: np.asarray(v)[i:i + 1] for k, v in inputs.items()} for i in range(n)]
        else:
            items = [dict(x) for x in inputs]
        pend = [self.submit(x, timeout_s) for x in items]
        return [self.wait(p)[0] for p in pend]

    def describe(self) -> dict:
        """Addresses a user needs: controller, front door, metrics per site."""
        return {"controller": self.address, "front_door": self.front_door_address,
                "metrics": {"controller": self.metrics_address,
                            **{s: st.metrics_address for s, st in self.sites.items()}},
                "sites": self.health(), **({"fleet": self.fleet_run.to_json()} if self.fleet_run else {}),
                **({"switches": list(self.switches)} if self.switches else {})}


def files_for(plan: Plan, manifest: Mapping | None = None, base_dir: str | Path | None = None,
              manifest_root: str | Path | None = None, emulate_cross: bool = False,
              classes: tuple[str, ...] = ()) -> dict[str, pb.PieceFile]:
    """The artifact of each piece (its compile manifest entry for the piece's site if given, else the
    plan's ONNX file run with onnxruntime) with the artifact's bytes, to ship to the piece's site.

    `emulate_cross` (every site on this machine): a TVM artifact built for another CPU is replaced
    by its host build (`host_file`), since a worker loads only the bytes it is sent. `classes`: the
    device classes of a fleet deployment, whose nodes are named `CLASS/NODE` (runtime.fleetrun): each
    takes the artifact compiled for its plan node on its site."""
    by_key: dict[tuple[str, str | None], dict] = {}
    for entry in (manifest or {}).get("artifacts", []):
        piece = entry.get("piece")
        if piece and entry.get("file"):
            by_key[(piece, entry.get("site"))] = dict(entry)
    out: dict[str, pb.PieceFile] = {}
    for p in plan.pieces:
        if p.kind != "piece":
            continue
        node = split_node(p.id, classes)[1] if len(classes) > 1 else p.id
        entry = by_key.get((node, plan.assignment.get(p.id))) or by_key.get((node, None))
        if entry is not None:
            from tierplan.runtime.backends import artifact_path
            path = artifact_path(entry, manifest_root)
            if emulate_cross and entry.get("backend") == "tvm" and entry.get("host_file"):
                from tierplan.runtime.backends.tvm_backend import is_native
                if not is_native(entry.get("target") or {"kind": "llvm"}):
                    path = artifact_path({"file": entry["host_file"], "rel_file": entry.get("host_rel_file")},
                                         manifest_root)
                    entry = {**entry, "target": entry.get("host_target") or {"kind": "llvm"}, "emulated": True}
        else:
            if not p.file:
                raise InputError(f"plan: piece {p.id} has no file. To fix: re-run `tierplan plan` (pieces need files)")
            entry = {"piece": p.id, "backend": "onnxruntime", "file": p.file}
            path = Path(p.file)
            if not path.is_absolute() and base_dir is not None and not path.exists():
                path = Path(base_dir) / path
        if not path.is_file():
            raise InputError(f"plan: piece {p.id}: artifact not found {str(path)!r}. "
                             "To fix: re-run `tierplan plan` / `tierplan compile`")
        data = path.read_bytes()
        # the worker writes the bytes under a name of its own and checks them against `sha256`;
        # paths in the entry are for the record only (a worker never reads them: runtime.piececache)
        entry = {**entry, "file": str(path), "sha256": hashlib.sha256(data).hexdigest()}
        out[p.id] = pb.PieceFile(node=p.id, manifest_entry_json=json.dumps(entry), data=data, filename=path.name)
    return out
