"""Unit rules of the runtime: wire format, link emulation, tensor routing, fan-out accounting."""

from __future__ import annotations

import struct
import time
import types
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierplan.devices.fleet import resolve_fleet
from tierplan.planner.plan import PlanEdge
from tierplan.runtime.graph import branch_weight, child_branch, select_tensors
from tierplan.runtime.links import LinkEmulator, route_table
from tierplan.runtime.wire import CHUNK_BYTES, Delivery, delivery_frames, frames_to_delivery

from rt_helpers import three_tier_fleet


def test_big_tensor_travels_in_1mib_chunks_and_round_trips():
    """A 3.5 MiB tensor becomes >= 4 frames of at most 1 MiB and reassembles bit-exact with dtype and shape."""
    a = np.random.default_rng(1).random((7, 131072)).astype(np.float32)  # 3.5 MiB
    b = np.arange(6, dtype=np.int64).reshape(2, 3)
    d = Delivery("r1", "src", "dst", {"a": a, "b": b}, branch="1/3", deadline_unix_ms=5.0, trace=[["compute", "x", 1.0]])
    frames = list(delivery_frames(d))
    assert len(frames) >= 5 and all(len(f.data) <= CHUNK_BYTES for f in frames)
    back = frames_to_delivery(iter(frames))
    assert back.request_id == "r1" and back.branch == "1/3" and back.trace == [["compute", "x", 1.0]]
    assert back.tensors["a"].dtype == np.float32 and np.array_equal(back.tensors["a"], a)
    assert np.array_equal(back.tensors["b"], b)


def test_empty_and_error_deliveries_are_one_frame():
    """An error or an empty fan-out branch is a single frame that keeps its meaning."""
    for d in (Delivery("r", "s", "t", error="boom"), Delivery("r", "s", "t", empty=True)):
        frames = list(delivery_frames(d))
        assert len(frames) == 1
        back = frames_to_delivery(iter(frames))
        assert back.error == d.error and back.empty == d.empty and not back.tensors


def test_route_crosses_every_link_between_tiers():
    """phone -> cloud crosses radio up then backhaul up; cloud -> phone comes back down both."""
    fleet = three_tier_fleet(uplink_mbps=8, rtt_ms=40)
    routes = route_table(resolve_fleet(fleet), ["phone", "bs", "cloud"])
    up = routes["phone|cloud"]
    assert [h["link_id"] for h in up] == ["phone->bs", "bs->cloud"]
    assert up[0]["bandwidth_mbps"] == 8 and up[0]["delay_ms"] == 20
    assert [h["link_id"] for h in routes["cloud|phone"]] == ["cloud->bs", "bs->phone"]
    assert routes["bs|bs"] == []


def test_emulated_transfer_time_is_delay_plus_bytes_over_bandwidth():
    """1 MB over 8 Mbit/s with 40 ms RTT takes 1000 + 20 ms; a second transfer queues behind the first."""
    fleet = three_tier_fleet(uplink_mbps=8, rtt_ms=40)
    emu = LinkEmulator(route_table(resolve_fleet(fleet), ["phone", "bs"]))
    assert emu.transfer_ms("phone", "bs", 1_000_000) == pytest.approx(1020.0)
    t0 = time.monotonic()
    first = emu.arrival_s("phone", "bs", 1_000_000, now_s=t0)
    second = emu.arrival_s("phone", "bs", 1_000_000, now_s=t0)
    assert first - t0 == pytest.approx(1.02, abs=1e-6)
    assert second - t0 == pytest.approx(2.02, abs=1e-6)   # shared bandwidth: serialised


def test_edge_rename_maps_producer_outputs_to_consumer_inputs():
    """An edge with app.yaml's tensor map delivers the mapped outputs under the consumer's names."""
    outs = {"sigmoid": np.zeros(2), "other": np.ones(2)}
    e = PlanEdge(src="det", dst="boxes", nbytes=16, tensors=["sigmoid"], rename={"sigmoid": "prob_map"})
    got = select_tensors(outs, e)
    assert list(got) == ["prob_map"] and got["prob_map"] is outs["sigmoid"]


def test_unnamed_outputs_bind_in_order_and_transform_sinks_get_everything():
    """Names the producer lacks take unused outputs in order; a transform's edge to a sink carries all."""
    outs = {"ids": np.zeros(3), "score": np.ones(1)}
    e = PlanEdge(src="ctc", dst="next", nbytes=8, tensors=["ctc"])
    assert list(select_tensors(outs, e, "transform", "piece")) == ["ctc"]
    assert set(select_tensors(outs, e, "transform", "sink")) == {"ids", "score"}


def test_fan_out_branch_weights_sum_to_one():
    """Items of nested fan-outs weigh 1/product of counts, so a sink completes when they sum to 1."""
    branches = [child_branch(child_branch("", i, 3), j, 2) for i in range(3) for j in range(2)]
    assert sum(branch_weight(b) for b in branches) == Fraction(1)
    assert child_branch("2/3", 0, 1) == "2/3"   # a single item does not open a new level


def test_request_deadline_follows_the_slo():
    """The default deadline is a multiple of the plan's largest SLO, with a floor, and 30 s without SLO."""
    from tierplan.planner.plan import Plan, SinkLatency
    from tierplan.runtime.deploy import MIN_DEADLINE_S, NO_SLO_DEADLINE_S, SLO_DEADLINE_FACTOR, request_deadline_s
    plan = Plan(status="optimal", sinks={"a": SinkLatency(latency_ms=3, slo_ms=600),
                                         "b": SinkLatency(latency_ms=1, slo_ms=100)})
    assert request_deadline_s(plan) == pytest.approx(0.6 * SLO_DEADLINE_FACTOR)
    tight = Plan(status="optimal", sinks={"a": SinkLatency(latency_ms=3, slo_ms=10)})
    assert request_deadline_s(tight) == MIN_DEADLINE_S
    assert request_deadline_s(Plan(status="optimal")) == NO_SLO_DEADLINE_S


def test_sink_outputs_list_fan_out_items_in_branch_order():
    """A sink fed by a fan-out returns its items ordered by branch index; empty branches add nothing."""
    from tierplan.runtime.service import _Pending
    from tierplan.runtime.wire import Delivery
    p = _Pending("r", ["sink:text"], deadline_s=time.time() + 5)
    for i in (2, 0, 1):
        p.add(Delivery("r", "ctc", "sink:text", {"ids": np.array([i])}, branch=f"{i}/4"))
    assert not p.done.is_set()
    p.add(Delivery("r", "ctc", "sink:text", {}, branch="3/4", empty=True))
    assert p.done.is_set() and p.error == ""
    assert [int(x["ids"][0]) for x in p.outputs()["text"]] == [0, 1, 2]


def test_a_request_keeps_each_trace_step_once():
    """A join's trace holds its inputs' traces one after another (their common past twice) and each
    fan-out item repeats its past: the request's steps keep each step once, in first-seen order."""
    from tierplan.runtime.service import _Pending
    from tierplan.runtime.wire import Delivery
    past = [["feed", "client->phone", 0.5], ["compute", "split@phone", 1.25]]
    p = _Pending("r", ["sink:out"], deadline_s=time.time() + 5)
    first = [*past, *past, ["transfer", "phone->cloud", 3.0], ["compute", "tag@cloud", 0.75]]
    p.add(Delivery("r", "tag", "sink:out", {"z": np.zeros(1)}, branch="0/2", trace=first))
    p.add(Delivery("r", "tag", "sink:out", {"z": np.zeros(1)}, branch="1/2",
                   trace=[*past, ["transfer", "phone->cloud", 3.5], ["compute", "tag@cloud", 0.5]]))
    assert p.done.is_set()
    assert p.steps == [*past, ["transfer", "phone->cloud", 3.0], ["compute", "tag@cloud", 0.75],
                       ["transfer", "phone->cloud", 3.5], ["compute", "tag@cloud", 0.5]]


def test_done_callbacks_run_once_when_a_request_ends_or_at_once_when_it_has():
    """on_done: a callback registered in flight runs once, on the thread that ends the request (a result
    or a failure); one registered after the end runs at once; a callback that raises stops no other."""
    from tierplan.runtime.service import _Pending
    from tierplan.runtime.wire import Delivery
    seen: list[tuple[str, str]] = []
    p = _Pending("r", ["sink:out"], deadline_s=time.time() + 5)
    p.on_done(lambda q: (_ for _ in ()).throw(ValueError("a broken callback")))
    p.on_done(lambda q: seen.append(("first", q.error)))
    assert seen == []
    p.add(Delivery("r", "m", "sink:out", {"y": np.ones(1)}))
    p.add(Delivery("r", "m", "sink:out", {"y": np.ones(1)}))   # late repeat: no second call
    p.fail("too late")
    assert seen == [("first", "")]
    p.on_done(lambda q: seen.append(("after", q.error)))
    assert seen == [("first", ""), ("after", "")]
    f = _Pending("f", ["sink:out"], deadline_s=time.time() + 5)
    f.on_done(lambda q: seen.append(("failed", q.error)))
    f.fail("site down")
    assert seen[-1] == ("failed", "site down")


def test_raw_stream_messages_round_trip_several_tensors():
    """The raw-bytes form (header Bundle, then 1 MiB payload chunks) rebuilds every tensor, empty ones included."""
    from tierplan.runtime.wire import raw_messages, raw_to_delivery
    a = np.random.default_rng(2).random((3, 200_000)).astype(np.float32)   # 2.4 MB: 3 chunks
    b = np.zeros((0, 4), dtype=np.int32)
    d = Delivery("r9", "p", "q", {"a": a, "b": b}, branch="0/2", deadline_unix_ms=9.0, trace=[["transfer", "x->y", 2.0]])
    msgs = raw_messages(d)
    assert len(msgs) == 1 + 3 and all(len(m) <= CHUNK_BYTES for m in msgs[1:])
    back = raw_to_delivery(iter(msgs))
    assert back.branch == "0/2" and back.trace == d.trace and back.deadline_unix_ms == 9.0
    assert np.array_equal(back.tensors["a"], a) and back.tensors["b"].shape == (0, 4)


def _delivery_server(got: list):
    """A gRPC server with both raw delivery forms (stream and packed unary) that records what arrives."""
    from concurrent import futures

    import grpc

    from tierplan.runtime.proto import runtime_pb2 as pb
    from tierplan.runtime.transport import delivery_handlers
    from tierplan.runtime.wire import GRPC_OPTIONS, RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD

    def receive(d, ctx):
        got.append(d)
        return pb.Ack(ok=True)

    srv = grpc.server(futures.ThreadPoolExecutor(2), options=GRPC_OPTIONS)
    srv.add_generic_rpc_handlers(delivery_handlers(RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, receive))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    return srv, f"127.0.0.1:{port}"


def test_emulated_link_paces_a_real_grpc_transfer():
    """A 2 MB delivery over an emulated 80 Mbit/s link with 20 ms RTT takes at least 200 + 10 ms end to end."""
    from tierplan.runtime.transport import Sender
    got: list = []
    srv, addr = _delivery_server(got)
    emu = LinkEmulator({"a|b": [{"link_id": "a->b", "bandwidth_mbps": 80.0, "delay_ms": 10.0}]})
    sender = Sender("a", None, lambda: emu)
    try:
        d = Delivery("r", "x", "y", {"t": np.zeros(500_000, np.float32)}, deadline_unix_ms=(time.time() + 20) * 1e3)
        t0 = time.perf_counter()
        assert sender.send(lambda: addr, d, "b") == ""
        elapsed_ms = (time.perf_counter() - t0) * 1e3
    finally:
        sender.close()
        srv.stop(0)
    assert elapsed_ms >= 2_000_000 * 8 / 80e6 * 1e3 + 10 - 1
    assert got and got[0].tensors["t"].shape == (500_000,)


def test_packed_delivery_round_trips_as_aligned_views():
    """A packed delivery rebuilds every tensor (empty and mixed dtypes too) as views of the message at 64-byte offsets."""
    from tierplan.runtime.wire import pack_delivery, unpack_delivery
    a = np.random.default_rng(3).random((3, 5)).astype(np.float32)
    b = np.zeros((0, 4), dtype=np.int64)
    c = np.arange(7, dtype=np.uint8)
    e = np.arange(5, dtype=np.float64)
    d = Delivery("r1", "p", "q", {"a": a, "b": b, "c": c, "e": e}, branch="1/3", deadline_unix_ms=5.0,
                 trace=[["compute", "p@s", 1.5]])
    buf = pack_delivery(d)
    back = unpack_delivery(buf)
    assert back.branch == "1/3" and back.trace == d.trace and back.deadline_unix_ms == 5.0
    assert set(back.tensors) == {"a", "b", "c", "e"}
    for k in ("a", "c", "e"):
        assert np.array_equal(back.tensors[k], d.tensors[k]) and back.tensors[k].dtype == d.tensors[k].dtype
        assert np.shares_memory(back.tensors[k], np.frombuffer(buf, np.uint8))
    assert back.tensors["b"].shape == (0, 4)
    base = np.frombuffer(buf, np.uint8).ctypes.data
    assert all((t.ctypes.data - base) % 64 == 0 for k, t in back.tensors.items() if t.size)
    with pytest.raises(ValueError):
        unpack_delivery(buf + b"x")


def test_sender_uses_one_message_for_small_and_a_stream_for_large_deliveries():
    """Deliveries up to UNARY_MAX_BYTES and above both arrive intact over real gRPC, whichever form carries them."""
    from tierplan.runtime.transport import UNARY_MAX_BYTES, Sender
    got: list = []
    srv, addr = _delivery_server(got)
    sender = Sender("a", None, lambda: LinkEmulator())
    small = np.arange(1000, dtype=np.float32)
    big = np.arange(UNARY_MAX_BYTES // 4 + 1024, dtype=np.float32)
    try:
        for i, x in enumerate((small, big, small)):
            d = Delivery(f"r{i}", "x", "y", {"t": x}, deadline_unix_ms=(time.time() + 20) * 1e3)
            assert sender.send(lambda: addr, d, "") == ""
    finally:
        sender.close()
        srv.stop(0)
    assert [g.request_id for g in got] == ["r0", "r1", "r2"]
    assert np.array_equal(got[0].tensors["t"], small) and np.array_equal(got[1].tensors["t"], big)


def test_local_threads_share_the_cores_out():
    """Local site workers get at least one onnxruntime thread each and together no more threads than cores (or sites)."""
    import os

    from tierplan.runtime.deploy import local_threads
    cores = os.cpu_count() or 1
    for n in range(1, 9):
        t = local_threads(n)
        assert t >= 1 and t * n <= max(cores, n)
    assert local_threads(1) == cores


def test_sink_delivers_where_the_app_pins_it():
    """A sink the plan pins (deliver_to: cloud) is delivered there, not back to its source's site."""
    from tierplan.planner.plan import Plan, PlanEdge, PlanPiece
    from tierplan.runtime.graph import ExecGraph

    pieces = [PlanPiece(id="cam", kind="source"), PlanPiece(id="det", model="det"),
              PlanPiece(id="sink:boxes", kind="sink")]
    edges = [PlanEdge(src="cam", dst="det", nbytes=10), PlanEdge(src="det", dst="sink:boxes", nbytes=10)]
    base = dict(status="optimal", assignment={"cam": "cams", "det": "bs"}, pieces=pieces, edges=edges,
                per_class={"cams": {"cam": "cams", "det": "bs"}})
    pinned = ExecGraph.from_plan(Plan(**base, pins={"cams": {"cam": "cams", "sink:boxes": "cloud"}}))
    assert pinned.sites["sink:boxes"] == "cloud"
    unpinned = ExecGraph.from_plan(Plan(**base))
    assert unpinned.sites["sink:boxes"] == "cams"   # back to the source's site
    assert "cloud" not in pinned.used_sites()        # a sink's site hosts no worker


def test_wire_readers_refuse_what_breaks_the_format():
    """Every wire reader (frames, packed message, raw stream, front-door tensor) refuses a hostile field
    with WireError (a ValueError) before it reaches numpy: dtypes outside the allowlist, negative or huge
    dims, bytes that do not match the shape, malformed traces and branches, non-finite deadlines."""
    import math

    from tierplan.runtime.proto import runtime_pb2 as pb
    from tierplan.runtime.wire import WireError, pack_delivery, pb_to_tensor, raw_messages, raw_to_delivery, unpack_delivery
    soon = (time.time() + 5) * 1e3
    x = np.zeros((1, 8), np.float32)
    good = dict(request_id="r", src="a", dst="b", deadline_unix_ms=soon, name="t", dtype="float32", shape=[1, 8],
                data=x.tobytes())
    bad = [dict(dtype="object"), dict(dtype="i4,i4"), dict(dtype="float128"), dict(shape=[-1, 8]),
           dict(shape=[1, 9]), dict(shape=[2**32, 2**32]), dict(shape=[0, 2**62, 2**62]), dict(shape=[1] * 40), dict(trace="[["),
           dict(trace='{"a": 1}'), dict(trace='[["compute", "p", "fast"]]'), dict(trace="[" * 5000 + "]" * 5000),
           dict(branch="1/0"), dict(branch="3/2"), dict(branch="a/b"), dict(deadline_unix_ms=math.nan),
           dict(deadline_unix_ms=math.inf), dict(deadline_unix_ms=soon + 1e12), dict(request_id="r" * 5000)]
    for change in bad:
        with pytest.raises(WireError):
            frames_to_delivery(iter([pb.Frame(**{**good, **change})]))
    with pytest.raises(WireError):
        frames_to_delivery(iter([]))
    d = Delivery("r", "a", "b", {"t": x}, deadline_unix_ms=soon)
    packed = pack_delivery(d)
    for msg in (packed[:3], packed[:-4], b"\xff\xff\xff\x7f" + packed[4:], packed + b"x"):
        with pytest.raises(WireError):
            unpack_delivery(msg)
    # the packed form's own header (no protobuf): the same bad fields, and its own ways to lie
    from rt_helpers import packed_header

    def packed_with(header: bytes, data: bytes = x.tobytes()) -> bytes:
        pre = struct.pack("<I", len(header)) + header
        return pre + bytes(-len(pre) % 64) + data
    assert unpack_delivery(packed_with(packed_header([pb.Frame(**good)]))).tensors["t"].shape == (1, 8)
    for change in bad:
        with pytest.raises(WireError):
            unpack_delivery(packed_with(packed_header([pb.Frame(**{**good, **change})])))
    for kwargs in (dict(magic=b"XXXX"), dict(flags=2), dict(codes={}), dict(codes={"float32": 99}),
                   dict(lengths={0: 60000}), dict(lengths={5: 2**31}), dict(lengths={2: 0})):
        with pytest.raises(WireError):
            unpack_delivery(packed_with(packed_header([pb.Frame(**good)], **kwargs)))
    with pytest.raises(WireError):    # text that is not UTF-8
        fields = {**{k: getattr(pb.Frame(**good), k) for k in ("request_id", "dst", "branch", "error", "trace",
                                                                "deadline_unix_ms", "sent_unix_ms", "empty", "name",
                                                                "dtype", "shape")}, "src": "\ud800"}
        unpack_delivery(packed_with(packed_header([types.SimpleNamespace(**fields)])))
    msgs = raw_messages(d)
    for stream in ([], [msgs[0]], [msgs[0], msgs[1][:5]], [*msgs, b"more"], [b"\xff garbage"]):
        with pytest.raises(WireError):
            raw_to_delivery(iter(stream))
    with pytest.raises(WireError):
        pb_to_tensor(pb.Tensor(name="t", dtype="float32", shape=[-1], data=x.tobytes()))
    with pytest.raises(WireError):
        pb_to_tensor(pb.Tensor(name="t", dtype="O", shape=[1], data=b"\0" * 8))
    assert np.array_equal(pb_to_tensor(pb.Tensor(name="t", dtype="float32", shape=[1, 8], data=x.tobytes())), x)


_STEP_TEXT = st.text(max_size=12)
_STEP = st.one_of(st.tuples(_STEP_TEXT, _STEP_TEXT, st.floats(allow_nan=True, allow_infinity=True)),
                  st.tuples(_STEP_TEXT, _STEP_TEXT, st.integers(-10**6, 10**6)),
                  st.tuples(_STEP_TEXT, _STEP_TEXT))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(_STEP.map(list), max_size=6))
def test_a_trace_is_written_as_the_json_encoder_writes_it(steps):
    """trace_json writes each step itself (no encoder set-up per hop): for any steps (any text, an
    integer or non-finite time, a step of another length) it gives what the compact JSON encoder
    gives, with passed-on RawSteps spliced in as they came."""
    import json

    from tierplan.runtime.wire import RawSteps, trace_json
    compact = json.JSONEncoder(separators=(",", ":")).encode
    assert trace_json(steps) == (compact(steps) if steps else "")
    raw = RawSteps('["feed","client->p",0.5]')
    assert trace_json([raw, *steps]) == "[" + ",".join([raw, *(compact(s) for s in steps)]) + "]"


def test_a_packed_header_is_the_same_when_its_tensor_entries_come_from_the_cache():
    """A node's tensor entries are packed once and reused: the second header is byte for byte the
    first, another shape gets its own entries, and a tensor name too long for its field is still
    refused with WireError."""
    from tierplan.runtime.wire import WireError, _packed_header, pack_delivery, unpack_delivery
    soon = (time.time() + 5) * 1e3
    d = Delivery("r", "a", "b", {"x": np.ones((2, 3), np.float32), "i": np.zeros(4, np.int64)}, deadline_unix_ms=soon)
    assert _packed_header(d, d.tensors) == _packed_header(d, d.tensors)
    other = Delivery("r", "a", "b", {"x": np.ones((3, 2), np.float32), "i": np.zeros(4, np.int64)}, deadline_unix_ms=soon)
    back = unpack_delivery(pack_delivery(other))
    assert back.tensors["x"].shape == (3, 2) and back.tensors["i"].dtype == np.int64
    assert unpack_delivery(pack_delivery(d)).tensors["x"].shape == (2, 3)
    with pytest.raises(WireError, match="does not fit"):
        _packed_header(d, {"n" * 70_000: np.ones(1, np.float32)})


def test_trace_steps_pass_through_a_site_unread_and_the_controller_checks_them():
    """A stage worker reads a packed delivery's trace as one RawSteps element (not parsed), appends its
    own steps and packs it on: the next reader that parses (the controller) gets every step in order.
    What a site passes on unread is still checked there: a bad step is refused at the end."""
    from tierplan.runtime.wire import RawSteps, WireError, pack_delivery, trace_json, unpack_delivery
    soon = (time.time() + 5) * 1e3
    first = Delivery("r", "a", "b", {"t": np.ones(4, np.float32)}, deadline_unix_ms=soon,
                     trace=[["feed", "client->p", 0.5], ["compute", "a@p", 1.25]])
    at_site = unpack_delivery(pack_delivery(first), raw_trace=True)
    assert [type(s) for s in at_site.trace] == [RawSteps]
    at_site.trace.append(["transfer", "p->q", 2.0])
    joined = Delivery("r", "b", "c", {}, deadline_unix_ms=soon,     # a join of two such inputs, then own steps
                      trace=[*at_site.trace, RawSteps('["compute","x@q",1]'), ["compute", "b@q", 3.5]])
    end = unpack_delivery(pack_delivery(joined))
    assert end.trace == [["feed", "client->p", 0.5], ["compute", "a@p", 1.25], ["transfer", "p->q", 2.0],
                         ["compute", "x@q", 1], ["compute", "b@q", 3.5]]
    assert trace_json([RawSteps(""), ["k", "n", 1.0]]) == '[["k","n",1.0]]' and trace_json([RawSteps("")]) == "[]"
    hostile = Delivery("r", "a", "b", {}, deadline_unix_ms=soon, trace=[RawSteps('["compute","x",NaN]')])
    passed_on = unpack_delivery(pack_delivery(hostile), raw_trace=True)    # a site does not read it...
    with pytest.raises(WireError):
        unpack_delivery(pack_delivery(passed_on))                          # ...the controller refuses it
    from rt_helpers import packed_header

    from tierplan.runtime.proto import runtime_pb2 as pb
    for text in ('{"a": 1}', "[" * 10, "x" * (5 << 20)):   # not a list, or beyond MAX_TRACE_CHARS: refused unread too
        header = packed_header([pb.Frame(request_id="r", src="a", dst="b", deadline_unix_ms=soon, trace=text)])
        with pytest.raises(WireError):
            unpack_delivery(struct.pack("<I", len(header)) + header, raw_trace=True)
