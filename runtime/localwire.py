"""Same-host transport: deliveries on a Unix socket between tierplan processes, big tensors in shared memory.

A Python gRPC call costs about 0.45 ms of CPU (both ends together) and as much wall time even
for a few hundred bytes, measured here; a request of the 3-site SqueezeNet pipeline makes four
such calls, which is most of what the pipeline spends beyond its compute. Between processes on
one host a Unix socket carries the same delivery for about 0.02 ms. So a worker (or the
controller) whose gRPC server listens on loopback port P also listens on the abstract Unix
socket "\\0tierplan-rt-P" (Linux; the name disappears with the process), and a sender whose peer
address is 127.0.0.1:P tries that socket first:

    request:  uint32 LE length, kind, body
    reply:    uint32 LE length, kind, body

A waiting call (`LocalClient.call`) sends kind 1 (a shared-memory handle) or 2 (packed bytes) and
reads one reply: 3 = ok, 4 = refused + message, 5 = error "CODE\nmessage". A streamed call
(`LocalClient.start_call`, every hop of a running request) sends kind 6: a uint64 sequence number
and a handle, and gets NO reply when the delivery is taken: the receiver marks the segment's
accepted byte instead (runtime.shm), which the sender reads from memory. Only a refusal (7) or an
error (8) comes back, with the sequence number it answers. So a hop costs no reply, no reply
syscall and no reply handling, and a sender writes its next delivery without waiting (measured:
0.17-0.33 ms less CPU per request of the 3-site pipeline, all processes together).

Bodies are `runtime.shm.encode_ref` handles (the packed delivery lies in the sender's segment)
or `runtime.wire.pack_delivery` bytes for small deliveries of a waiting call. The sender reuses a
segment only after the receiver took it (reply or accepted byte) and let go of its arrays, and
keeps its retry and deadline logic (errors come back as `LocalCallError`, a grpc.RpcError with a
status code). Only deployments without TLS use it: with mutual TLS every delivery stays on the
authenticated gRPC channel (and only same-user processes may connect: the server checks the
peer's uid).

Less work per hop: a stage worker runs an acknowledged delivery on the connection's own thread
when it has a free compute slot (`LocalServer(on_accepted=...)`), a piece may write its outputs
straight into a pooled segment (`placement`, `LocalClient.place`, `Placed`: the send then writes
only the header, no tensor copy), and no thread is woken by a reply (a streamed call has none; a
refusal or error is read later, on a sweep: `LocalClient`).
"""

from __future__ import annotations

import functools
import logging
import os
import select
import socket
import struct
import sys
import threading
import time
from multiprocessing.shared_memory import SharedMemory
from typing import Callable

import grpc
import numpy as np

from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.shm import (SEG_HEADER_BYTES, SHM_MIN_BYTES, ShmPool, ShmReader, encode_ref, is_accepted,
                                  is_loopback_address, mark_accepted, seg_buf)
from tierplan.runtime.wire import (MAX_MESSAGE_BYTES, Delivery, WireError, pack_delivery, pack_delivery_into,
                                   pack_header_into, packed_layout, packed_size, unpack_delivery)

__all__ = ["LocalServer", "LocalClient", "LocalCallError", "Placed", "placement", "socket_name", "available"]

log = logging.getLogger("tierplan.runtime")

_HEAD = struct.Struct("<IB")
_SEQ = struct.Struct("<Q")
_KIND_SHM, _KIND_BYTES, _KIND_OK, _KIND_REFUSED, _KIND_ERROR = 1, 2, 3, 4, 5
_KIND_STREAM, _KIND_STREAM_REFUSED, _KIND_STREAM_ERROR = 6, 7, 8
_IDLE_PER_PEER = 16          # idle connections kept per peer (one per concurrent sender thread)
_PEERCRED = struct.Struct("3i")
_RECV_BYTES = 16 << 10       # one receive call takes any message up to this (handles, acks, small deliveries)
_REPLY_BYTES = 4096          # a reply (ok, refusal or error message) read in one receive call
_SWEEP_S = 0.1               # while streamed calls are open: taken ones confirmed, refusals read and timeouts
                             # checked this often (senders confirm on every send: a wake-up per tick, not per call)
_SEND_TIMEOUT_S = 1.0        # longest a streamed send may block (the kernel keeps it: SO_SNDTIMEO)


def available() -> bool:
    """Abstract Unix sockets exist on Linux only."""
    return sys.platform.startswith("linux")


@functools.lru_cache(maxsize=1024)
def socket_name(address: str) -> str | None:
    """The abstract socket of the process whose gRPC server is at loopback `address`, else None."""
    if not available() or not is_loopback_address(address) or address.startswith("unix:"):
        return None
    port = address.rsplit(":", 1)[-1]
    return f"\0tierplan-rt-{port}" if port.isdigit() else None


class LocalCallError(grpc.RpcError):
    """A failed same-host call, with the gRPC status code it stands for (the sender's retry logic reads it)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _Context:
    """Stands in for a gRPC servicer context: `abort` ends the call with a status code."""

    def abort(self, code: grpc.StatusCode, details: str):
        raise LocalCallError(code, details)


def _recv_exact(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


def _recv_message(sock: socket.socket, buf: bytearray) -> tuple[int, bytes | None] | None:
    """One length-prefixed message: (kind, body), (kind, None) when its length is beyond
    MAX_MESSAGE_BYTES, None when the peer closed. A message that fits `buf` (handles, acks, small
    deliveries) takes one receive call; calls are one at a time per connection, so a receive never
    holds bytes of the next message (a peer that sends them breaks the protocol: OSError)."""
    view = memoryview(buf)
    got = sock.recv_into(view)
    if got == 0:
        return None
    while got < _HEAD.size:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    n, kind = _HEAD.unpack_from(buf, 0)
    if n > MAX_MESSAGE_BYTES:
        return kind, None
    total = _HEAD.size + n
    if got > total:
        raise OSError(f"peer sent {got - total} bytes beyond its message")
    if total <= len(buf):
        while got < total:
            k = sock.recv_into(view[got:total])
            if k == 0:
                return None
            got += k
        return kind, bytes(view[_HEAD.size:total])
    rest = _recv_exact(sock, total - got)
    if rest is None:
        return None
    return kind, bytes(view[_HEAD.size:got]) + bytes(rest)


class _Frames:
    """The messages arriving on one connection, in order. A streamed sender writes several before
    any reply, so one receive may hold the next message's bytes: they wait in the buffer (one
    receive call per message at most, often fewer under load)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(_RECV_BYTES)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def _fill(self) -> bool:
        """Receive more bytes after those buffered (False when the peer closed)."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):     # room at the front: move the partial message there
            n = self._end - self._start
            self._buf[:n] = self._view[self._start:self._end]
            self._start, self._end = 0, n
        k = self._sock.recv_into(self._view[self._end:])
        if k == 0:
            return False
        self._end += k
        return True

    def buffered(self) -> bool:
        """True when bytes of another message are already here."""
        return self._end > self._start

    def next(self) -> tuple[int, bytes | None] | None:
        """(kind, body) of the next message, (kind, None) when its length is beyond MAX_MESSAGE_BYTES
        (never allocated), None when the peer closed."""
        while self._end - self._start < _HEAD.size:
            if not self._fill():
                return None
        n, kind = _HEAD.unpack_from(self._buf, self._start)
        if n > MAX_MESSAGE_BYTES:
            return kind, None
        total = _HEAD.size + n
        if total > len(self._buf):       # bigger than the buffer: what is here, then the rest
            have = bytes(self._view[self._start + _HEAD.size:self._end])
            self._start = self._end = 0
            rest = _recv_exact(self._sock, n - len(have))
            return None if rest is None else (kind, have + bytes(rest))
        while self._end - self._start < total:
            if not self._fill():
                return None
        body = bytes(self._view[self._start + _HEAD.size:self._start + total])
        self._start += total
        return kind, body


_Lease = tuple[SharedMemory, ShmPool]   # a pooled segment a call holds until its reply


def _drop(lease: _Lease | None) -> None:
    """A call that failed: its segment leaves the pool (the receiver may still read it)."""
    if lease is not None:
        lease[1].discard(lease[0])


def _keep(lease: _Lease | None) -> None:
    """A call that got its reply: the segment goes back to the pool."""
    if lease is not None:
        lease[1].release(lease[0])


def _frame(kind: int, body: bytes) -> bytes:
    return _HEAD.pack(len(body), kind) + body


_OK_FRAME = _frame(_KIND_OK, b"")
_ACK_OK = pb.Ack(ok=True)    # shared: nobody changes an ack after it is made


def _ack(kind: int, body: bytes | bytearray) -> pb.Ack:
    """The pb.Ack a reply frame stands for; LocalCallError for an error reply."""
    if kind == _KIND_OK:
        return _ACK_OK
    if kind == _KIND_REFUSED:
        return pb.Ack(ok=False, error=bytes(body).decode())
    code_name, _, details = bytes(body).decode().partition("\n")
    raise LocalCallError(getattr(grpc.StatusCode, code_name, grpc.StatusCode.UNKNOWN), details)


class LocalServer:
    """Accepts same-host deliveries for the process whose gRPC server is at `address`."""

    def __init__(self, address: str, on_delivery: Callable[[Delivery, object], pb.Ack], reader: ShmReader,
                 on_accepted: Callable[[Delivery, bool], None] | None = None) -> None:
        """`on_delivery(d, context)` checks a delivery and answers its ack. `on_accepted(d, more)`, if
        given, runs on the connection's thread after an ok ack went out: a stage worker runs the
        delivery's node there when its compute thread is free (no handoff to another thread per hop).
        `more`: the next message from that peer already arrived (a backlog the worker may share out
        to its other compute threads rather than run this one while the next waits)."""
        self.name = socket_name(address)
        self._on_delivery = on_delivery
        self._on_accepted = on_accepted
        self._reader = reader
        self._sock: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> bool:
        """Listen (False when this host or address has no same-host path, or the name is taken)."""
        if self.name is None:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.name)
            sock.listen(64)
        except OSError as e:
            log.info("no same-host socket for %r: %s", self.name, e)
            sock.close()
            return False
        self._sock = sock
        threading.Thread(target=self._accept_loop, name="local-accept", daemon=True).start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept_loop(self) -> None:
        listener = self._sock
        while listener is not None and not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            uid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[1]
            if uid != os.getuid():   # only this user's processes may hand us their segments
                conn.close()
                continue
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="local-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        ctx = _Context()
        frames = _Frames(conn)
        try:
            while not self._stop.is_set():
                msg = frames.next()
                if msg is None:
                    return
                kind, body = msg
                if body is None:   # never allocate what a peer claims beyond the gRPC limit
                    conn.sendall(_frame(_KIND_ERROR, f"INVALID_ARGUMENT\nmessage beyond {MAX_MESSAGE_BYTES} "
                                                     "bytes".encode()))
                    return
                if kind == _KIND_STREAM:
                    if len(body) < _SEQ.size:    # no sequence number to answer: the peer breaks the protocol
                        return
                    reply, accepted = self._handle_streamed(body, ctx)
                else:
                    reply, accepted = self._handle(kind, body, ctx)
                if reply:
                    conn.sendall(reply)
                if accepted is not None and self._on_accepted is not None:
                    try:
                        self._on_accepted(accepted, frames.buffered())
                    except Exception:  # the delivery was acknowledged: its fate is the receiver's to report
                        log.exception("same-host delivery %s->%s failed after its ack", accepted.src, accepted.dst)
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handle_streamed(self, body: bytes, ctx: _Context) -> tuple[bytes, Delivery | None]:
        """A streamed delivery (sequence number + handle): no reply and the segment marked accepted
        when it is taken, else a refusal or error naming the sequence number."""
        seq = body[:_SEQ.size]
        try:
            try:
                d, seg = self._reader.read_segment(body[_SEQ.size:])
            except WireError:
                raise
            except (OSError, ValueError) as e:
                raise LocalCallError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot map shared memory: {e}")
            ack = self._on_delivery(d, ctx)
        except LocalCallError as e:
            return _frame(_KIND_STREAM_ERROR, seq + f"{e.code().name}\n{e.details()}".encode()), None
        except WireError as e:
            return _frame(_KIND_STREAM_ERROR, seq + f"INVALID_ARGUMENT\n{e}".encode()), None
        except Exception as e:  # a bad delivery must not kill the connection; the sender gets the reason
            return _frame(_KIND_STREAM_ERROR, seq + f"INTERNAL\n{type(e).__name__}: {e}".encode()), None
        if not ack.ok:
            return _frame(_KIND_STREAM_REFUSED, seq + ack.error.encode()), None
        mark_accepted(seg)
        return b"", d

    def _handle(self, kind: int, body: bytes, ctx: _Context) -> tuple[bytes, Delivery | None]:
        """The reply frame to one request, and the delivery when it was acknowledged ok."""
        try:
            if kind == _KIND_SHM:
                try:
                    d = self._reader.read(body)
                except WireError:    # mapped, but what the segment holds is not a delivery
                    raise
                except (OSError, ValueError) as e:
                    raise LocalCallError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot map shared memory: {e}")
            elif kind == _KIND_BYTES:
                d = unpack_delivery(body)
            else:
                raise LocalCallError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown message kind {kind}")
            ack = self._on_delivery(d, ctx)
        except LocalCallError as e:
            return _frame(_KIND_ERROR, f"{e.code().name}\n{e.details()}".encode()), None
        except WireError as e:      # not a delivery (runtime.wire checks every field): not worth a retry
            return _frame(_KIND_ERROR, f"INVALID_ARGUMENT\n{e}".encode()), None
        except Exception as e:  # a bad delivery must not kill the connection; the sender gets the reason
            return _frame(_KIND_ERROR, f"INTERNAL\n{type(e).__name__}: {e}".encode()), None
        if ack.ok:
            return _OK_FRAME, d
        return _frame(_KIND_REFUSED, ack.error.encode()), None


def placement(specs: dict[str, tuple[np.dtype, tuple[int, ...]]], header_room: int) -> tuple | None:
    """Where `LocalClient.place` puts arrays of these dtypes and shapes: as a packed delivery
    (runtime.wire) with a header of at most `header_room` bytes holds them. ((name, dtype, count,
    offset, shape), ...) and the bytes needed; None below SHM_MIN_BYTES or for an empty array."""
    counts = {k: int(np.prod(shape, dtype=np.int64)) for k, (_, shape) in specs.items()}
    sizes = {k: counts[k] * dt.itemsize for k, (dt, _) in specs.items()}
    if not sizes or min(sizes.values()) <= 0 or sum(sizes.values()) < SHM_MIN_BYTES:
        return None
    off = -(-header_room // 64) * 64
    entries = []
    for k, (dt, shape) in specs.items():
        off += -off % 64
        entries.append((k, dt, counts[k], off, tuple(shape)))
        off += sizes[k]
    return tuple(entries), off


class Placed:
    """Arrays in a pooled shared-memory segment, laid out as a packed delivery's tensors after
    `header_room` bytes: a piece writes its outputs into `arrays` and the delivery carrying exactly
    these arrays goes out with only its header written (`LocalClient.place`; no copy of the tensors)."""

    def __init__(self, seg: SharedMemory, pool: ShmPool, arrays: dict[str, np.ndarray],
                 offsets: list[int] | None = None) -> None:
        self.seg = seg
        self.pool = pool
        self.arrays = arrays
        self.offsets = offsets    # where each array starts in the segment's payload (after its header)
        self.used = False       # a send took the segment (it then releases or discards it), or none will
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Claim the segment (once: True for the first caller)."""
        with self._lock:
            if self.used:
                return False
            self.used = True
            return True

    def carries(self, d: Delivery) -> bool:
        """True when `d`'s tensors are exactly these arrays."""
        return len(d.tensors) == len(self.arrays) and all(d.tensors.get(k) is a for k, a in self.arrays.items())

    def give_up(self) -> None:
        """No send took the segment: it leaves the pool (the arrays stay valid while referenced)."""
        if self.take():
            self.pool.discard(self.seg)


class _Stream:
    """A streamed connection to one peer: deliveries go out back to back (`LocalClient.start_call`);
    the calls the peer has not yet taken wait in `calls`, in sequence order."""

    __slots__ = ("sock", "name", "seq", "calls", "lock", "frames", "dead")

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.seq = 0
        self.calls: dict[int, tuple[_Lease, str, Callable, float]] = {}   # seq -> lease, address, on_reply, limit
        self.lock = threading.Lock()     # one writer at a time; `seq` and `calls`
        self.frames = _Frames(sock)      # replies (refusals and errors only), read under the reap lock
        self.dead = False


class LocalClient:
    """The sender's side: a streamed connection per peer for `start_call`, idle connections per peer
    for `call` (which waits for its reply).

    `start_call` only sends: the peer answers nothing when it takes the delivery but marks the
    segment accepted (runtime.shm), so the sender learns it from memory, on its next send to that
    peer or on the sweeper's tick (every `_SWEEP_S` while calls are open), which also reads the
    rare refusal or error and fails the calls past their timeout. A stage's compute thread thus
    goes on with its next request at once while the peer, perhaps waiting for a core on a busy
    host, has yet to take it (measured: 1-5 ms of such waiting per hop with every site on 2 shared
    cores), and no thread is woken per delivery to read an ack. An ok reaches the caller's callback
    at most `_SWEEP_S` late; nothing on a request's path waits for it.
    """

    def __init__(self) -> None:
        self._idle: dict[str, list[socket.socket]] = {}
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._pool: ShmPool | None = None
        self._closed = False
        # every open connection is in the epoll (level-triggered input) from its connect to its close:
        # a reply, or a connection its peer closed, shows up there
        self._epoll: select.epoll | None = None
        self._by_fd: dict[int, socket.socket | _Stream] = {}
        self._idle_socks: set[socket.socket] = set()
        self._sweeper: threading.Thread | None = None
        self._busy = threading.Event()     # set while streamed calls are open: the sweeper ticks
        self._wake = threading.Event()     # set by close(): the sweeper ends
        self._reap_lock = threading.Lock()

    def _watch(self, fd: int, conn: socket.socket | _Stream) -> None:
        """Put a new connection in the epoll (made on first use)."""
        with self._lock:
            if self._epoll is None and not self._closed:
                self._epoll = select.epoll()    # epoll itself: the selectors module costs microseconds per call
            if self._epoll is not None:
                self._by_fd[fd] = conn
                self._epoll.register(fd, select.EPOLLIN)

    def _connect(self, name: str) -> socket.socket | None:
        with self._lock:
            idle = self._idle.get(name)
            if idle:
                sock = idle.pop()
                self._idle_socks.discard(sock)
                return sock
        new = _dial(name)
        if new is not None:
            self._watch(new.fileno(), new)
        return new

    def _give_back(self, name: str, sock: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(name, [])
            if not self._closed and len(idle) < _IDLE_PER_PEER:
                idle.append(sock)
                self._idle_socks.add(sock)
                return
        self._close_sock(sock)

    def _close_sock(self, sock: socket.socket) -> None:
        """Close a connection (its epoll registration goes with its file descriptor)."""
        with self._lock:
            fd = sock.fileno()
            if fd >= 0 and self._by_fd.get(fd) is sock:
                del self._by_fd[fd]
        sock.close()

    def _shm_pool(self) -> ShmPool | None:
        with self._lock:
            if self._closed:
                return None
            if self._pool is None:
                self._pool = ShmPool()
            return self._pool

    def call(self, address: str, d: Delivery, deadline_s: float, arrival_s: float,
             timeout_s: float | None = None) -> pb.Ack | None:
        """Deliver `d` to the process at loopback `address` (waiting for the reply until the deadline,
        or `timeout_s` if sooner); None when it has no same-host socket (the caller uses gRPC).
        Raises LocalCallError like a failed gRPC call otherwise."""
        name = socket_name(address)
        sock = self._connect(name) if name else None
        if name is None or sock is None:
            return None
        try:
            kind, body, lease = self._packed(d, placed_ok=False, shm_always=False)
        except BaseException:
            self._give_back(name, sock)
            raise
        try:
            wait = arrival_s - time.monotonic()
            if wait > 0:          # the emulated link's time runs before the delivery arrives
                time.sleep(wait)
            wait_s = deadline_s - time.time()
            sock.settimeout(max(min(wait_s, timeout_s) if timeout_s is not None else wait_s, 1e-3))
            sock.sendall(_frame(kind, body))
            reply = _recv_message(sock, bytearray(_REPLY_BYTES))
        except OSError as e:      # peer gone or the deadline passed mid-call: the connection is spent
            self._close_sock(sock)
            _drop(lease)   # the receiver may still read it: never reuse
            code = grpc.StatusCode.DEADLINE_EXCEEDED if isinstance(e, TimeoutError) else grpc.StatusCode.UNAVAILABLE
            raise LocalCallError(code, f"same-host call to {address} failed: {e}") from e
        if reply is None or reply[1] is None:
            self._close_sock(sock)
            _drop(lease)
            raise LocalCallError(grpc.StatusCode.UNAVAILABLE, f"same-host peer {address} closed the connection")
        _keep(lease)
        self._give_back(name, sock)
        return _ack(reply[0], reply[1])

    def place(self, layout: tuple) -> Placed | None:
        """Arrays in one pooled segment as `placement` laid them out (None once closed)."""
        entries, total = layout
        pool = self._shm_pool()
        if pool is None:
            return None
        seg = pool.acquire(total)
        buf = seg_buf(seg)
        return Placed(seg, pool, {k: np.frombuffer(buf, dt, count, SEG_HEADER_BYTES + off).reshape(shape)
                                  for k, dt, count, off, shape in entries}, [e[3] for e in entries])

    def _owns(self, placed: Placed) -> bool:
        """True when `placed` lies in this client's pool."""
        return placed.pool is self._pool

    def _packed(self, d: Delivery, placed_ok: bool, shm_always: bool) -> tuple[int, bytes, _Lease | None]:
        """(kind, body, lease) of `d`: a handle to its packed form in a pooled segment (only its header
        written when its tensors already lie in one: `place`) from SHM_MIN_BYTES on or `shm_always`,
        else its packed bytes (no lease)."""
        placed = d.placed
        if placed_ok and isinstance(placed, Placed) and placed.carries(d) and self._owns(placed) and placed.take():
            payload = placed.pool.payload(placed.seg)
            n = pack_header_into(d, payload, 0, placed.offsets) if placed.offsets is not None else \
                pack_header_into(d, payload, np.frombuffer(payload, np.uint8, 1).ctypes.data)
            del payload
            if n is not None:
                return _KIND_SHM, encode_ref(placed.seg.name, n), (placed.seg, placed.pool)
            placed.pool.discard(placed.seg)    # the header did not fit: pack as usual (the arrays stay valid)
        pool = self._shm_pool() if shm_always or d.nbytes >= SHM_MIN_BYTES else None
        if pool is None:
            if shm_always:
                raise LocalCallError(grpc.StatusCode.CANCELLED, "same-host client closed")
            return _KIND_BYTES, pack_delivery(d), None
        layout = packed_layout(d)
        seg = pool.acquire(packed_size(d, layout))
        lease = (seg, pool)
        try:
            return _KIND_SHM, encode_ref(seg.name, pack_delivery_into(d, pool.payload(seg), layout)), lease
        except BaseException:
            _drop(lease)
            raise

    def _stream(self, name: str, fresh: bool = False) -> _Stream | None:
        """The streamed connection to the peer at socket `name` (connected on first use, or anew with
        `fresh`; None when nobody listens there)."""
        st = self._streams.get(name)
        if st is not None and not st.dead and not fresh:
            return st
        sock = _dial(name)
        if sock is None:
            return None
        # the longest a send (or a reply's read) may block, kept by the kernel: a blocking socket makes
        # one system call per send where a Python timeout adds a poll; the calls' own limits are the sweeper's
        limit = struct.pack("ll", int(_SEND_TIMEOUT_S), int(_SEND_TIMEOUT_S % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        st = _Stream(sock, name)
        with self._lock:
            cur = self._streams.get(name)
            if self._closed or (cur is not None and not cur.dead):
                sock.close()
                return None if self._closed else cur
            self._streams[name] = st
        self._watch(sock.fileno(), st)
        return st

    def start_call(self, address: str, d: Delivery, deadline_s: float, timeout_s: float,
                   on_reply: Callable[[pb.Ack | None, LocalCallError | None], None]) -> bool:
        """Send `d` to the process at loopback `address` without waiting: False when it has no
        same-host socket (nothing was sent). Raises LocalCallError if the send itself fails. Later
        (see the class doc) `on_reply(ack, None)` once the peer took it (or refused it: a not-ok
        ack) or `on_reply(None, error)` when it answers an error, breaks the connection or does not
        take it within `timeout_s` (or by the deadline); the segment is reused only after that."""
        name = socket_name(address)
        if name is None:
            return False
        _, body, lease = self._packed(d, placed_ok=True, shm_always=True)
        assert lease is not None    # shm_always: the delivery lies in a segment
        limit_s = time.monotonic() + max(min(deadline_s - time.time(), timeout_s), 1e-3)
        for fresh in (False, True):    # a stream whose peer went away since its last call: once more on a new one
            st = self._stream(name, fresh)
            if st is None:
                _drop(lease)
                return False
            if st.calls:
                self._confirm(st)    # calls the peer took meanwhile: their segments go back to the pool
            failed: OSError | None = None
            with st.lock:
                if not st.dead:
                    seq = st.seq
                    st.seq += 1
                    st.calls[seq] = (lease, address, on_reply, limit_s)
                    try:
                        st.sock.sendall(_HEAD.pack(_SEQ.size + len(body), _KIND_STREAM) + _SEQ.pack(seq) + body)
                        break
                    except OSError as e:
                        del st.calls[seq]
                        failed = e
            if failed is None:    # ended by another thread meanwhile
                continue
            # a send cut short leaves the stream unframed: it ends, its open calls fail
            late = isinstance(failed, (TimeoutError, BlockingIOError))    # the kernel's send limit ran out
            code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.UNAVAILABLE
            self._break(st, code, f"same-host call to {{address}} failed: {failed}")
            if fresh or late:
                _drop(lease)
                raise LocalCallError(code, f"same-host call to {address} failed: {failed}") from failed
        else:     # every stream ended under us (the client closing): nothing was sent
            _drop(lease)
            return False
        if not self._busy.is_set():
            self._busy.set()
        if self._sweeper is None:
            with self._lock:
                if self._sweeper is None and not self._closed:
                    self._sweeper = threading.Thread(target=self._sweep_loop, name="local-replies", daemon=True)
                    self._sweeper.start()
        return True

    def _confirm(self, st: _Stream) -> None:
        """Finish the calls of `st` whose segment the peer marked accepted, oldest first (it takes
        them in order)."""
        done = []
        with st.lock:
            for seq, call in st.calls.items():
                if not is_accepted(call[0][0]):
                    break
                done.append(seq)
            calls = [st.calls.pop(seq) for seq in done]
        for lease, _, on_reply, _ in calls:
            _keep(lease)
            _notify(on_reply, _ACK_OK, None)

    def _break(self, st: _Stream, code: grpc.StatusCode, details: str) -> None:
        """End a stream (closed, broken or late): its open calls fail with `code`, their segments
        leave the pool (the peer may still read them)."""
        with st.lock:
            st.dead = True
            calls = list(st.calls.values())
            st.calls.clear()
        with self._lock:
            if self._streams.get(st.name) is st:
                del self._streams[st.name]
            fd = st.sock.fileno()
            if fd >= 0 and self._by_fd.get(fd) is st:
                del self._by_fd[fd]
        st.sock.close()
        for lease, address, on_reply, _ in calls:
            _drop(lease)
            _notify(on_reply, None, LocalCallError(code, details.replace("{address}", address)))

    def _replies(self, st: _Stream) -> None:
        """Read the refusals and errors that arrived on `st` (epoll said it is readable); a closed
        connection ends the stream."""
        got = []
        try:
            with self._reap_lock:
                msg = st.frames.next()
                while msg is not None:
                    got.append(msg)
                    if not st.frames.buffered():
                        break
                    msg = st.frames.next()
        except OSError as e:
            self._break(st, grpc.StatusCode.UNAVAILABLE, f"same-host call to {{address}} failed: {e}")
            return
        for kind, body in got:
            if body is None or len(body) < _SEQ.size or kind not in (_KIND_STREAM_REFUSED, _KIND_STREAM_ERROR):
                self._break(st, grpc.StatusCode.UNAVAILABLE, "same-host peer {address} broke the protocol")
                return
            (seq,) = _SEQ.unpack_from(body)
            with st.lock:
                call = st.calls.pop(seq, None)
            if call is None:
                continue
            lease, _, on_reply, _ = call
            _keep(lease)
            text = body[_SEQ.size:].decode(errors="replace")
            if kind == _KIND_STREAM_REFUSED:
                _notify(on_reply, pb.Ack(ok=False, error=text), None)
            else:
                code_name, _, details = text.partition("\n")
                _notify(on_reply, None, LocalCallError(getattr(grpc.StatusCode, code_name, grpc.StatusCode.UNKNOWN),
                                                       details))
        if msg is None and not got:
            self._break(st, grpc.StatusCode.UNAVAILABLE, "same-host peer {address} closed the connection")

    def reap(self) -> None:
        """Finish the streamed calls the peers took, read refusals and errors (one epoll_wait that
        does not wait) and close idle connections their peer closed. Any thread may call it."""
        ep = self._epoll
        if ep is not None:
            try:
                events = ep.poll(0)
            except (OSError, ValueError):   # closed meanwhile
                events = []
            for fd, _ in events:
                with self._lock:
                    conn = self._by_fd.get(fd)
                    stale = isinstance(conn, socket.socket) and conn in self._idle_socks
                    if stale:      # an idle connection is readable only once its peer closed it (or broke the protocol)
                        self._idle_socks.discard(conn)
                        for idle in self._idle.values():
                            if conn in idle:
                                idle.remove(conn)
                if isinstance(conn, _Stream):
                    self._replies(conn)
                elif stale and isinstance(conn, socket.socket):
                    self._close_sock(conn)
        for st in list(self._streams.values()):
            if st.calls:
                self._confirm(st)

    def _sweep_loop(self) -> None:
        """While streamed calls are open: every _SWEEP_S, reap (see `reap`) and end the streams whose
        oldest open call is past its timeout. Sleeps while none is open."""
        while not self._wake.is_set():
            if not self._busy.wait(1.0):
                continue
            if self._wake.wait(_SWEEP_S):
                return
            self.reap()
            now = time.monotonic()
            open_calls = False
            for st in list(self._streams.values()):
                with st.lock:
                    oldest = next(iter(st.calls.values()), None)
                if oldest is not None and oldest[3] <= now:
                    self._break(st, grpc.StatusCode.DEADLINE_EXCEEDED,
                                "same-host peer {address} did not take the delivery in time")
                elif oldest is not None:
                    open_calls = True
            if not open_calls:
                self._busy.clear()
                if any(st.calls for st in list(self._streams.values())):   # one started meanwhile
                    self._busy.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks = [s for idle in self._idle.values() for s in idle]
            self._idle.clear()
            self._idle_socks.clear()
            pool, self._pool = self._pool, None
            streams = list(self._streams.values())
            self._by_fd.clear()
            ep, self._epoll = self._epoll, None
        self._wake.set()
        self._busy.set()
        for s in socks:
            s.close()
        for st in streams:
            self._break(st, grpc.StatusCode.CANCELLED, "same-host call to {address} cancelled")
        if ep is not None:
            ep.close()
        if pool is not None:
            pool.close()


def _dial(name: str) -> socket.socket | None:
    """A new connection to the abstract socket `name` (None when nobody listens there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(name)
    except OSError:
        sock.close()
        return None
    return sock


def _notify(on_reply: Callable, ack: pb.Ack | None, error: LocalCallError | None) -> None:
    """Tell a caller how its call ended (a failing callback must not stop the thread that reaps)."""
    try:
        on_reply(ack, error)
    except Exception as e:
        log.warning("same-host reply handler failed: %s", e)
