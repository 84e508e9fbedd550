"""Outputs written straight into shared memory (runtime.localwire.Placed, wire.pack_header_into):
the send writes only the header, and the receiver reads the same delivery as a packed one."""

import time

import numpy as np

from tierplan.runtime.localwire import LocalClient, placement
from tierplan.runtime.shm import ShmReader, encode_ref
from tierplan.runtime.wire import Delivery, pack_delivery, pack_header_into, unpack_delivery


def _payload_base(placed) -> tuple:
    payload = placed.pool.payload(placed.seg)
    return payload, np.frombuffer(payload, np.uint8, 1).ctypes.data


def test_placed_outputs_read_back_as_the_packed_delivery():
    """Two outputs placed, filled in place, header padded to meet them: unpacking the segment gives
    the tensors, ids and trace that pack_delivery of the same delivery gives."""
    client = LocalClient()
    try:
        specs = {"a": (np.dtype(np.float32), (1, 64, 40, 40)), "b": (np.dtype(np.int64), (3, 7))}
        placed = client.place(placement(specs, header_room=1000))
        assert placed is not None and placed.arrays["a"].shape == (1, 64, 40, 40)
        rng = np.random.default_rng(1)
        placed.arrays["a"][:] = rng.random((1, 64, 40, 40), dtype=np.float32)
        placed.arrays["b"][:] = np.arange(21).reshape(3, 7)
        trace = [["compute", "p0@phone", 1.5], ["cpu", "p0@phone", 1.25]]
        d = Delivery("req-1", "p0", "p1", dict(placed.arrays), branch="0/2", trace=trace,
                     deadline_unix_ms=time.time() * 1e3 + 5e3, sent_unix_ms=time.time() * 1e3, placed=placed)
        payload, base = _payload_base(placed)
        n = pack_header_into(d, payload, base)
        assert n is not None
        written = bytes(payload[:n])
        assert placed.offsets is not None and pack_header_into(d, payload, 0, placed.offsets) == n   # the sender's
        assert bytes(payload[:n]) == written     # way (offsets as placed, no address lookups) writes the same
        assert pack_header_into(d, payload, 0, [placed.offsets[0], placed.offsets[1] + 64]) is None   # not the layout
        got = unpack_delivery(np.frombuffer(payload, np.uint8, n), copy=True)
        del payload
        want = unpack_delivery(pack_delivery(d))
        assert (got.request_id, got.src, got.dst, got.branch, got.trace) == \
            (want.request_id, want.src, want.dst, want.branch, want.trace) == ("req-1", "p0", "p1", "0/2", trace)
        for k in ("a", "b"):
            assert np.array_equal(got.tensors[k], d.tensors[k]) and got.tensors[k].dtype == d.tensors[k].dtype
        placed.give_up()
    finally:
        client.close()


def test_a_header_that_does_not_fit_or_moved_tensors_are_refused():
    """pack_header_into gives None (the sender then packs with a copy) when the header is longer
    than the room left before the tensors, or when the tensors are not where a packed delivery has them."""
    client = LocalClient()
    try:
        placed = client.place(placement({"a": (np.dtype(np.float32), (128, 128))}, header_room=64))
        long_trace = [["compute", "x" * 200, 1.0]]
        d = Delivery("r", "p0", "p1", dict(placed.arrays), trace=long_trace, deadline_unix_ms=1.0)
        payload, base = _payload_base(placed)
        assert pack_header_into(d, payload, base) is None
        d2 = Delivery("r", "p0", "p1", {"a": np.zeros((128, 128), np.float32)}, deadline_unix_ms=1.0)
        assert pack_header_into(d2, payload, base) is None     # an array outside the segment
        del payload
        placed.give_up()
        assert placed.used and not placed.take()
    finally:
        client.close()


def test_small_outputs_are_not_placed():
    """Below the shared-memory threshold (and for empty tensors) a delivery goes inline: no room is made."""
    assert placement({"a": (np.dtype(np.float32), (10,))}, header_room=256) is None
    assert placement({"a": (np.dtype(np.float32), (0, 100000))}, header_room=256) is None


def test_the_reader_maps_a_placed_segment_in_place():
    """A receiver's ShmReader reads the placed segment's handle like any other (in place)."""
    client = LocalClient()
    reader = ShmReader(in_place=True)
    try:
        placed = client.place(placement({"x": (np.dtype(np.float32), (1, 128, 55, 55))}, header_room=512))
        placed.arrays["x"][:] = 2.5
        d = Delivery("r", "p0", "p1", dict(placed.arrays), trace=[["cpu", "p0@a", 1.0]], deadline_unix_ms=1.0,
                     placed=placed)
        payload, base = _payload_base(placed)
        n = pack_header_into(d, payload, base)
        del payload
        got = reader.read(encode_ref(placed.seg.name, n))
        assert got.tensors["x"].shape == (1, 128, 55, 55) and float(got.tensors["x"].mean()) == 2.5
        del got
        placed.give_up()
    finally:
        reader.close()
        client.close()
