"""Same-host fast path: shared-memory segments, the Unix-socket transport, and the gRPC fallbacks (real sockets, real gRPC)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from tierplan.runtime.links import LinkEmulator
from tierplan.runtime.localwire import LocalServer, socket_name
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.shm import SHM_MIN_BYTES, ShmPool, ShmReader, encode_ref, is_loopback_address, sweep_stale
from tierplan.runtime.transport import Sender, delivery_handlers
from tierplan.runtime.wire import (GRPC_OPTIONS, RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, Delivery, pack_delivery,
                          pack_delivery_into, packed_size, unpack_delivery)

SHM_DIR = Path("/dev/shm")


class _Endpoint:
    """A loopback delivery endpoint: gRPC (all raw forms) plus, if asked, the same-host socket.
    Records each delivery and whether it came over the socket (its context is not a gRPC one)."""

    def __init__(self, local: bool = True) -> None:
        self.got: list[tuple[Delivery, bool]] = []
        self._lock = threading.Lock()
        self.reader = ShmReader()
        self.srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=GRPC_OPTIONS)
        self.srv.add_generic_rpc_handlers(delivery_handlers(RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, self._receive,
                                                            self.reader))
        port = self.srv.add_insecure_port("127.0.0.1:0")
        self.srv.start()
        self.address = f"127.0.0.1:{port}"
        self.local = LocalServer(self.address, self._receive, self.reader)
        if local:
            assert self.local.start()

    def _receive(self, d: Delivery, context) -> pb.Ack:
        with self._lock:
            self.got.append((d, not isinstance(context, grpc.ServicerContext)))
        return pb.Ack(ok=True)

    def stop(self) -> None:
        self.local.stop()
        self.srv.stop(0)
        self.reader.close()


def _delivery(rid: str, x: np.ndarray, seconds: float = 20.0) -> Delivery:
    return Delivery(rid, "x", "y", {"t": x}, deadline_unix_ms=(time.time() + seconds) * 1e3, trace=[["compute", "x", 1.0]])


def _segments(tag: str) -> set[str]:
    return {p.name for p in SHM_DIR.glob(f"{tag}*")}


def test_pack_into_writes_the_packed_layout_and_copied_unpack_owns_its_arrays():
    """pack_delivery_into writes exactly pack_delivery's bytes; unpack with copy gives arrays that do not share the buffer."""
    d = Delivery("r", "p", "q", {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "e": np.zeros((0, 2), np.int64),
                                 "c": np.arange(5, dtype=np.uint8)}, branch="0/2", trace=[["compute", "p@s", 2.0]])
    buf = bytearray(packed_size(d) + 100)
    n = pack_delivery_into(d, memoryview(buf))
    assert bytes(buf[:n]) == pack_delivery(d)
    back = unpack_delivery(memoryview(buf)[:n], copy=True)
    assert back.branch == "0/2" and back.trace == d.trace and back.tensors["e"].shape == (0, 2)
    for k in ("a", "c"):
        assert np.array_equal(back.tensors[k], d.tensors[k])
        assert not np.shares_memory(back.tensors[k], np.frombuffer(buf, np.uint8))
    with pytest.raises(ValueError):
        pack_delivery_into(d, memoryview(bytearray(n - 1)))


def _packed_into(pool: ShmPool, d: Delivery):
    seg = pool.acquire(packed_size(d))
    return seg, encode_ref(seg.name, pack_delivery_into(d, pool.payload(seg)))


def test_pool_reuses_a_segment_once_its_reader_copied_and_unlinks_everything_on_close():
    """A segment whose receiver copied the tensors out is handed out again within its size class; close() leaves nothing."""
    pool, reader = ShmPool(), ShmReader()
    x = np.arange(75_000, dtype=np.float32)                  # 300 kB
    a, ref = _packed_into(pool, Delivery("r", "p", "q", {"t": x}))
    got = reader.read(ref)
    pool.release(a)
    b = pool.acquire(400_000)     # the same power-of-two size class as 300 kB
    c = pool.acquire(400_000)
    assert b.name == a.name and c.name != a.name
    assert np.array_equal(got.tensors["t"], x)
    b.buf[100:200] = bytes(100)  # reusing the segment does not touch the reader's copy
    assert np.array_equal(got.tensors["t"], x)
    tag = a.name.rsplit("-", 1)[0]
    assert len(_segments(tag)) == 2
    reader.close()
    pool.close()
    assert _segments(tag) == set()


def test_a_segment_read_in_place_is_reused_only_after_its_arrays_are_gone():
    """In-place reads are views of the segment; the sender gets the segment back only when the last view is garbage."""
    pool, reader = ShmPool(), ShmReader(in_place=True)
    x = np.arange(50_000, dtype=np.float32)
    try:
        a, ref = _packed_into(pool, Delivery("r", "p", "q", {"t": x}))
        got = reader.read(ref)
        pool.release(a)
        t = got.tensors["t"]
        assert np.array_equal(t, x) and not t.flags.owndata
        raw = np.frombuffer(a.buf, np.uint8)                  # the sender's own mapping of the segment
        at = raw.tobytes().find(x[:16].tobytes())
        raw[at:at + 4] = np.frombuffer(np.float32(7.0).tobytes(), np.uint8)
        del raw
        assert t[0] == 7.0                                    # the reader's array is the segment's memory
        b = pool.acquire(200_000)
        assert b.name != a.name                               # still in use by the reader
        del got, t
        c = pool.acquire(200_000)
        assert c.name == a.name                               # the last view is gone: reused
    finally:
        reader.close()
        pool.close()


def test_sweep_unlinks_segments_of_a_dead_process_only():
    """Segments whose creator died without cleaning up are swept; a live process's segments stay."""
    code = ("from multiprocessing import shared_memory, resource_tracker; import os;"
            "s = shared_memory.SharedMemory(name=f'tierplan-{os.getpid()}-t-1', create=True, size=4096);"
            "resource_tracker.unregister(s._name, 'shared_memory'); print(s.name)")
    name = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert (SHM_DIR / name).exists()
    swept = sweep_stale()
    assert name in swept and not (SHM_DIR / name).exists()
    mine = ShmPool()
    seg = mine.acquire(1000)
    try:
        assert seg.name not in sweep_stale() and (SHM_DIR / seg.name).exists()
    finally:
        mine.close()


def test_only_loopback_addresses_get_the_same_host_path():
    """127.0.0.0/8, ::1 and localhost are same-host; other hosts are not and have no socket name."""
    assert is_loopback_address("127.0.0.1:5000") and is_loopback_address("[::1]:5000")
    assert is_loopback_address("localhost:1") and is_loopback_address("127.3.2.1:9")
    assert not is_loopback_address("10.0.0.7:5000") and not is_loopback_address("example.org:443")
    assert socket_name("10.0.0.7:5000") is None and socket_name("127.0.0.1:5000") == "\0tierplan-rt-5000"


def test_same_host_sender_uses_the_socket_and_shared_memory_for_every_size():
    """Small, shared-memory-sized and multi-MiB deliveries all arrive intact over the same-host socket, and reused segments stay consistent."""
    ep = _Endpoint(local=True)
    sender = Sender("a", None, lambda: LinkEmulator())
    rng = np.random.default_rng(5)
    xs = [rng.random(n).astype(np.float32) for n in (100, SHM_MIN_BYTES // 4, 400_000, 400_000, 3_000_000)]
    try:
        for i, x in enumerate(xs):
            assert sender.send(lambda: ep.address, _delivery(f"r{i}", x), "") == ""
    finally:
        sender.close()
        ep.stop()
    assert [d.request_id for d, _ in ep.got] == [f"r{i}" for i in range(len(xs))]
    assert all(local for _, local in ep.got)
    for (d, _), x in zip(ep.got, xs):
        assert np.array_equal(d.tensors["t"], x) and d.trace == [["compute", "x", 1.0]]


def test_without_a_socket_big_deliveries_go_as_a_shared_memory_handle_over_grpc():
    """A peer with gRPC only (e.g. another netns or an older worker) gets big tensors by handle over gRPC, intact."""
    ep = _Endpoint(local=False)
    sender = Sender("a", None, lambda: LinkEmulator())
    x = np.random.default_rng(2).random(300_000).astype(np.float32)
    try:
        assert sender.send(lambda: ep.address, _delivery("r0", x), "") == ""
        assert ep.address not in sender._no_shm
    finally:
        sender.close()
        ep.stop()
    (d, local), = ep.got
    assert not local and np.array_equal(d.tensors["t"], x)


def test_a_peer_without_shared_memory_support_gets_the_bytes():
    """A receiver that answers UNIMPLEMENTED to handles is remembered, and the delivery still arrives as bytes."""
    got: list[Delivery] = []
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=GRPC_OPTIONS)
    service, one = RAW_STAGE_ONE_METHOD.strip("/").split("/")
    srv.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {one: grpc.unary_unary_rpc_method_handler(
        lambda buf, ctx: (got.append(unpack_delivery(buf)), pb.Ack(ok=True))[1],
        request_deserializer=None, response_serializer=pb.Ack.SerializeToString)})])
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    addr = f"127.0.0.1:{port}"
    sender = Sender("a", None, lambda: LinkEmulator())
    x = np.random.default_rng(3).random(200_000).astype(np.float32)
    try:
        assert sender.send(lambda: addr, _delivery("r0", x), "") == ""
        assert addr in sender._no_shm
    finally:
        sender.close()
        srv.stop(0)
    assert len(got) == 1 and np.array_equal(got[0].tensors["t"], x)


def test_a_handle_to_a_foreign_segment_is_refused_with_failed_precondition():
    """DeliverShm maps only tierplan segments that exist: anything else is FAILED_PRECONDITION, nothing delivered."""
    from tierplan.runtime.wire import RAW_STAGE_SHM_METHOD
    ep = _Endpoint(local=False)
    ch = grpc.insecure_channel(ep.address)
    call = ch.unary_unary(RAW_STAGE_SHM_METHOD, request_serializer=None, response_deserializer=pb.Ack.FromString)
    try:
        for name in ("tierplan-1-nosuch-1", "not-ours"):
            with pytest.raises(grpc.RpcError) as e:
                call(encode_ref(name, 100), timeout=5)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        ch.close()
        ep.stop()
    assert ep.got == []


def test_emulated_link_paces_the_same_host_path():
    """A 2 MB delivery over an emulated 80 Mbit/s link with 20 ms RTT takes at least 200 + 10 ms on the socket path too."""
    ep = _Endpoint(local=True)
    emu = LinkEmulator({"a|b": [{"link_id": "a->b", "bandwidth_mbps": 80.0, "delay_ms": 10.0}]})
    sender = Sender("a", None, lambda: emu)
    try:
        t0 = time.perf_counter()
        assert sender.send(lambda: ep.address, _delivery("r", np.zeros(500_000, np.float32)), "b") == ""
        elapsed_ms = (time.perf_counter() - t0) * 1e3
    finally:
        sender.close()
        ep.stop()
    assert elapsed_ms >= 2_000_000 * 8 / 80e6 * 1e3 + 10 - 1
    assert ep.got and ep.got[0][1]


def test_a_stopped_same_host_peer_makes_the_send_fail_by_its_deadline():
    """When the peer is gone (socket and gRPC closed) the send ends with an error naming the deadline, never hangs."""
    ep = _Endpoint(local=True)
    address = ep.address
    ep.stop()
    sender = Sender("a", None, lambda: LinkEmulator())
    try:
        t0 = time.perf_counter()
        err = sender.send(lambda: address, _delivery("r", np.zeros(100_000, np.float32), seconds=0.5), "b")
        elapsed_s = time.perf_counter() - t0
    finally:
        sender.close()
    assert "not delivered before the deadline" in err and elapsed_s < 3.0
