"""A site's stage worker: hosts every node the plan places on one site and moves tensors to peers.

The same class runs inside a Ray actor (base stations, clouds) and inside `tierplan agent`
(edge hosts, no Ray). It listens on gRPC (`Stage` service in runtime.proto):

- `Configure` gives it the plan, its site name, the peer table (site -> host:port), the
  controller's address and the emulated links; it loads runners for its pieces (once).
- `Deliver` streams in the outputs of an upstream node. Compute threads (`compute_threads`, one by
  default) join the inputs of each node per (request, branch) and run nodes: consecutive nodes
  on the same site hand tensors over in memory (no hop). A delivery on the same-host socket runs
  on the connection's own thread, once taken, when a compute slot is free and nothing is queued
  (no handoff to a compute thread: one thread wake less per hop); a node runs only while holding
  one of the `compute_threads` slots, wherever it runs. A piece whose outputs all go unchanged to
  one piece on a same-host site writes them straight into shared memory (`_place`, onnxruntime
  IOBinding): the send copies no tensor bytes. Outputs for a same-host peer without
  link emulation go out from the compute thread on the Unix socket without waiting for the
  peer to take them (runtime.localwire `start_call`: streamed, no reply); any other send goes
  to a sender pool (the compute thread never waits for an ack) over a direct gRPC call, paced
  by the link emulator; sink outputs go to the controller.
- Cloud-tier sites batch requests at a node (max batch, max wait) on a batching thread when the
  runner accepts a free first dimension; otherwise queued requests still run back to back.

How a delivery travels (same-host socket, shared memory, gRPC, retries) is runtime.transport's job;
this module is the worker: joins, compute, batching and routing. Every call carries the request's
deadline as its timeout. A delivery that cannot be made before the deadline (peer down, refused)
becomes an error sent to the controller naming the hop, so a request always ends: with its results
or with a clear error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
from collections import deque
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, start_http_server

from tierplan.errors import InputError
from tierplan.planner.plan import Plan
from tierplan.runtime.graph import (DEFAULT_TRANSFORM_MODULES, ExecGraph, bind_inputs, child_branch, load_transform,
                                    select_tensors)
from tierplan.runtime.links import LinkEmulator
from tierplan.runtime.metrics import Counter, Gauge, Histogram  # cheap per-request updates, same exposition
from tierplan.runtime.localwire import LocalServer, Placed, placement
from tierplan.runtime.options import LINKS_DIR_MARKER, StageOptions, shared_links_dir  # noqa: F401 (LINKS_DIR_MARKER: re-exported)
from tierplan.runtime.piececache import DEFAULT_CACHE_LIMIT_BYTES, PieceCache, safe_entry
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.proto import runtime_pb2_grpc as pbg
from tierplan.runtime.runners import Runner, load_runner
from tierplan.runtime.security import CONTROLLER, TlsConfig, TokenInterceptor, peer_name, server_credentials
from tierplan.runtime.shm import ShmReader, is_loopback_address
from tierplan.runtime.transport import (RETRY_CODES, UNARY_MAX_BYTES, UNARY_MAX_PACED_BYTES,  # noqa: F401 (re-exported)
                                        Sender, delivery_handlers, parsed, pick_address, raw_handler, rotating)
from tierplan.runtime.wire import (CHUNK_BYTES, GRPC_OPTIONS, RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, Delivery, RawSteps,
                                   frames_to_delivery)

__all__ = ["StageWorker"]
# The transport (Sender, delivery_handlers, parsed, pick_address, rotating, RETRY_CODES, ...) lives in
# runtime.transport and StageOptions in runtime.options; both stay importable from here for old callers.

log = logging.getLogger("tierplan.runtime")

_ERROR_REPORT_TIMEOUT_S = 2.0
_NO_LOCK = contextlib.nullcontext()
_ACK_OK = pb.Ack(ok=True)    # shared: nobody changes an ack after it is made
_INLINE_MAX_MS = 50.0   # longest a node may run on a same-host connection's thread (see `_inline_ok`)
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _Metrics:
    """Prometheus metrics of one worker (its own registry, served on a loopback port)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_latency = Histogram("tierplan_stage_latency_seconds", "Compute time of a node per call",
                                       ["site", "node"], registry=self.registry, buckets=_LATENCY_BUCKETS_S)
        self.queue_depth = Gauge("tierplan_stage_queue_depth", "Deliveries waiting for the compute thread",
                                 ["site"], registry=self.registry)
        self.batch_size = Histogram("tierplan_stage_batch_size", "Requests per run of a node", ["site", "node"],
                                    registry=self.registry, buckets=(1, 2, 4, 8, 16, 32))
        self.batch_wait = Histogram("tierplan_stage_batch_wait_seconds",
                                    "Time the oldest request of a batch that did not fill waited for it to start",
                                    ["site", "node"], registry=self.registry, buckets=_LATENCY_BUCKETS_S)
        self.requests = Counter("tierplan_stage_runs_total", "Node runs by outcome", ["site", "node", "status"],
                                registry=self.registry)
        self.link_bytes = Counter("tierplan_link_bytes_sent_total", "Tensor bytes sent per link",
                                  ["link"], registry=self.registry)
        self.link_latency = Histogram("tierplan_link_transfer_seconds", "Time from send to delivery per link",
                                      ["link"], registry=self.registry, buckets=_LATENCY_BUCKETS_S)
        self.address = ""
        self._children: dict[tuple, object] = {}

    def of(self, metric: str, *labels: str):
        """The child of metric `metric` (an attribute name) for `labels`, cached: prometheus_client's
        `labels()` costs several microseconds and every request updates a handful of them."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = getattr(self, metric).labels(*labels)
        return child

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the metrics on host:port (0: a free port); InputError when that port is taken."""
        try:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise InputError(f"--metrics-port: cannot serve metrics on {host}:{port} ({e.strerror or e}). "
                             "To fix: choose a free base port (each process takes the next one)") from None
        self._server = server
        self.address = f"{host}:{server.server_port}"
        return self.address

    def close(self) -> None:
        srv = getattr(self, "_server", None)
        if srv is not None:
            srv.shutdown()
            srv.server_close()



@dataclass
class _Config:
    graph: ExecGraph
    peers: dict[str, str]
    collector: str
    emulator: LinkEmulator
    options: StageOptions
    generation: int
    nodes: list[str]
    runners: dict[str, Runner] = field(default_factory=dict)
    transforms: dict[str, Callable] = field(default_factory=dict)
    in_srcs: dict[str, frozenset[str]] = field(default_factory=dict)   # node -> the nodes feeding it
    fills: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)   # node -> `StageWorker._unfed`
    direct: dict[str, tuple | None] = field(default_factory=dict)   # node -> `StageWorker._learn`'s finding
    node_set: frozenset[str] = frozenset()     # `nodes`, for the check on every delivery

    def __post_init__(self) -> None:
        # worked out once per plan: every delivery asks
        self.in_srcs = {n: frozenset(e.src for e in es) for n, es in self.graph.in_edges.items() if es}
        self.node_set = frozenset(self.nodes)


@dataclass
class _Ready:
    node: str
    request_id: str
    branch: str
    inputs: dict[str, np.ndarray]
    deadline_unix_ms: float
    trace: list
    since_s: float


class StageWorker(pbg.StageServicer):
    """One site's worker: a gRPC server, a compute thread and a sender pool (see module doc)."""

    def __init__(self, site: str, listen: str = "127.0.0.1:0", tls: TlsConfig | None = None,
                 controller: str | None = None, cache_dir: str | None = None, replica: int = 0,
                 allow_transforms: tuple[str, ...] = DEFAULT_TRANSFORM_MODULES,
                 cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES, insecure: bool = False,
                 metrics_port: int = 0) -> None:
        """`allow_transforms`, `cache_limit_bytes` and `insecure` are the operator's (the process that
        starts the worker): nothing a peer sends can change them (see SECURITY.md). A `listen` host
        beyond loopback needs `tls` unless `insecure`. `metrics_port`: the loopback port of its
        Prometheus metrics (0: a free one)."""
        self.metrics_port = metrics_port
        self.site = site
        self.allow_transforms = tuple(allow_transforms)
        self.insecure = insecure
        self.replica = replica          # which of its site's workers this is (0 without replicas)
        self.listen = listen
        self.tls = tls
        self.controller = controller
        self.address = ""
        self._cfg: _Config | None = None
        self._cfg_lock = threading.Lock()
        self._inbox: queue.SimpleQueue[Delivery | None] = queue.SimpleQueue()
        # compute slots, one per compute thread: a node runs while holding one, on a compute thread or
        # on the same-host connection's thread that received its input (`_take`: no handoff)
        self._slots = threading.Semaphore(0)
        self._queued = 0                            # deliveries in the inbox not yet started
        self._queued_lock = threading.Lock()
        self._joins: dict[tuple[str, str, str], dict[str, Delivery]] = {}
        self._ready: deque[_Ready] = deque()      # nodes waiting for the batching thread
        self._join_lock = threading.RLock()         # joins, the batch queue, counters
        self._batch_wake = threading.Event()
        self._runner_locks: dict[int, threading.Lock] = {}
        self._compute_threads = 0
        self._runner_cache: dict[tuple[str, Path], Runner] = {}
        self._cache = PieceCache(cache_dir or tempfile.mkdtemp(prefix=f"tierplan-{site}-"), cache_limit_bytes)
        self._metrics = _Metrics()
        self._sender = Sender(site, tls, lambda: self._cfg.emulator if self._cfg else LinkEmulator(),
                              self._metrics)
        # pieces read their inputs from the segment; earlier trace steps are passed on unread (the
        # controller checks them: runtime.wire.RawSteps)
        self._shm_reader = ShmReader(in_place=True, raw_trace=True)
        self._pool = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"send-{site}")
        self._stop = threading.Event()
        self._server: grpc.Server | None = None
        self._local_server: LocalServer | None = None
        self._done = 0
        self._run_ms: dict[str, float] = {}         # node -> ms its last delivery took here (`_inline_ok`)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Start the gRPC server, metrics endpoint and compute thread; returns host:port."""
        interceptors = [TokenInterceptor(self.tls.token)] if self.tls else []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"rpc-{self.site}"),
                                   options=GRPC_OPTIONS, interceptors=interceptors)
        pbg.add_StageServicer_to_server(self, self._server)
        self._server.add_generic_rpc_handlers(delivery_handlers(RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD,
                                                                self._accept_delivery, self._shm_reader))
        host = self.listen.rsplit(":", 1)[0]
        if self.tls is None and not self.insecure and not is_loopback_address(self.listen):
            raise InputError(f"site {self.site}: listen {self.listen} beyond loopback needs TLS. "
                             "To fix: pass --tls-dir (or --insecure on a network you trust)")
        if self.tls:
            port = self._server.add_secure_port(self.listen, server_credentials(self.tls))
        else:
            port = self._server.add_insecure_port(self.listen)
        if port == 0:
            raise OSError(f"site {self.site}: cannot listen on {self.listen}")
        self._server.start()
        self.address = f"{host}:{port}"
        self._local_server = LocalServer(self.address, self._check_delivery, self._shm_reader,
                                         on_accepted=self._take)
        if self.tls is None:   # with mutual TLS every delivery stays on the authenticated channel
            self._local_server.start()
        self._metrics.serve("127.0.0.1", self.metrics_port)   # metrics stay on loopback: no TLS on that port (SECURITY.md)
        self._grow_compute(1)
        threading.Thread(target=self._batch_loop, name=f"batch-{self.site}", daemon=True).start()
        if self.controller:
            threading.Thread(target=self._register, name=f"register-{self.site}", daemon=True).start()
        return self.address

    @property
    def metrics_address(self) -> str:
        """127.0.0.1:PORT of its Prometheus metrics ("" before start)."""
        return self._metrics.address

    def stop(self) -> None:
        """Stop serving (in-flight calls get a short grace period)."""
        self._stop.set()
        for _ in range(self._compute_threads):
            self._inbox.put(None)
        self._batch_wake.set()
        if self._local_server is not None:
            self._local_server.stop()
        if self._server is not None:
            self._server.stop(grace=0.5).wait()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sender.close()
        self._shm_reader.close()
        self._metrics.close()

    def _grow_compute(self, n: int) -> None:
        """Start compute threads until there are `n` (the count never shrinks while the worker lives)."""
        with self._join_lock:
            while self._compute_threads < n and not self._stop.is_set():
                threading.Thread(target=self._compute_loop, name=f"compute-{self.site}-{self._compute_threads}",
                                 daemon=True).start()
                self._compute_threads += 1
                self._slots.release()

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def _register(self) -> None:
        """Tell the controller where this worker listens (retried while the controller starts)."""
        assert self.controller is not None   # start() runs this only for a worker that has one
        deadline = time.time() + 60
        while not self._stop.is_set() and time.time() < deadline:
            try:
                self._sender.stub(self.controller, "control").Register(
                    pb.RegisterRequest(site=self.site, address=self.address, pid=os.getpid(),
                                       replica=self.replica), timeout=2)
                return
            except grpc.RpcError:
                time.sleep(0.2)

    # ------------------------------------------------------------------ gRPC
    def Configure(self, request: pb.ConfigureRequest, context) -> pb.Ack:
        """Take the plan, peers and piece files. Nothing in the message is a path or code this worker
        honours: piece files go into its cache under names it chooses (runtime.piececache), and
        transforms load only from the operator's modules (`allow_transforms`). With TLS only the
        controller's certificate may configure a site."""
        if self.tls is not None and peer_name(context) != CONTROLLER:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"site {self.site}: Configure is accepted from the {CONTROLLER!r} certificate only")
        try:
            if request.site and request.site != self.site:
                raise ValueError(f"this worker serves site {self.site!r}, not {request.site!r}")
            plan = Plan.model_validate_json(request.plan_json)
            graph = ExecGraph.from_plan(plan)
            options = StageOptions.from_json(request.options_json)
            nodes = graph.nodes_on(self.site)
            cfg = _Config(graph=graph, peers=dict(request.peers), collector=request.collector,
                          emulator=LinkEmulator(json.loads(request.links_json or "{}"),
                                                shared_dir=shared_links_dir(options.links_shared_dir)),
                          options=options, generation=request.generation, nodes=nodes)
            files = {f.node: f for f in request.files}
            self._cache.check_sizes({f.node: len(f.data) for f in request.files})
            for node in nodes:
                kind = graph.kinds[node]
                piece = graph.nodes.get(node)
                if kind == "piece":
                    cfg.runners[node] = self._runner(node, piece, files.get(node), options)
                elif kind == "transform":
                    fn = (piece.model_extra or {}).get("function") if piece is not None else None
                    if not fn:
                        raise ValueError(f"transform {node}: the plan gives no `function`")
                    cfg.transforms[node] = load_transform(fn, self.allow_transforms, node=node)
            with self._cfg_lock:
                if self._cfg is not None and self._cfg.emulator.routes == cfg.emulator.routes and \
                        self._cfg.emulator.shared_dir == cfg.emulator.shared_dir:
                    cfg.emulator = self._cfg.emulator  # keep link reservations across reconfigures
                old, self._cfg = self._cfg, cfg
                self._sender.shm = options.shm
            if old is not None and old.emulator is not cfg.emulator:
                old.emulator.close()
            # runners the new plan does not use leave the runner cache (requests in flight keep theirs)
            kept = {id(r) for r in cfg.runners.values()}
            self._runner_cache = {k: r for k, r in self._runner_cache.items() if id(r) in kept}
            self._grow_compute(max(1, options.compute_threads))
            return pb.Ack(ok=True)
        except Exception as e:  # report any configuration problem to the controller, one line
            log.warning("site %s: configure refused: %s: %s", self.site, type(e).__name__, e)
            return pb.Ack(ok=False, error=f"site {self.site}: {type(e).__name__}: {e}")

    def _runner(self, node: str, piece, f: pb.PieceFile | None, options: StageOptions) -> Runner:
        """The runner of one piece, loaded only from a file this worker wrote into its cache."""
        if f is None or not f.data:
            raise ValueError(f"piece {node}: Configure carried no file for it (a path is never read). "
                             "To fix: deploy with the controller, which ships every piece's bytes")
        entry = json.loads(f.manifest_entry_json) if f.manifest_entry_json else {}
        if not isinstance(entry, dict):
            raise ValueError(f"piece {node}: manifest entry is not a JSON object")
        backend = str(entry.get("backend") or "onnxruntime")
        ext = self._cache.extension(node, backend, f.filename)
        path = self._cache.put(node, f.data, ext, entry.get("sha256"))
        key = (node, path)
        if key not in self._runner_cache:
            names = [i["name"] for i in (piece.inputs if piece is not None else []) if "name" in i]
            self._runner_cache[key] = load_runner(safe_entry(entry, node, backend, path), names,
                                                  threads=options.threads)
        return self._runner_cache[key]

    def Health(self, request, context) -> pb.HealthReply:
        cfg = self._cfg
        return pb.HealthReply(site=self.site, configured=cfg is not None,
                              generation=cfg.generation if cfg else 0,
                              queue_depth=self._inbox.qsize() + len(self._ready),
                              metrics_address=self._metrics.address, pid=os.getpid(), replica=self.replica,
                              requests_done=self._done)

    def DeliverBundle(self, request: pb.Bundle, context) -> pb.Ack:
        return self.Deliver(iter(request.frames), context)

    def Deliver(self, request_iterator, context) -> pb.Ack:
        return self._accept_delivery(parsed(frames_to_delivery, request_iterator, context), context)

    def _accept_delivery(self, d: Delivery, context) -> pb.Ack:
        """A delivery by gRPC: checked, then queued for a compute thread."""
        ack = self._check_delivery(d, context)
        self._enqueue(d)
        return ack

    def _check_delivery(self, d: Delivery, context) -> pb.Ack:
        """Refuse (context.abort) what the plan does not send here; note its transfer time."""
        cfg = self._cfg
        if cfg is None:  # just (re)started: UNAVAILABLE makes the sender retry until configured
            context.abort(grpc.StatusCode.UNAVAILABLE, f"site {self.site} is not configured yet")
            raise RuntimeError("context.abort returned")    # it raises: this line is never reached
        # the plan decides what may arrive here: a node of this site, from one of its inputs (a
        # source from the client: no src); anything else is refused before it reaches a join
        if d.dst not in cfg.node_set:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"node {d.dst[:64]!r} does not run on site {self.site!r} in generation {cfg.generation}")
        srcs = cfg.in_srcs.get(d.dst)
        if (d.src not in srcs) if srcs else d.src not in ("", d.dst):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node {d.dst!r} takes no input from {d.src[:64]!r}")
        src_site = cfg.graph.sites.get(d.src, "")
        if d.sent_unix_ms and not d.src:  # a source's data from the client (on a device: local)
            d.trace.append(["feed", f"client->{self.site}", time.time() * 1e3 - d.sent_unix_ms])
        elif d.sent_unix_ms and src_site and src_site != self.site:
            d.trace.append(["transfer", f"{src_site}->{self.site}", time.time() * 1e3 - d.sent_unix_ms])
        return _ACK_OK

    def _enqueue(self, d: Delivery) -> None:
        with self._queued_lock:
            self._queued += 1
        self._inbox.put(d)
        self._metrics.of("queue_depth", self.site).set(self._inbox.qsize() + len(self._ready))

    def _take(self, d: Delivery, more: bool = False) -> None:
        """A delivery the same-host socket took: run it on this thread (the connection's) when a
        compute slot is free, nothing queued came before it and its node is known to be quick
        (`_inline_ok`), else queue it. Saves waking a compute thread per hop. With `more` (the
        peer's next delivery is already here) and several compute threads it is queued too: a
        compute thread runs it while this thread takes the next, so a backlog from one peer runs
        on `compute_threads` cores, not one after another on this thread."""
        cfg = self._cfg
        if cfg is None or self._queued or (more and self._compute_threads > 1) or not self._inline_ok(d.dst) \
                or not self._slots.acquire(blocking=False):
            self._enqueue(d)
            return
        try:
            self._timed(cfg, d)
        finally:
            self._slots.release()

    def _inline_ok(self, node: str) -> bool:
        """True when deliveries to `node` may run on the connection's thread: its last run (with the
        same-site nodes it feeds) took at most _INLINE_MAX_MS. The sender's next deliveries on that
        connection wait to be taken meanwhile, and a sender gives one up after INLINE_TIMEOUT_S
        (1 s): a node not yet timed, or a slow one, goes to a compute thread, whose handoff costs
        little beside its run."""
        last = self._run_ms.get(node)
        return last is not None and last <= _INLINE_MAX_MS

    def _timed(self, cfg: _Config, d: Delivery) -> None:
        """`_process`, noting how long the delivery's node took (for `_inline_ok`)."""
        t0 = time.perf_counter()
        self._process(cfg, d)
        self._run_ms[d.dst] = (time.perf_counter() - t0) * 1e3

    # ------------------------------------------------------------------ compute
    def _accept(self, cfg: _Config, d: Delivery) -> None:
        """Add a delivery to its node's join; when complete, run the node on this thread (or queue it
        for the batching thread), or pass on an error or an empty result."""
        if d.error:
            self._report(cfg, d)
            return
        srcs = cfg.in_srcs.get(d.dst)
        if not srcs:  # a source: fed by the controller
            self._dispatch(cfg, _Ready(d.dst, d.request_id, d.branch, d.tensors, d.deadline_unix_ms,
                                       d.trace, time.monotonic()))
            return
        if len(srcs) == 1:    # one input: no join to wait for
            got = {d.src: d}
        else:
            key = (d.request_id, d.branch, d.dst)
            with self._join_lock:
                got = self._joins.setdefault(key, {})
                got[d.src] = d
                if len(srcs) > len(got):
                    return
                del self._joins[key]
        trace = [step for part in got.values() for step in part.trace]
        if any(p.empty for p in got.values()):
            self._emit_empty(cfg, d.dst, d.request_id, d.branch, d.deadline_unix_ms, trace)
            return
        inputs: dict[str, np.ndarray] = {}
        for part in got.values():
            inputs.update(part.tensors)
        self._dispatch(cfg, _Ready(d.dst, d.request_id, d.branch, inputs, d.deadline_unix_ms, trace,
                                   time.monotonic()))

    def _dispatch(self, cfg: _Config, r: _Ready) -> None:
        """Run a ready node now on the calling compute thread, or queue it for the batching thread
        when its site batches it (the batch thread waits up to max_wait for more of the same node)."""
        if self._batching(cfg, r.node):
            with self._join_lock:
                self._ready.append(r)
            self._batch_wake.set()
            return
        self._run_live(cfg, [r])

    def _compute_loop(self) -> None:
        """One of the site's compute threads: takes deliveries and runs their nodes (several threads
        run requests side by side, so one slow request does not hold the others up)."""
        while not self._stop.is_set():
            item = self._inbox.get()
            if item is None:
                continue
            with self._slots:
                with self._queued_lock:
                    self._queued -= 1
                cfg = self._cfg
                if cfg is not None:
                    self._timed(cfg, item)

    def _process(self, cfg: _Config, item: Delivery) -> None:
        """Accept one delivery (join, run, pass on); an exception ends its request with the reason."""
        if not item.src and item.sent_unix_ms and item.trace and item.trace[-1][0] == "feed":
            # a source's input: its feed step ends when a compute slot takes it (time queued behind the
            # site's busy compute thread is waiting, which tierplan run and the simulator tell from overhead)
            item.trace[-1][2] = time.time() * 1e3 - item.sent_unix_ms
        try:
            self._accept(cfg, item)
        except Exception as e:  # keep the thread alive: the request ends with the reason
            log.exception("site %s: delivery %s->%s failed", self.site, item.src, item.dst)
            self._report(cfg, Delivery(item.request_id, item.dst, "", branch=item.branch,
                                       error=f"request {item.request_id}: {item.dst} failed on site "
                                             f"{self.site!r}: {type(e).__name__}: {e}"))

    def _batch_loop(self) -> None:
        """The batching thread: runs queued nodes of batching sites, up to max_batch requests at a
        time, waiting at most max_wait_ms after the oldest one arrived for more of the same node."""
        while not self._stop.is_set():
            cfg = self._cfg
            with self._join_lock:
                head = self._ready[0] if self._ready else None
                n_same = sum(1 for r in self._ready if head is not None and r.node == head.node)
            if head is None or cfg is None:
                self._batch_wake.wait()
                self._batch_wake.clear()
                continue
            wait_s = cfg.options.max_wait_ms / 1e3 - (time.monotonic() - head.since_s)
            if n_same < cfg.options.max_batch and wait_s > 0:
                self._batch_wake.wait(wait_s)   # woken early by each new item: count again
                self._batch_wake.clear()
                continue
            try:
                self._run_next(cfg)
            except Exception:  # keep the batching thread alive: one bad batch must not stop the site
                log.exception("site %s: batch of %s failed", self.site, head.node)

    def _batching(self, cfg: _Config, node: str) -> bool:
        r = cfg.runners.get(node)
        return self.site in cfg.options.batch_sites and r is not None and r.batchable and cfg.options.max_batch > 1

    def _run_next(self, cfg: _Config) -> None:
        """Take the oldest queued node and the queued requests of the same node (same shapes) as one batch."""
        with self._join_lock:
            first = self._ready.popleft()
            batch = [first]
            keep: deque[_Ready] = deque()
            while self._ready:
                r = self._ready.popleft()
                if r.node == first.node and len(batch) < cfg.options.max_batch and \
                        all(r.inputs[k].shape == first.inputs[k].shape for k in first.inputs if k in r.inputs):
                    batch.append(r)
                else:
                    keep.append(r)
            self._ready = keep
        if len(batch) < cfg.options.max_batch:   # started by its wait running out: max_wait_ms + the thread's delay
            self._metrics.of("batch_wait", self.site, first.node).observe(time.monotonic() - first.since_s)
        self._run_live(cfg, batch)
        self._metrics.of("queue_depth", self.site).set(self._inbox.qsize() + len(self._ready))

    def _run_live(self, cfg: _Config, batch: list[_Ready]) -> None:
        """Run the requests of `batch` whose deadline has not passed; report the others."""
        now_ms = time.time() * 1e3
        live = []
        for r in batch:
            if now_ms > r.deadline_unix_ms:
                self._report(cfg, Delivery(r.request_id, r.node, "", branch=r.branch,
                                           error=f"request {r.request_id}: deadline passed before {r.node} "
                                                 f"ran on site {self.site!r}"))
            else:
                live.append(r)
        if live:
            self._run_batch(cfg, live)

    def _run_batch(self, cfg: _Config, batch: list[_Ready]) -> None:
        node = batch[0].node
        kind = cfg.graph.kinds[node]
        # CPU time over the step: the compute thread's own when onnxruntime computes on it (one intra-op
        # thread), else the whole process's (other threads' work counts as the step's: never too little)
        clock = time.thread_time if cfg.options.threads == 1 else time.process_time
        t0, c0 = time.perf_counter(), clock()
        placed: Placed | None = None
        try:
            if kind == "piece":
                runner = cfg.runners[node]
                fill = self._unfed(cfg, node)
                lock = self._run_lock(runner)
                if len(batch) == 1:
                    feed = {**fill, **bind_inputs(batch[0].inputs, runner.input_names)}
                    placed = self._place(cfg, node, runner, feed, batch[0])
                    with lock:
                        if placed is not None:
                            placed = self._run_into(cfg, node, runner, feed, placed)
                        results = [dict(placed.arrays) if placed is not None else runner.run(feed)]
                    if placed is None:
                        self._learn(cfg, node, runner, feed, results[0], batch[0])
                else:
                    bound = [{**fill, **bind_inputs(r.inputs, runner.input_names)} for r in batch]
                    feed = {k: np.concatenate([b[k] for b in bound]) for k in bound[0]}
                    with lock:
                        joined = runner.run(feed)
                    sizes = np.cumsum([next(iter(b.values())).shape[0] for b in bound])[:-1]
                    parts = {k: np.split(v, sizes) for k, v in joined.items()}
                    results = [{k: parts[k][i] for k in parts} for i in range(len(batch))]
            elif kind == "transform":
                results = [cfg.transforms[node](dict(r.inputs)) for r in batch]
            else:  # source: passes its data on
                results = [dict(r.inputs) for r in batch]
        except Exception as e:  # a piece or transform failed: the request ends with this error
            if placed is not None:
                placed.give_up()
            self._metrics.of("requests", self.site, node, "error").inc(len(batch))
            for r in batch:
                self._report(cfg, Delivery(r.request_id, node, "", branch=r.branch,
                                           error=f"request {r.request_id}: {node} failed on site "
                                                 f"{self.site!r}: {type(e).__name__}: {e}"))
            return
        ms = (time.perf_counter() - t0) * 1e3
        # at most its wall time: wall - cpu is the time the step waited for a CPU on a busy machine
        # (tierplan run reports it as a "cpu" step beside "compute")
        cpu_ms = min(ms, (clock() - c0) * 1e3)
        self._metrics.of("stage_latency", self.site, node).observe(ms / 1e3)
        self._metrics.of("batch_size", self.site, node).observe(len(batch))
        self._metrics.of("requests", self.site, node, "ok").inc(len(batch))
        with self._join_lock:
            self._done += len(batch)
        for r, out in zip(batch, results):
            trace = [*r.trace, ["compute", f"{node}@{self.site}", ms / len(batch)],
                     ["cpu", f"{node}@{self.site}", cpu_ms / len(batch)]] if kind != "source" else r.trace
            if kind == "transform":
                items = out if isinstance(out, list) else [out]
                if not items:
                    self._emit_empty(cfg, node, r.request_id, r.branch, r.deadline_unix_ms, trace)
                for i, item in enumerate(items):
                    self._emit(cfg, node, r.request_id, child_branch(r.branch, i, len(items)), item,
                               r.deadline_unix_ms, trace)
            else:
                self._emit(cfg, node, r.request_id, r.branch, out, r.deadline_unix_ms, trace, placed)
        if placed is not None:
            placed.give_up()    # no same-host send took it (another route): its arrays were copied

    # ------------------------------------------------------------------ outputs in shared memory
    def _place(self, cfg: _Config, node: str, runner: Runner, feed: dict[str, np.ndarray],
               r: _Ready) -> Placed | None:
        """Room in shared memory for the piece's outputs when they all go on, unchanged, to one node
        on a same-host site and the last run with inputs of these shapes told their shapes
        (`_learn`): the piece then writes them there and the send copies no tensor bytes."""
        known = cfg.direct.get(node)
        if not known or not hasattr(runner, "run_into"):
            return None
        signature, layout, to = known
        if signature != tuple((k, v.shape, v.dtype) for k, v in feed.items()):
            return None
        to_site = cfg.graph.sites.get(to, "")
        return self._sender.place(pick_address(cfg.peers.get(to_site), r.request_id), to_site, layout)

    def _run_into(self, cfg: _Config, node: str, runner: Runner, feed: dict[str, np.ndarray],
                  placed: Placed) -> Placed | None:
        """Run the piece with its outputs written into `placed`; None after giving it up when the
        runner refuses (an output of another shape: the caller runs it the usual way)."""
        try:
            runner.run_into(feed, placed.arrays)  # type: ignore[attr-defined]
            return placed
        except Exception as e:  # onnxruntime raises its own types: this node's outputs vary in shape
            log.info("site %s: %s writes its outputs itself from now on (%s)", self.site, node, e)
            placed.give_up()
            cfg.direct[node] = None
            return None

    def _learn(self, cfg: _Config, node: str, runner: Runner, feed: dict[str, np.ndarray],
               outputs: dict[str, np.ndarray], r: _Ready) -> None:
        """After a usual run: remember the outputs' shapes for `_place` when the node's only edge
        carries all of them unchanged to a piece on another site (a sink's results stay small)."""
        known = cfg.direct.get(node, ())
        signature = tuple((k, v.shape, v.dtype) for k, v in feed.items())
        if known is None or (known and known[0] == signature) or not hasattr(runner, "run_into"):
            return     # learnt already (that it cannot, or these shapes: the peer was not same-host this time)
        edges = cfg.graph.out_edges.get(node, ())
        e = edges[0] if len(edges) == 1 else None
        ok = e is not None and cfg.graph.kinds.get(e.dst) == "piece" and cfg.graph.sites.get(e.dst) != self.site
        if ok and e is not None:
            sel = select_tensors(outputs, e, "piece", "piece")
            ok = sel.keys() == outputs.keys() and all(sel[k] is a and a.flags.c_contiguous and a.nbytes
                                                      for k, a in outputs.items())
        layout = None
        if ok and e is not None:
            # room for the header (ids, the trace so far and this step's two steps, per tensor),
            # twice what this request needs: a header that does not fit is packed with a copy
            trace_chars = sum(len(s) if type(s) is RawSteps else len(s[0]) + len(s[1]) + 40 for s in r.trace) + \
                2 * (len(node) + len(self.site) + 60)
            room = 1024 + 2 * len(outputs) * (256 + len(r.request_id) + len(node) + len(e.dst) + len(r.branch)
                                              + trace_chars)
            layout = placement({k: (a.dtype, a.shape) for k, a in outputs.items()}, room)
        cfg.direct[node] = (signature, layout, e.dst) if layout is not None and e is not None else None

    def _run_lock(self, runner: Runner):
        """A no-op for runners safe to call from several threads at once (onnxruntime), else one lock
        per runner (TVM and LiteRT runners keep per-call state)."""
        if getattr(runner, "thread_safe", False):
            return _NO_LOCK
        with self._join_lock:
            return self._runner_locks.setdefault(id(runner), threading.Lock())

    def _unfed(self, cfg: _Config, node: str) -> dict[str, np.ndarray]:
        """Zeros for piece inputs no edge feeds (recurrent state and the like): the runtime supplies
        them (made once per plan and node; pieces only read them)."""
        fill = cfg.fills.get(node)
        if fill is not None:
            return fill
        piece = cfg.graph.nodes.get(node)
        fed = {n for e in cfg.graph.in_edges.get(node, ()) for n in
               [*e.tensors, *((e.model_extra or {}).get("rename") or {}).values()]}
        out = {}
        for t in (piece.inputs if piece is not None else []):
            if t.get("name") and t["name"] not in fed and t.get("shape") is not None:
                arr = np.zeros(t["shape"], dtype=t.get("dtype", "float32"))
                arr.flags.writeable = False
                out[t["name"]] = arr
        cfg.fills[node] = out
        return out

    # ------------------------------------------------------------------ routing
    def _emit(self, cfg: _Config, node: str, rid: str, branch: str, outputs: dict, deadline: float,
              trace: list, placed: Placed | None = None) -> None:
        # sends to other sites start before same-site consumers run here (in memory, on this thread):
        # branches on different sites then overlap, as the planner's overlap model plans them
        edges = cfg.graph.out_edges.get(node, ())
        if len(edges) > 1:
            edges = tuple(sorted(edges, key=lambda e: cfg.graph.sites.get(e.dst) == self.site))
        for e in edges:
            tensors = select_tensors(outputs, e, cfg.graph.kinds.get(node, "piece"), cfg.graph.kinds.get(e.dst, "piece"))
            d = Delivery(rid, node, e.dst, tensors, branch=branch,
                         deadline_unix_ms=deadline, trace=list(trace), placed=placed)
            self._route(cfg, d)

    def _emit_empty(self, cfg: _Config, node: str, rid: str, branch: str, deadline: float, trace: list) -> None:
        for e in cfg.graph.out_edges.get(node, ()):
            self._route(cfg, Delivery(rid, node, e.dst, {}, branch=branch, deadline_unix_ms=deadline,
                                      empty=True, trace=list(trace)))

    def _route(self, cfg: _Config, d: Delivery) -> None:
        to_site = cfg.graph.sites.get(d.dst, "")
        if cfg.graph.kinds.get(d.dst) == "sink":
            def to_collector() -> None:
                if not self._stop.is_set():    # a call cancelled by stop() is not retried
                    self._pool.submit(self._send_collector, cfg, d, to_site)
            if not self._sender.try_start(cfg.collector, d, to_site, to_collector):
                to_collector()
        elif to_site == self.site:
            self._accept(cfg, d)  # same site: in memory, no hop
        else:
            def to_peer() -> None:
                if not self._stop.is_set():
                    self._pool.submit(self._send_peer, d, to_site)
            if not self._sender.try_start(pick_address(cfg.peers.get(to_site), d.request_id), d, to_site, to_peer):
                to_peer()

    def _send_peer(self, d: Delivery, to_site: str) -> None:
        err = self._sender.send(rotating(lambda: self._cfg.peers.get(to_site) if self._cfg else None, d.request_id),
                                d, to_site,
                                chunk_bytes=self._cfg.options.chunk_bytes if self._cfg else CHUNK_BYTES)
        if err:
            cfg = self._cfg
            if cfg is not None:
                self._report(cfg, Delivery(d.request_id, d.src, "", branch=d.branch, error=err))

    def _send_collector(self, cfg: _Config, d: Delivery, to_site: str) -> None:
        err = self._sender.send(lambda: self._cfg.collector if self._cfg else cfg.collector, d, to_site,
                                kind="control", chunk_bytes=cfg.options.chunk_bytes,
                                what=f"result {d.src}->{d.dst}")
        if err:
            log.warning("%s", err)

    def _report(self, cfg: _Config, d: Delivery) -> None:
        """Send an error to the controller at once (its own short timeout, no link pacing)."""
        d.deadline_unix_ms = time.time() * 1e3 + _ERROR_REPORT_TIMEOUT_S * 1e3
        self._pool.submit(self._sender.send, lambda: cfg.collector, d, "", "control")
