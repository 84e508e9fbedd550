"""Same-host sends that do not wait for the reply: the reply (or its absence) reaches the callback (real Unix sockets, real shared memory)."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import numpy as np
import pytest

from tierplan.runtime.localwire import LocalClient, LocalServer
from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.shm import ShmReader
from tierplan.runtime.wire import Delivery


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Peer:
    """A same-host receiver whose answer is chosen by `reply(d)` (it may block)."""

    def __init__(self, reply) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        self.reader = ShmReader()
        self.got: list[Delivery] = []
        self.server = LocalServer(self.address, lambda d, ctx: (self.got.append(d), reply(d))[1], self.reader)
        assert self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.reader.close()


def _call(client: LocalClient, peer: _Peer, x: np.ndarray, timeout_s: float = 2.0):
    done = threading.Event()
    out: list = []

    def on_reply(ack, error):
        out.append((ack, error))
        done.set()

    d = Delivery("r1", "a", "b", {"t": x}, deadline_unix_ms=(time.time() + 20) * 1e3)
    t0 = time.perf_counter()
    assert client.start_call(peer.address, d, d.deadline_unix_ms / 1e3, timeout_s, on_reply)
    returned_s = time.perf_counter() - t0
    assert done.wait(10), "no reply callback"
    return out[0], returned_s


def test_reply_of_a_shared_memory_delivery_reaches_the_callback():
    """A big delivery goes out in shared memory, start_call returns at once, and the ok arrives on the reply thread."""
    peer = _Peer(lambda d: pb.Ack(ok=True))
    client = LocalClient()
    try:
        x = np.arange(200_000, dtype=np.float32)
        for _ in range(3):   # the connection and segment are reused after each reply
            (ack, error), _ = _call(client, peer, x)
            assert error is None and ack.ok
        assert len(peer.got) == 3 and np.array_equal(peer.got[-1].tensors["t"], x)
    finally:
        client.close()
        peer.stop()


def test_refusal_and_silence_reach_the_callback_as_failures():
    """A refusing peer gives a not-ok ack; a peer that never answers gives DEADLINE_EXCEEDED after the timeout, not before the send returns."""
    refuse = _Peer(lambda d: pb.Ack(ok=False, error="no"))
    gate = threading.Event()
    silent = _Peer(lambda d: (gate.wait(5), pb.Ack(ok=True))[1])
    client = LocalClient()
    try:
        (ack, error), _ = _call(client, refuse, np.ones(4, np.float32))
        assert error is None and not ack.ok and ack.error == "no"
        t0 = time.perf_counter()
        (ack, error), returned_s = _call(client, silent, np.ones(4, np.float32), timeout_s=0.3)
        waited_s = time.perf_counter() - t0
        assert ack is None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert returned_s < 0.25 <= waited_s, (returned_s, waited_s)
    finally:
        gate.set()
        client.close()
        refuse.stop()
        silent.stop()


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_calls_in_turn_share_one_connection_once_each_ack_is_reaped():
    """No thread waits for an ack: it is reaped (by the sweeper, or the next start_call), the callback
    runs, and the connection goes back idle for the next call."""
    peer = _Peer(lambda d: pb.Ack(ok=True))
    client = LocalClient()
    try:
        for i in range(20):
            (ack, error), _ = _call(client, peer, np.full(8, i, np.float32))
            assert error is None and ack.ok
        assert len(peer.got) == 20 and [int(d.tensors["t"][0]) for d in peer.got] == list(range(20))
        with peer.server._lock:
            assert len(peer.server._conns) == 1, "each call after the first reuses the reaped connection"
    finally:
        client.close()
        peer.stop()


def test_a_stream_whose_peer_went_away_is_replaced_or_reported():
    """A peer that stops closes its connections: the next start_call finds the stream broken, tries
    a fresh connection, and with nobody listening sends nothing (False: the caller uses gRPC)."""
    peer = _Peer(lambda d: pb.Ack(ok=True))
    client = LocalClient()
    try:
        (ack, error), _ = _call(client, peer, np.ones(4, np.float32))
        assert ack.ok and len(client._streams) == 1
        peer.stop()
        time.sleep(0.1)
        assert not client.start_call(peer.address, Delivery("r2", "a", "b", {"t": np.ones(4, np.float32)},
                                                            deadline_unix_ms=(time.time() + 5) * 1e3),
                                     time.time() + 5, 1.0, lambda a, e: None)   # nobody listens: not sent
        assert not client._streams
    finally:
        client.close()


def test_streamed_calls_go_out_back_to_back_and_each_gets_its_own_answer():
    """Many calls sent without waiting share one connection; the peer takes them in order, and a
    refusal in the middle reaches only its own call (matched by sequence number), the others end ok."""
    peer = _Peer(lambda d: pb.Ack(ok=False, error=f"no {d.request_id}") if d.request_id.endswith("3")
                 else pb.Ack(ok=True))
    client = LocalClient()
    out: dict[str, tuple] = {}
    done = threading.Event()

    def on_reply_of(rid):
        def on_reply(ack, error):
            out[rid] = (ack, error)
            if len(out) == 30:
                done.set()
        return on_reply
    try:
        for i in range(30):
            d = Delivery(f"r{i}", "a", "b", {"t": np.full(1000, i, np.float32)}, deadline_unix_ms=(time.time() + 20) * 1e3)
            assert client.start_call(peer.address, d, d.deadline_unix_ms / 1e3, 5.0, on_reply_of(d.request_id))
        assert done.wait(10), f"{30 - len(out)} calls never ended"
        assert [d.request_id for d in peer.got] == [f"r{i}" for i in range(30)]
        for i in range(30):
            ack, error = out[f"r{i}"]
            assert error is None
            assert ack.ok == (not str(i).endswith("3")), (i, ack)
            if not ack.ok:
                assert ack.error == f"no r{i}"
        with peer.server._lock:
            assert len(peer.server._conns) == 1
    finally:
        client.close()
        peer.stop()


def test_open_calls_fail_when_the_peer_dies_with_them():
    """A peer that closes while it still holds calls it never took: those calls fail (UNAVAILABLE,
    so the sender resends them) instead of waiting forever."""
    gate = threading.Event()
    peer = _Peer(lambda d: (gate.wait(10), pb.Ack(ok=True))[1])
    client = LocalClient()
    errors: list = []
    ended = threading.Event()

    def on_reply(ack, error):
        errors.append(error)
        if len(errors) == 3:
            ended.set()
    try:
        for i in range(3):
            d = Delivery(f"r{i}", "a", "b", {"t": np.ones(8, np.float32)}, deadline_unix_ms=(time.time() + 20) * 1e3)
            assert client.start_call(peer.address, d, d.deadline_unix_ms / 1e3, 8.0, on_reply)
        time.sleep(0.2)
        peer.server.stop()      # its connection closes with the calls untaken
        assert ended.wait(5), "open calls were not failed"
        assert all(e is not None and e.code() == grpc.StatusCode.UNAVAILABLE for e in errors), errors
    finally:
        gate.set()
        client.close()
        peer.reader.close()


def test_hostile_streamed_frames_get_an_error_naming_their_sequence_number_or_end_the_connection():
    """A streamed frame (kind 6) without a sequence number ends its connection; one whose handle is not
    a tierplan segment, or names no segment, gets an error reply naming its sequence number (the sender
    matches it to the call); the server keeps serving other connections."""
    import struct

    from tierplan.runtime.localwire import socket_name
    peer = _Peer(lambda d: pb.Ack(ok=True))
    client = LocalClient()
    try:
        def send(body: bytes) -> bytes:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(socket_name(peer.address))
            s.sendall(struct.pack("<IB", len(body), 6) + body)
            try:
                return s.recv(4096)
            finally:
                s.close()
        assert send(b"\x01\x02") == b""                        # no sequence number: connection closed
        for seq, handle in ((7, b"garbage"), (2**63, struct.pack("<Q", 64) + b"tierplan-0-nosuch"),
                            (9, struct.pack("<Q", 64) + b"../etc/passwd")):
            reply = send(struct.pack("<Q", seq) + handle)
            n, kind = struct.unpack_from("<IB", reply)
            assert kind == 8 and len(reply) == 5 + n, reply    # a streamed error, whole
            assert struct.unpack_from("<Q", reply, 5)[0] == seq
            assert reply[13:].split(b"\n")[0] in (b"FAILED_PRECONDITION", b"INVALID_ARGUMENT")
        (ack, error), _ = _call(client, peer, np.ones(4, np.float32))    # still serving
        assert error is None and ack.ok
    finally:
        client.close()
        peer.stop()


def test_the_receiver_is_told_when_the_next_streamed_delivery_already_waits():
    """`on_accepted(d, more)`: deliveries sent back to back while the receiver is busy arrive together;
    each but the last is taken with more=True (a stage worker shares such a backlog out to its compute
    threads), the last with more=False."""
    address = f"127.0.0.1:{_free_port()}"
    reader = ShmReader()
    seen: list[tuple[str, bool]] = []
    busy = threading.Event()
    release = threading.Event()

    def on_accepted(d: Delivery, more: bool) -> None:
        seen.append((d.request_id, more))
        if d.request_id == "r0":
            busy.set()
            release.wait(5)     # the others arrive meanwhile
    server = LocalServer(address, lambda d, ctx: pb.Ack(ok=True), reader, on_accepted=on_accepted)
    assert server.start()
    client = LocalClient()
    try:
        def send(i: int) -> None:
            d = Delivery(f"r{i}", "a", "b", {"t": np.full(64, i, np.float32)}, deadline_unix_ms=(time.time() + 20) * 1e3)
            assert client.start_call(address, d, d.deadline_unix_ms / 1e3, 5.0, lambda ack, error: None)
        send(0)
        assert busy.wait(5)
        for i in range(1, 6):
            send(i)
        time.sleep(0.2)
        release.set()
        deadline = time.monotonic() + 5
        while len(seen) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [rid for rid, _ in seen] == [f"r{i}" for i in range(6)]
        assert [more for _, more in seen[1:]] == [True] * 4 + [False]
    finally:
        client.close()
        server.stop()
        reader.close()
