"""Same-host fast path: a delivery's bytes in shared memory, only a small handle over gRPC.

Between two processes on one host, a 1.5 MB tensor sent over gRPC on loopback is copied five or
six times (pack, gRPC's buffers, the kernel twice, the receiver's bytes) and costs 1-3 ms of CPU
on each hop. Here the sender packs the delivery once into a shared-memory segment from its own
pool (`runtime.wire.pack_delivery_into`, the same layout as a packed message, after a 64-byte
segment header) and sends the segment's name and length: on the same-host socket
(runtime.localwire) or on the gRPC channel, which keeps its deadline, token and mutual TLS. The
receiver maps the segment (mappings are cached) and either copies the tensors out (the
controller: results go to the user) or uses them in place (stage workers: the piece reads its
inputs straight from the segment). The header's first byte says whether a receiver still uses
the segment's arrays: set by the sender, cleared by the receiver after its copy or when the last
array of the segment is garbage (a weakref finalizer); the sender reuses a segment only once it
is clear. The second byte says that the receiver took the delivery (`mark_accepted`): a streamed
same-host call (runtime.localwire) gets no reply, its sender reads this byte instead. A call
that fails or times out discards its segment (the receiver may still read it).

Only peers whose address is a loopback address get handles; a receiver that cannot map a
segment (another host, another /dev/shm) answers FAILED_PRECONDITION and the sender falls back
to sending the bytes. Segments are created by the standard library's SharedMemory, whose
resource tracker unlinks them if the sending process dies without closing its pool.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import struct
import threading
import uuid
import weakref
from collections import OrderedDict
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

from tierplan.runtime.wire import Delivery, unpack_delivery

__all__ = ["SHM_MIN_BYTES", "SHM_PREFIX", "SEG_HEADER_BYTES", "ShmPool", "ShmReader", "is_loopback_address", "encode_ref",
           "decode_ref", "sweep_stale", "seg_buf", "mark_accepted", "is_accepted"]

SHM_MIN_BYTES = 64 << 10       # smaller deliveries go inline: one copy of a few KB costs less than a handle
SHM_PREFIX = "tierplan-"        # every segment name starts so; a receiver maps no other name
_MIN_SEGMENT_BYTES = 64 << 10
_FREE_PER_SIZE = 16             # free segments kept per size class (8 concurrent requests need about 8)
_LENT_MAX = 64                  # segments whose arrays receivers still use; beyond, the oldest is unlinked
SEG_HEADER_BYTES = 64           # byte 0: 1 while a receiver may still use the segment, 0 when it may be reused;
                                # byte 1: 1 once a receiver took the delivery (`mark_accepted`)
_READER_CACHE = 64              # segments a receiver keeps mapped
_REF = struct.Struct("<Q")      # a handle: uint64 LE length of the packed delivery, then the name (UTF-8)
_SHM_DIR = Path("/dev/shm")     # where POSIX shared memory appears on Linux


def sweep_stale(shm_dir: Path = _SHM_DIR) -> list[str]:
    """Unlink segments whose creating process is gone (names carry its pid); returns their names.

    A killed site worker (a Ray node removed, `ray.kill`) may take its resource tracker with it,
    so pools sweep when they start and the controller sweeps when it shuts down.
    """
    gone = []
    for path in shm_dir.glob(f"{SHM_PREFIX}*") if shm_dir.is_dir() else ():
        pid_text = path.name[len(SHM_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            path.unlink()
            gone.append(path.name)
        except OSError:   # swept by another process meanwhile
            pass
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process: alive
        return True
    return True


@functools.lru_cache(maxsize=1024)
def is_loopback_address(address: str) -> bool:
    """(Cached: senders ask on every hop.) True for host:port addresses on this host's loopback (127.0.0.0/8, ::1, localhost) and unix: sockets."""
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def encode_ref(name: str, nbytes: int) -> bytes:
    """The gRPC message that stands for a delivery packed into segment `name` (its first `nbytes`)."""
    return _REF.pack(nbytes) + name.encode()


def decode_ref(msg: bytes) -> tuple[str, int]:
    """(segment name, packed length) of a handle message; ValueError if it is not one of ours."""
    if len(msg) <= _REF.size:
        raise ValueError("shared-memory handle too short")
    (nbytes,) = _REF.unpack_from(msg, 0)
    name = bytes(msg[_REF.size:]).decode()
    if not name.startswith(SHM_PREFIX) or "/" in name:
        raise ValueError(f"shared-memory handle names {name!r}, not a tierplan segment")
    return name, nbytes


def _size_class(nbytes: int) -> int:
    return max(_MIN_SEGMENT_BYTES, 1 << max(nbytes - 1, 1).bit_length())


class ShmPool:
    """The sender's segments: acquire one at least `nbytes` long, release it after the ack, reuse it.

    Reuse matters: a fresh segment costs a page fault per 4 KiB on first touch (on both ends).
    """

    def __init__(self) -> None:
        self._free: dict[int, list[shared_memory.SharedMemory]] = {}
        self._lent: list[shared_memory.SharedMemory] = []    # acknowledged, possibly still in use
        self._all: dict[str, shared_memory.SharedMemory] = {}
        self._lock = threading.Lock()
        self._tag = f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._n = 0
        self._closed = False
        sweep_stale()

    def acquire(self, nbytes: int) -> shared_memory.SharedMemory:
        """A segment with room for `nbytes` after the header, marked in use (see `payload`)."""
        size = _size_class(nbytes + SEG_HEADER_BYTES)
        with self._lock:
            if self._closed:
                raise RuntimeError("shared-memory pool is closed")
            free = self._free.get(size)
            seg = free.pop() if free else None
            if seg is None:
                for i, lent in enumerate(self._lent):
                    if lent.size == size and seg_buf(lent)[0] == 0:   # its receiver let go of it
                        seg = self._lent.pop(i)
                        break
            if seg is None:
                self._n += 1
                name = f"{self._tag}-{self._n}"
        if seg is None:
            seg = shared_memory.SharedMemory(name=name, create=True, size=size)
            with self._lock:
                self._all[seg.name] = seg
        buf = seg_buf(seg)
        buf[0] = 1
        buf[1] = 0
        return seg

    @staticmethod
    def payload(seg: shared_memory.SharedMemory) -> memoryview:
        """Where the packed delivery goes (after the header)."""
        return seg_buf(seg)[SEG_HEADER_BYTES:]

    def release(self, seg: shared_memory.SharedMemory) -> None:
        """The receiver acknowledged: reuse the segment once its in-use byte is clear (at once for a
        receiver that copied, when its arrays are gone for one that uses them in place)."""
        with self._lock:
            if not self._closed:
                if seg_buf(seg)[0] == 0:
                    free = self._free.setdefault(seg.size, [])
                    if len(free) < _FREE_PER_SIZE:
                        free.append(seg)
                        return
                else:
                    self._lent.append(seg)
                    if len(self._lent) <= _LENT_MAX:
                        return
                    seg = self._lent.pop(0)
        self.discard(seg)

    def discard(self, seg: shared_memory.SharedMemory) -> None:
        """Unlink and unmap (a receiver that still maps it keeps its mapping until it lets go)."""
        with self._lock:
            self._all.pop(seg.name, None)
        _close(seg, unlink=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            segs = list(self._all.values())
            self._all.clear()
            self._free.clear()
            self._lent.clear()
        for seg in segs:
            _close(seg, unlink=True)


class ShmReader:
    """The receiver's mappings of senders' segments, by name (least recently used closed first).

    `in_place`: deliveries' arrays are views of the segment (the sender reuses it when they are
    all gone); otherwise they are copied out and the segment is free at once.
    """

    def __init__(self, capacity: int = _READER_CACHE, in_place: bool = False, raw_trace: bool = False) -> None:
        self.raw_trace = raw_trace     # traces passed on unread (runtime.wire.RawSteps): a stage worker's reader
        self._maps: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity
        self.in_place = in_place
        self._watch: dict[int, weakref.ref] = {}   # weak references to in-place arrays' bases (see `read`)

    def read(self, handle: bytes) -> Delivery:
        """The delivery a handle (`encode_ref`) names; OSError/ValueError if it cannot be mapped."""
        return self.read_segment(handle)[0]

    def read_segment(self, handle: bytes) -> tuple[Delivery, shared_memory.SharedMemory]:
        """`read`, and the segment it lies in (for `mark_accepted`)."""
        name, nbytes = decode_ref(handle)
        seg = self._segment(name)
        if nbytes + SEG_HEADER_BYTES > seg.size:
            raise ValueError(f"handle for {nbytes} bytes, segment {name} holds {seg.size - SEG_HEADER_BYTES}")
        buf = seg_buf(seg)
        base = np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=SEG_HEADER_BYTES)
        if not self.in_place:
            d = unpack_delivery(base, copy=True, raw_trace=self.raw_trace)
            del base
            buf[0] = 0
            return d, seg
        d = unpack_delivery(base, raw_trace=self.raw_trace)
        # every array of d is a view of base: when the last one goes, the sender may reuse the segment
        # (a weak reference with a callback, kept alive here: cheaper than weakref.finalize per delivery)
        ref = weakref.ref(base, functools.partial(self._let_go, seg))
        self._watch[id(ref)] = ref     # one dict operation: atomic, no lock (the callback may run in any thread)
        return d, seg

    def _let_go(self, seg: shared_memory.SharedMemory, ref: weakref.ref) -> None:
        self._watch.pop(id(ref), None)
        _clear(seg)

    def _segment(self, name: str) -> shared_memory.SharedMemory:
        """The mapping of segment `name` (OSError if it cannot be mapped)."""
        with self._lock:
            seg = self._maps.get(name)
            if seg is not None:
                self._maps.move_to_end(name)
        if seg is None:
            seg = shared_memory.SharedMemory(name=name, create=False)
            if not name.startswith(f"{SHM_PREFIX}{os.getpid()}-"):
                # the sender owns the segment: without this, this process's tracker would unlink it
                # at exit (a segment of this very process keeps its creator's registration)
                resource_tracker.unregister(getattr(seg, "_name"), "shared_memory")  # the stdlib's own (private) name
            with self._lock:
                self._maps[name] = seg
                old = [self._maps.popitem(last=False)[1] for _ in range(max(len(self._maps) - self._capacity, 0))]
            for o in old:
                _close(o, unlink=False)
        return seg

    def forget(self, name: str) -> None:
        """Drop a mapping (its sender discarded the segment, or it went away)."""
        with self._lock:
            seg = self._maps.pop(name, None)
        if seg is not None:
            _close(seg, unlink=False)

    def close(self) -> None:
        with self._lock:
            segs = list(self._maps.values())
            self._maps.clear()
        for seg in segs:
            _close(seg, unlink=False)


def seg_buf(seg: shared_memory.SharedMemory) -> memoryview:
    """`seg.buf` (None only once the segment is closed: ValueError then)."""
    buf = seg.buf
    if buf is None:
        raise ValueError(f"shared-memory segment {seg.name} is closed")
    return buf


def mark_accepted(seg: shared_memory.SharedMemory) -> None:
    """The receiver took the delivery in `seg` (its sender reads this instead of a reply)."""
    _set(seg, 1, 1)


def is_accepted(seg: shared_memory.SharedMemory) -> bool:
    """True once the receiver marked the delivery in `seg` taken (False for a closed segment)."""
    buf = seg.buf
    return buf is not None and buf[1] == 1


def _set(seg: shared_memory.SharedMemory, at: int, value: int) -> None:
    """Header byte `at` := value, unless the mapping went meanwhile (nothing to tell then)."""
    buf = seg.buf
    if buf is None:
        return
    try:
        buf[at] = value
    except (TypeError, ValueError):   # released meanwhile
        pass


def _clear(seg: shared_memory.SharedMemory) -> None:
    """The receiver no longer uses the segment's arrays: its sender may reuse it."""
    _set(seg, 0, 0)


_UNCLOSED: list[shared_memory.SharedMemory] = []   # closed once their arrays are gone (see `_close`)
_UNCLOSED_LOCK = threading.Lock()


def _close(seg: shared_memory.SharedMemory, unlink: bool) -> None:
    with _UNCLOSED_LOCK:
        for old in list(_UNCLOSED):
            try:
                old.close()
                _UNCLOSED.remove(old)
            except BufferError:
                pass
        try:
            seg.close()
        except BufferError:   # an array still uses the mapping: kept here until it goes (SharedMemory's
            _UNCLOSED.append(seg)   # own __del__ would otherwise print the BufferError when collected)
    if unlink:
        try:
            seg.unlink()
        except FileNotFoundError:
            pass
