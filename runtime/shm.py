"""Same-host fast path: a delivery's bytes in shared memory, only a small handle over gRPC.

Between two processes on one host, a 1.5 MB tensor sent over gRPC on loopback is copied five or
six times (pack, gRPC's buffers, the kernel twice, the receiver's bytes) and costs 1-3 ms of CPU
on each hop. Here the sender packs the delivery once into a shared-memory segment from its own
pool (`runtime.wire.pack_delivery_into`, the same layout as a packed message) and sends the
segment's name and length on the ordinary gRPC channel, so the call keeps its deadline, token
and mutual TLS. The receiver maps the segment (mappings are cached), copies the tensors out and
acknowledges; only then does the sender reuse the segment. A call that fails or times out
discards its segment (the receiver may still be reading it).

Only peers whose address is a loopback address get handles; a receiver that cannot map a
segment (another host, another /dev/shm) answers FAILED_PRECONDITION and the sender falls back
to sending the bytes. Segments are created by the standard library's SharedMemory, whose
resource tracker unlinks them if the sending process dies without closing its pool.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import threading
import uuid
from collections import OrderedDict
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

__all__ = ["SHM_MIN_BYTES", "SHM_PREFIX", "ShmPool", "ShmReader", "is_loopback_address", "encode_ref",
           "decode_ref", "sweep_stale"]

SHM_MIN_BYTES = 64 << 10       # smaller deliveries go inline: one copy of a few KB costs less than a handle
SHM_PREFIX = "tierplan-"        # every segment name starts so; a receiver maps no other name
_MIN_SEGMENT_BYTES = 64 << 10
_FREE_PER_SIZE = 16             # free segments kept per size class (8 concurrent requests need about 8)
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


def is_loopback_address(address: str) -> bool:
    """True for host:port addresses on this host's loopback (127.0.0.0/8, ::1, localhost) and unix: sockets."""
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
        self._all: dict[str, shared_memory.SharedMemory] = {}
        self._lock = threading.Lock()
        self._tag = f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._n = 0
        self._closed = False
        sweep_stale()

    def acquire(self, nbytes: int) -> shared_memory.SharedMemory:
        size = _size_class(nbytes)
        with self._lock:
            if self._closed:
                raise RuntimeError("shared-memory pool is closed")
            free = self._free.get(size)
            if free:
                return free.pop()
            self._n += 1
            name = f"{self._tag}-{self._n}"
        seg = shared_memory.SharedMemory(name=name, create=True, size=size)
        with self._lock:
            self._all[seg.name] = seg
        return seg

    def release(self, seg: shared_memory.SharedMemory) -> None:
        """Back to the pool (the receiver acknowledged: it no longer reads the segment)."""
        with self._lock:
            free = self._free.setdefault(seg.size, [])
            if not self._closed and len(free) < _FREE_PER_SIZE:
                free.append(seg)
                return
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
        for seg in segs:
            _close(seg, unlink=True)


class ShmReader:
    """The receiver's mappings of senders' segments, by name (least recently used closed first)."""

    def __init__(self, capacity: int = _READER_CACHE) -> None:
        self._maps: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def view(self, name: str, nbytes: int) -> tuple[memoryview, shared_memory.SharedMemory]:
        """A view of the first `nbytes` of segment `name` (OSError/ValueError if it cannot be mapped)."""
        with self._lock:
            seg = self._maps.get(name)
            if seg is not None:
                self._maps.move_to_end(name)
        if seg is None:
            seg = shared_memory.SharedMemory(name=name, create=False)
            # the sender owns the segment: without this, this process's tracker would unlink it at exit
            resource_tracker.unregister(seg._name, "shared_memory")  # noqa: SLF001 (stdlib's own name)
            with self._lock:
                self._maps[name] = seg
                old = [self._maps.popitem(last=False)[1] for _ in range(max(len(self._maps) - self._capacity, 0))]
            for o in old:
                _close(o, unlink=False)
        if nbytes > seg.size:
            raise ValueError(f"handle for {nbytes} bytes, segment {name} holds {seg.size}")
        return seg.buf[:nbytes], seg

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


def _close(seg: shared_memory.SharedMemory, unlink: bool) -> None:
    try:
        seg.close()
    except BufferError:   # a view is still alive somewhere: the mapping goes when it does
        pass
    if unlink:
        try:
            seg.unlink()
        except FileNotFoundError:
            pass
