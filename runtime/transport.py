"""How a delivery reaches a peer: the sending side (`Sender`) and the receiving handlers of every form.

Split from runtime.stage so that the controller (runtime.service), which sends inputs and takes
results, imports the transport and not the stage worker. A delivery goes, in order of preference:

- on the same-host Unix socket with its tensors in shared memory (runtime.localwire, runtime.shm),
  for loopback peers without TLS; `Sender.try_start` sends without waiting for the reply;
- as a shared-memory handle on the gRPC channel (loopback peers with TLS);
- as one packed unary gRPC message up to UNARY_MAX_BYTES, else as a raw stream of chunks.

`Sender.send` retries within the request's deadline (RETRY_CODES) and paces emulated links
(runtime.links). `delivery_handlers` serves the three raw gRPC forms of runtime.wire; every field a
peer sends is checked there (runtime.wire.WireError -> INVALID_ARGUMENT).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import zlib
from typing import Callable, Protocol

import grpc

from tierplan.runtime.links import LinkEmulator
from tierplan.runtime.localwire import LocalCallError, LocalClient, Placed, socket_name
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.proto import runtime_pb2_grpc as pbg
from tierplan.runtime.security import TlsConfig, channel
from tierplan.runtime.shm import SHM_MIN_BYTES, ShmPool, ShmReader, encode_ref, is_loopback_address
from tierplan.runtime.wire import (CHUNK_BYTES, GRPC_OPTIONS, RAW_CONTROL_METHOD, RAW_CONTROL_ONE_METHOD,
                                   RAW_CONTROL_SHM_METHOD, RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD,
                                   RAW_STAGE_SHM_METHOD, Delivery, WireError, pack_delivery, pack_delivery_into,
                                   packed_layout, packed_size, raw_messages, raw_to_delivery, unpack_delivery)

__all__ = ["Sender", "LinkMetrics", "pick_address", "rotating", "RETRY_CODES", "UNARY_MAX_BYTES",
           "UNARY_MAX_PACED_BYTES", "INLINE_TIMEOUT_S", "raw_handler", "delivery_handlers", "parsed"]

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



def pick_address(peers: str | None, key: str, turn: int = 0) -> str | None:
    """One address of a site's comma-separated worker list: requests spread over a site's replicas
    by their id (the same request always starts at the same replica); `turn` moves to the next."""
    if peers and "," not in peers:    # one worker (every hop without replicas): no split, no hash
        return peers
    addrs = _addresses(peers or "")
    if not addrs:
        return None
    return addrs[(zlib.crc32(key.encode()) + turn) % len(addrs)]


@functools.lru_cache(maxsize=256)
def _addresses(peers: str) -> tuple[str, ...]:
    return tuple(a for a in peers.split(",") if a)


def rotating(peers: Callable[[], str | None], key: str) -> Callable[[], str | None]:
    """A resolver for `Sender.send`: each retry asks the next replica of the site (a dead one is skipped
    on the next attempt, and the peer table is re-read, so restarted replicas are found)."""
    turn = iter(range(1 << 30))
    return lambda: pick_address(peers(), key, next(turn))



class LinkMetrics(Protocol):
    """What a Sender records per link: `of("link_bytes" | "link_latency", link)` gives a Prometheus
    child with `inc` / `observe` (runtime.stage's worker metrics)."""

    def of(self, metric: str, *labels: str): ...


class Sender:
    """Sends deliveries over gRPC with link pacing, retries within the deadline, cached channels."""

    def __init__(self, site: str, tls: TlsConfig | None, emulator: Callable[[], LinkEmulator],
                 metrics: LinkMetrics | None = None, shm: bool = True) -> None:
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
        """`try_now` without waiting for the peer: True when the delivery went out on the same-host
        socket (streamed: runtime.localwire LocalClient learns later, from the segment, that the
        peer took it); if the peer refuses it, breaks the connection or does not take it within
        INLINE_TIMEOUT_S, `on_fail()` runs on the thread that finds out (the caller then sends with
        `send`, as after a False). The sending thread (a stage's compute thread, a client's) thus
        never waits for a peer that is slow to be scheduled, and no thread is woken per delivery."""
        if not address or not self.shm or self.tls is not None or address in self._no_shm or \
                (to_site and self._emulator().route(self.site, to_site)):
            return False
        d.sent_unix_ms = time.time() * 1e3
        sent_s: list[float] = []     # when the delivery was in the peer's socket

        def on_reply(ack: pb.Ack | None, error: LocalCallError | None) -> None:
            if error is None and ack is not None and ack.ok:
                if self._metrics is not None and to_site and to_site != self.site:
                    link = f"{self.site}->{to_site}"
                    self._metrics.of("link_bytes", link).inc(d.nbytes)
                    # the ack is read late (runtime.localwire.LocalClient): the transfer ended at the send
                    self._metrics.of("link_latency", link).observe(
                        (sent_s[0] if sent_s else time.time()) - d.sent_unix_ms / 1e3)
                return
            if error is not None and error.code() in _NO_SHM_CODES:
                self._no_shm.add(address)
            on_fail()

        try:
            started = self._local.start_call(address, d, d.deadline_unix_ms / 1e3, INLINE_TIMEOUT_S, on_reply)
        except grpc.RpcError:
            return False
        sent_s.append(time.time())
        return started

    def place(self, address: str | None, to_site: str, layout: tuple) -> Placed | None:
        """Room in shared memory for a delivery's tensors (`layout`: runtime.localwire.placement) when
        it will go to `address` on the same-host path, as `try_start` sends (None otherwise): a piece
        writes its outputs there and the send writes only the header (runtime.localwire.Placed)."""
        if not address or not self.shm or self.tls is not None or address in self._no_shm or \
                socket_name(address) is None or (to_site and self._emulator().route(self.site, to_site)):
            return None
        return self._local.place(layout)

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

