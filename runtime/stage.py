"""A site's stage worker: hosts every node the plan places on one site and moves tensors to peers.

The same class runs inside a Ray actor (base stations, clouds) and inside `tierplan agent`
(edge hosts, no Ray). It listens on gRPC (`Stage` service in runtime.proto):

- `Configure` gives it the plan, its site name, the peer table (site -> host:port), the
  controller's address and the emulated links; it loads runners for its pieces (once).
- `Deliver` streams in the outputs of an upstream node. Compute threads (`compute_threads`, one by
  default) join the inputs of each node per (request, branch) and run nodes: consecutive nodes
  on the same site hand tensors over in memory (no hop). Outputs for a same-host peer without
  link emulation go out from the compute thread on the Unix socket without waiting for the
  reply (runtime.localwire `start_call`); any other send goes to a sender pool (the compute
  thread never waits for an ack) over a direct gRPC call, paced by the link emulator; sink
  outputs go to the controller.
- Cloud-tier sites batch requests at a node (max batch, max wait) on a batching thread when the
  runner accepts a free first dimension; otherwise queued requests still run back to back.

Every call carries the request's deadline as its timeout. A delivery that cannot be made before
the deadline (peer down, refused) becomes an error sent to the controller naming the hop, so a
request always ends: with its results or with a clear error.
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
import zlib
from collections import deque
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tierplan.planner.plan import Plan
from tierplan.runtime.graph import (DEFAULT_TRANSFORM_MODULES, ExecGraph, bind_inputs, child_branch, load_transform,
                           select_tensors)
from tierplan.runtime.links import LinkEmulator
from tierplan.runtime.localwire import LocalCallError, LocalClient, LocalServer
from tierplan.runtime.piececache import DEFAULT_CACHE_LIMIT_BYTES, PieceCache, safe_entry
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.proto import runtime_pb2_grpc as pbg
from tierplan.runtime.runners import Runner, load_runner
from tierplan.runtime.security import CONTROLLER, TlsConfig, TokenInterceptor, channel, peer_name, server_credentials
from tierplan.runtime.shm import SHM_MIN_BYTES, ShmPool, ShmReader, encode_ref, is_loopback_address
from tierplan.runtime.wire import (CHUNK_BYTES, GRPC_OPTIONS, RAW_CONTROL_METHOD, RAW_CONTROL_ONE_METHOD,
                          RAW_CONTROL_SHM_METHOD, RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, RAW_STAGE_SHM_METHOD,
                          Delivery, WireError, frames_to_delivery, pack_delivery, pack_delivery_into, packed_layout, packed_size,
                          raw_messages, raw_to_delivery, unpack_delivery)
from tierplan.errors import InputError

__all__ = ["StageWorker", "StageOptions", "pick_address", "rotating", "RETRY_CODES", "Sender", "UNARY_MAX_BYTES", "UNARY_MAX_PACED_BYTES", "raw_handler",
           "delivery_handlers", "parsed"]

log = logging.getLogger("tierplan.runtime")

# a receiver answers these to a shared-memory handle it cannot use: the sender sends the bytes instead
_NO_SHM_CODES = {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION}
_DEFAULT_READER: ShmReader | None = None
# gRPC codes worth retrying within the deadline: the peer is down, restarting or overloaded
RETRY_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED,
               grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL}
# deliveries up to this size go as one packed unary message (runtime.wire.pack_delivery), bigger
# ones as a raw stream of chunks. Between two processes on loopback here the unary call saves the
# stream's 0.5-2 ms up to about 1.5 MB; from 4 MiB on the chunked stream is faster (6.5 vs 9 ms)
UNARY_MAX_BYTES = 2 << 20
UNARY_MAX_PACED_BYTES = 64 << 10   # the same limit when the link is emulated (see Sender.send)
_RETRY_BACKOFF_S = (0.02, 0.05, 0.1, 0.2, 0.4)
INLINE_TIMEOUT_S = 1.0    # longest a compute thread waits for a same-host peer before the sender pool takes over
_ERROR_REPORT_TIMEOUT_S = 2.0
_NO_LOCK = contextlib.nullcontext()
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def raw_handler(method: str, fn) -> grpc.GenericRpcHandler:
    """A generic handler serving `fn(iterator of bytes, context) -> pb.Ack` at `method` ("/service/name")."""
    service, name = method.strip("/").split("/")
    return grpc.method_handlers_generic_handler(service, {name: grpc.stream_unary_rpc_method_handler(
        fn, request_deserializer=None, response_serializer=pb.Ack.SerializeToString)})


def parsed(parse: Callable, message, context):
    """`parse(message)` (a runtime.wire reader); a message that breaks the wire format ends the call
    with INVALID_ARGUMENT and the reason (the sender does not retry it)."""
    try:
        return parse(message)
    except WireError as e:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))


def delivery_handlers(stream_method: str, one_method: str,
                      on_delivery: Callable[[Delivery, object], pb.Ack],
                      shm_reader: ShmReader | None = None) -> list[grpc.GenericRpcHandler]:
    """Handlers for the three raw delivery forms: the chunked stream at `stream_method`, the packed
    unary message at `one_method` and a shared-memory handle at the service's `DeliverShm` (read
    through `shm_reader`, a process-wide one if None); each hands the reassembled Delivery to
    `on_delivery(d, context)`."""
    global _DEFAULT_READER
    service, name = stream_method.strip("/").split("/")
    one_service, one_name = one_method.strip("/").split("/")
    if one_service != service:
        raise ValueError(f"{stream_method} and {one_method} must belong to one service")
    if shm_reader is None:
        _DEFAULT_READER = _DEFAULT_READER or ShmReader()
        shm_reader = _DEFAULT_READER
    reader = shm_reader

    def from_shm(msg: bytes, context) -> pb.Ack:
        try:
            d = reader.read(msg)
        except WireError as e:   # mapped, but what the segment holds is not a delivery
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (OSError, ValueError) as e:   # another host, another /dev/shm, or not our segment
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot map shared memory: {e}")
        return on_delivery(d, context)

    return [grpc.method_handlers_generic_handler(service, {
        "DeliverShm": grpc.unary_unary_rpc_method_handler(
            from_shm, request_deserializer=None, response_serializer=pb.Ack.SerializeToString),
        name: grpc.stream_unary_rpc_method_handler(
            lambda it, ctx: on_delivery(parsed(raw_to_delivery, it, ctx), ctx),
            request_deserializer=None, response_serializer=pb.Ack.SerializeToString),
        one_name: grpc.unary_unary_rpc_method_handler(
            lambda buf, ctx: on_delivery(parsed(unpack_delivery, buf, ctx), ctx),
            request_deserializer=None, response_serializer=pb.Ack.SerializeToString)})]


@dataclass(frozen=True)
class StageOptions:
    """Knobs of a stage worker (sent with Configure as JSON)."""

    threads: int = 0                     # onnxruntime intra-op threads; 0 = its default
    batch_sites: tuple[str, ...] = ()    # sites that batch requests (cloud tier by default)
    max_batch: int = 8
    max_wait_ms: float = 2.0
    chunk_bytes: int = CHUNK_BYTES
    sender_threads: int = 8
    shm: bool = True                     # same-host peers: tensor bytes in shared memory (runtime.shm)
    # a directory every process of one deployment on this host shares: emulated links keep one
    # bandwidth budget across processes (runtime.links.LinkEmulator shared_dir); "" = per process
    links_shared_dir: str = ""
    # threads per worker that run nodes side by side (each request runs on one of them); runners
    # that are not thread-safe (TVM, LiteRT) still run one call at a time. One by default: with
    # every site on 2 shared cores (benchmarks/runtime.py) 4 threads cost 6% more CPU per request
    # and gave no more throughput; raise it for a site whose host has cores to spare
    compute_threads: int = 1

    @classmethod
    def from_json(cls, text: str) -> "StageOptions":
        """Options as a peer sent them, each number checked against `_OPTION_BOUNDS` (a worker checks
        `links_shared_dir` when it uses it: `shared_links_dir`)."""
        raw = json.loads(text) if text else {}
        if not isinstance(raw, dict):
            raise ValueError("options_json: expected a JSON object")
        raw["batch_sites"] = tuple(str(s) for s in raw.get("batch_sites", ()) or ())
        for name, (lo, hi) in _OPTION_BOUNDS.items():
            v = raw.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi):
                raise ValueError(f"options_json: {name}={v!r} is outside [{lo}, {hi}]")
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d["batch_sites"] = list(self.batch_sites)
        return json.dumps(d)


# bounds of StageOptions' numbers as a peer may set them (a worker keeps its threads and memory)
_OPTION_BOUNDS = {"threads": (0, 256), "max_batch": (1, 4096), "max_wait_ms": (0, 60_000),
                  "chunk_bytes": (1 << 10, 64 << 20), "sender_threads": (1, 256), "compute_threads": (1, 64)}
LINKS_DIR_MARKER = ".tierplan-links"   # runtime.deploy marks the shared link folder of a deployment with it


def shared_links_dir(path: str) -> str | None:
    """The shared link folder a peer names, if this host's deploy made it (a real folder of this user
    holding LINKS_DIR_MARKER): the worker writes bucket files into it. "" gives None."""
    if not path:
        return None
    p = Path(path)
    if p.is_symlink() or not p.is_dir() or not (p / LINKS_DIR_MARKER).is_file() or p.stat().st_uid != os.getuid():
        raise ValueError(f"options_json: links_shared_dir {path!r} is not a folder a deploy on this host made "
                         f"(no {LINKS_DIR_MARKER} in it)")
    return str(p)


def pick_address(peers: str | None, key: str, turn: int = 0) -> str | None:
    """One address of a site's comma-separated worker list: requests spread over a site's replicas
    by their id (the same request always starts at the same replica); `turn` moves to the next."""
    addrs = [a for a in (peers or "").split(",") if a]
    if not addrs:
        return None
    return addrs[(zlib.crc32(key.encode()) + turn) % len(addrs)]


def rotating(peers: Callable[[], str | None], key: str) -> Callable[[], str | None]:
    """A resolver for `Sender.send`: each retry asks the next replica of the site (a dead one is skipped
    on the next attempt, and the peer table is re-read, so restarted replicas are found)."""
    turn = iter(range(1 << 30))
    return lambda: pick_address(peers(), key, next(turn))


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


class Sender:
    """Sends deliveries over gRPC with link pacing, retries within the deadline, cached channels."""

    def __init__(self, site: str, tls: TlsConfig | None, emulator: Callable[[], LinkEmulator],
                 metrics: _Metrics | None = None, shm: bool = True) -> None:
        self.site = site
        self.tls = tls
        self.shm = shm              # same-host peers: Unix socket + shared memory (runtime.localwire, runtime.shm)
        self._emulator = emulator
        self._metrics = metrics
        self._stubs: dict[str, tuple[grpc.Channel, object]] = {}
        self._lock = threading.Lock()
        self._shm_pool: ShmPool | None = None
        self._no_shm: set[str] = set()    # addresses that refused a handle: bytes go inline
        self._local = LocalClient()

    def stub(self, address: str, kind: str = "stage"):
        with self._lock:
            key = f"{kind}@{address}"
            if key not in self._stubs:
                ch = channel(address, self.tls, GRPC_OPTIONS)
                stub = pbg.StageStub(ch) if kind == "stage" else pbg.ControlStub(ch)
                self._stubs[key] = (ch, stub)
            return self._stubs[key][1]

    def raw(self, address: str, kind: str = "stage", unary: bool = False, shm: bool = False):
        """The raw-bytes Deliver method of a worker or the controller (see runtime.wire): the chunked
        stream, with `unary` the one-message DeliverOne, with `shm` the handle-only DeliverShm. All
        share the address's channel."""
        with self._lock:
            key = f"raw-{kind}-{'shm' if shm else 'one' if unary else 'stream'}@{address}"
            if key not in self._stubs:
                chan_key = f"chan@{address}"
                if chan_key not in self._stubs:
                    self._stubs[chan_key] = (channel(address, self.tls, GRPC_OPTIONS), None)
                ch = self._stubs[chan_key][0]
                if shm:
                    method = RAW_STAGE_SHM_METHOD if kind == "stage" else RAW_CONTROL_SHM_METHOD
                    call = ch.unary_unary(method, request_serializer=None, response_deserializer=pb.Ack.FromString)
                elif unary:
                    method = RAW_STAGE_ONE_METHOD if kind == "stage" else RAW_CONTROL_ONE_METHOD
                    call = ch.unary_unary(method, request_serializer=None, response_deserializer=pb.Ack.FromString)
                else:
                    method = RAW_STAGE_METHOD if kind == "stage" else RAW_CONTROL_METHOD
                    call = ch.stream_unary(method, request_serializer=None, response_deserializer=pb.Ack.FromString)
                self._stubs[key] = (ch, call)
            return self._stubs[key][1]

    def close(self) -> None:
        with self._lock:
            for ch in {id(ch): ch for ch, _ in self._stubs.values()}.values():
                ch.close()
            self._stubs.clear()
            pool, self._shm_pool = self._shm_pool, None
        if pool is not None:
            pool.close()
        self._local.close()

    def try_now(self, address: str | None, d: Delivery, to_site: str) -> bool:
        """One same-host attempt on the caller's thread, for routes the emulator leaves alone: True
        when the peer took the delivery. Anything else (no socket, TLS, a dead, slow or refusing
        peer) returns False and leaves the delivery to `send`, with its retries, on a sender thread.

        It saves the sender pool's thread handoff on every hop; the attempt waits at most
        INLINE_TIMEOUT_S, so a stuck peer cannot hold the caller (a stage's compute thread) for long.
        """
        if not address or (to_site and self._emulator().route(self.site, to_site)):
            return False
        d.sent_unix_ms = time.time() * 1e3
        try:
            ack = self._send_local(address, d, 0.0, d.deadline_unix_ms / 1e3, INLINE_TIMEOUT_S)
        except grpc.RpcError:
            return False
        if ack is None or not ack.ok:
            return False
        if self._metrics is not None and to_site and to_site != self.site:
            self._metrics.of("link_bytes", f"{self.site}->{to_site}").inc(d.nbytes)
            self._metrics.of("link_latency", f"{self.site}->{to_site}").observe(time.time() - d.sent_unix_ms / 1e3)
        return True

    def try_start(self, address: str | None, d: Delivery, to_site: str, on_fail: Callable[[], None]) -> bool:
        """`try_now` without waiting for the peer's reply: True when the delivery went out on the
        same-host socket; the reply comes on the socket client's reply thread, and if it is not
        an ok (refused, broken, no answer within INLINE_TIMEOUT_S) `on_fail()` runs there (the caller
        then sends with `send`, as after a False). The compute thread thus never waits for a peer
        that is slow to be scheduled."""
        if not address or not self.shm or self.tls is not None or address in self._no_shm or \
                (to_site and self._emulator().route(self.site, to_site)):
            return False
        d.sent_unix_ms = time.time() * 1e3

        def on_reply(ack: pb.Ack | None, error: LocalCallError | None) -> None:
            if error is None and ack is not None and ack.ok:
                if self._metrics is not None and to_site and to_site != self.site:
                    link = f"{self.site}->{to_site}"
                    self._metrics.of("link_bytes", link).inc(d.nbytes)
                    self._metrics.of("link_latency", link).observe(time.time() - d.sent_unix_ms / 1e3)
                return
            if error is not None and error.code() in _NO_SHM_CODES:
                self._no_shm.add(address)
            on_fail()

        try:
            return self._local.start_call(address, d, d.deadline_unix_ms / 1e3, INLINE_TIMEOUT_S, on_reply)
        except grpc.RpcError:
            return False

    def _send_local(self, address: str, d: Delivery, arrival_s: float, deadline_s: float,
                    timeout_s: float | None = None) -> pb.Ack | None:
        """The same-host socket (runtime.localwire) when the peer has one and TLS is off; else None."""
        if not self.shm or self.tls is not None or address in self._no_shm:
            return None
        try:
            return self._local.call(address, d, deadline_s, arrival_s, timeout_s)
        except LocalCallError as e:
            if e.code() in _NO_SHM_CODES:
                log.info("%s: no same-host path to %s (%s); using gRPC", self.site, address, e.details())
                self._no_shm.add(address)
                return None
            raise

    def _wants_shm(self, address: str, nbytes: int) -> bool:
        return self.shm and nbytes >= SHM_MIN_BYTES and address not in self._no_shm and is_loopback_address(address)

    def _send_shm(self, address: str, kind: str, d: Delivery, arrival_s: float, deadline_s: float) -> pb.Ack | None:
        """Pack `d` into a pooled segment and send its handle; None when the receiver cannot map it
        (the caller sends the bytes instead). The link's time runs before the handle goes out."""
        with self._lock:
            if self._shm_pool is None:
                self._shm_pool = ShmPool()
            pool = self._shm_pool
        layout = packed_layout(d)
        seg = pool.acquire(packed_size(d, layout))
        try:
            n = pack_delivery_into(d, pool.payload(seg), layout)
            wait = arrival_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ack = self.raw(address, kind, shm=True)(encode_ref(seg.name, n), timeout=max(deadline_s - time.time(), 1e-3))
        except grpc.RpcError as e:
            pool.discard(seg)       # the receiver may still be reading it: never reuse
            if e.code() in _NO_SHM_CODES:
                log.info("%s: no shared memory with %s (%s); sending bytes", self.site, address, e.details())
                self._no_shm.add(address)
                return None
            raise
        except BaseException:
            pool.discard(seg)
            raise
        pool.release(seg)
        return ack

    def _send_bytes(self, address: str, kind: str, d: Delivery, arrival_s: float, deadline_s: float,
                    chunk_bytes: int) -> pb.Ack:
        """Send `d`'s bytes on the wire: one packed message, or a stream of chunks for big ones."""
        paced = arrival_s - time.monotonic() > 0
        if d.nbytes <= UNARY_MAX_PACED_BYTES or (d.nbytes <= UNARY_MAX_BYTES and not paced):
            # one packed message: no stream consumer thread, the bytes copied once. On an emulated
            # (paced) link bigger deliveries take the stream, whose bytes cross while the link's
            # time runs, as they would on the real link.
            msg = pack_delivery(d)
            wait = arrival_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            return self.raw(address, kind, unary=True)(msg, timeout=max(deadline_s - time.time(), 1e-3))
        raw = self.raw(address, kind)
        return raw(self._paced(raw_messages(d, chunk_bytes), arrival_s), timeout=max(deadline_s - time.time(), 1e-3))

    def _paced(self, frames: list, arrival_s: float):
        # frames are built before the call: a lazy generator run on gRPC's consumer thread was
        # 3x slower for 1 MiB tensors here
        yield from frames
        wait = arrival_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def send(self, resolve: Callable[[], str | None], d: Delivery, to_site: str, kind: str = "stage",
             chunk_bytes: int = CHUNK_BYTES, what: str = "") -> str:
        """Deliver `d` to whatever address `resolve()` gives, until it succeeds or the deadline passes.

        Returns "" on success, else the error message (the caller reports it).
        """
        deadline_s = d.deadline_unix_ms / 1e3
        attempt = 0
        last = "no address known"
        link = f"{self.site}->{to_site}"
        while True:
            remaining = deadline_s - time.time()
            if remaining <= 0:
                return (f"request {d.request_id}: {what or d.src + '->' + d.dst} to site {to_site!r} "
                        f"not delivered before the deadline ({last})")
            address = resolve()
            if address:
                d.sent_unix_ms = time.time() * 1e3
                arrival = self._emulator().arrival_s(self.site, to_site, d.nbytes) if to_site else 0.0
                try:
                    ack = self._send_local(address, d, arrival, deadline_s)
                    if ack is None and self._wants_shm(address, d.nbytes):
                        ack = self._send_shm(address, kind, d, arrival, deadline_s)
                    if ack is None:
                        ack = self._send_bytes(address, kind, d, arrival, deadline_s, chunk_bytes)
                    if self._metrics is not None and to_site and to_site != self.site:
                        self._metrics.of("link_bytes", link).inc(d.nbytes)
                        self._metrics.of("link_latency", link).observe(time.time() - d.sent_unix_ms / 1e3)
                    if ack.ok:
                        return ""
                    return f"request {d.request_id}: site {to_site!r} refused {d.src}->{d.dst}: {ack.error}"
                except grpc.RpcError as e:
                    code = e.code()
                    last = f"{code.name}: {e.details()}"
                    if code not in RETRY_CODES and code != grpc.StatusCode.DEADLINE_EXCEEDED:
                        return f"request {d.request_id}: {what or d.src + '->' + d.dst} to site {to_site!r} failed ({last})"
            time.sleep(min(_RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)],
                           max(deadline_s - time.time(), 0)))
            attempt += 1


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
        self._inbox: queue.Queue[Delivery | None] = queue.Queue()
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
        self._shm_reader = ShmReader(in_place=True)   # pieces read their inputs from the segment
        self._pool = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"send-{site}")
        self._stop = threading.Event()
        self._server: grpc.Server | None = None
        self._local_server: LocalServer | None = None
        self._done = 0

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
        self._local_server = LocalServer(self.address, self._accept_delivery, self._shm_reader)
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

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def _register(self) -> None:
        """Tell the controller where this worker listens (retried while the controller starts)."""
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
        cfg = self._cfg
        if cfg is None:  # just (re)started: UNAVAILABLE makes the sender retry until configured
            context.abort(grpc.StatusCode.UNAVAILABLE, f"site {self.site} is not configured yet")
        # the plan decides what may arrive here: a node of this site, from one of its inputs (a
        # source from the client: no src); anything else is refused before it reaches a join
        if d.dst not in cfg.nodes:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"node {d.dst[:64]!r} does not run on site {self.site!r} in generation {cfg.generation}")
        wanted = cfg.graph.in_edges.get(d.dst, ())
        if (d.src not in {e.src for e in wanted}) if wanted else d.src not in ("", d.dst):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"node {d.dst!r} takes no input from {d.src[:64]!r}")
        src_site = cfg.graph.sites.get(d.src, "")
        if d.sent_unix_ms and not d.src:  # a source's data from the client (on a device: local)
            d.trace.append(["feed", f"client->{self.site}", time.time() * 1e3 - d.sent_unix_ms])
        elif d.sent_unix_ms and src_site and src_site != self.site:
            d.trace.append(["transfer", f"{src_site}->{self.site}", time.time() * 1e3 - d.sent_unix_ms])
        self._inbox.put(d)
        self._metrics.of("queue_depth", self.site).set(self._inbox.qsize() + len(self._ready))
        return pb.Ack(ok=True)

    # ------------------------------------------------------------------ compute
    def _accept(self, cfg: _Config, d: Delivery) -> None:
        """Add a delivery to its node's join; when complete, run the node on this thread (or queue it
        for the batching thread), or pass on an error or an empty result."""
        if d.error:
            self._report(cfg, d)
            return
        wanted = cfg.graph.in_edges.get(d.dst, ())
        if not wanted:  # a source: fed by the controller
            self._dispatch(cfg, _Ready(d.dst, d.request_id, d.branch, d.tensors, d.deadline_unix_ms,
                                       d.trace, time.monotonic()))
            return
        key = (d.request_id, d.branch, d.dst)
        with self._join_lock:
            got = self._joins.setdefault(key, {})
            got[d.src] = d
            if len({e.src for e in wanted}) > len(got):
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
            cfg = self._cfg
            if item is None or cfg is None:
                continue
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
        try:
            if kind == "piece":
                runner = cfg.runners[node]
                fill = self._unfed(cfg, node)
                lock = self._run_lock(runner)
                if len(batch) == 1:
                    feed = {**fill, **bind_inputs(batch[0].inputs, runner.input_names)}
                    with lock:
                        results = [runner.run(feed)]
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
                self._emit(cfg, node, r.request_id, r.branch, out, r.deadline_unix_ms, trace)

    def _run_lock(self, runner: Runner):
        """A no-op for runners safe to call from several threads at once (onnxruntime), else one lock
        per runner (TVM and LiteRT runners keep per-call state)."""
        if getattr(runner, "thread_safe", False):
            return _NO_LOCK
        with self._join_lock:
            return self._runner_locks.setdefault(id(runner), threading.Lock())

    def _unfed(self, cfg: _Config, node: str) -> dict[str, np.ndarray]:
        """Zeros for piece inputs no edge feeds (recurrent state and the like): the runtime supplies them."""
        piece = cfg.graph.nodes.get(node)
        fed = {n for e in cfg.graph.in_edges.get(node, ()) for n in
               [*e.tensors, *((e.model_extra or {}).get("rename") or {}).values()]}
        out = {}
        for t in (piece.inputs if piece is not None else []):
            if t.get("name") and t["name"] not in fed and t.get("shape") is not None:
                out[t["name"]] = np.zeros(t["shape"], dtype=t.get("dtype", "float32"))
        return out

    # ------------------------------------------------------------------ routing
    def _emit(self, cfg: _Config, node: str, rid: str, branch: str, outputs: dict, deadline: float,
              trace: list) -> None:
        for e in cfg.graph.out_edges.get(node, ()):
            tensors = select_tensors(outputs, e, cfg.graph.kinds.get(node, "piece"), cfg.graph.kinds.get(e.dst, "piece"))
            d = Delivery(rid, node, e.dst, tensors, branch=branch,
                         deadline_unix_ms=deadline, trace=list(trace))
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
