"""Adversarial fuzzing of every RPC in runtime.proto against live servers on loopback, plain and mutual TLS.

One deployment per transport: a tiny two-piece ONNX chain with its first piece on an edge agent
(`python -m tierplan agent`, a process of its own) and its second on a stage worker in this
process, a controller and a front door. Hypothesis sends each RPC hostile field values (traversal
file names, huge and negative sizes, wrong dtypes and shapes, malformed JSON, unknown nodes and
sites, out-of-order generations, streams cut mid-way), also the raw delivery methods the proto
documents and the same-host socket. Every call must end in an error status or a correct answer
within its deadline plus slack; no process dies, nothing is written outside the caches, and a
good request is served right after. `TIERPLAN_FUZZ_EXAMPLES` sets the examples per test (CI: the
default); `TIERPLAN_FUZZ_REPORT` names a JSON file for the counts (benchmarks/fuzz.py).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from rt_helpers import packed_header, three_tier_fleet

from tierplan.runtime.proto import runtime_pb2 as pb
from tierplan.runtime.proto import runtime_pb2_grpc as pbg
from tierplan.runtime.security import TlsConfig, channel, make_certs
from tierplan.runtime.shm import encode_ref
from tierplan.runtime.wire import (GRPC_OPTIONS, RAW_CONTROL_METHOD, RAW_CONTROL_ONE_METHOD, RAW_CONTROL_SHM_METHOD,
                          RAW_STAGE_METHOD, RAW_STAGE_ONE_METHOD, RAW_STAGE_SHM_METHOD, Delivery, pack_delivery,
                          raw_messages, tensor_to_pb)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("TIERPLAN_FUZZ_EXAMPLES", "20"))
CALL_TIMEOUT_S = 4.0          # every fuzz call's gRPC timeout
SLACK_S = 4.0                 # a call may return this much after its timeout on 2 busy shared cores
START_TIMEOUT_S = 60.0
REPORT = os.environ.get("TIERPLAN_FUZZ_REPORT", "")
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("TIERPLAN_FUZZ_RANDOM"),
                suppress_health_check=list(HealthCheck), print_blob=True)

# what the fuzzer saw, over the whole module: calls, ok (a correct answer), errors (an error status
# or a refusal), and the failures that must stay 0: unhandled (UNKNOWN: a handler raised), hangs,
# crashes (a process died or stopped answering), escapes (a file appeared outside a cache)
COUNTS: Counter = Counter()
PER_RPC: dict[str, Counter] = {}

NODES = ["input", "m/p0", "m/p1", "sink:output"]
GOOD_DTYPES = ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
               "uint64", "bool", "complex64", "complex128"]
BAD_DTYPES = ["object", "O", "V8", "U4", "S3", "i4,i4", "float128", "M8", "m8[s]", "", "nonsense", "<f4", ">i8",
              "float32\x00", "(2,)f4", "[('a','<f4')]", "void", "str", "a" * 300]
TRAVERSAL = ["/etc/passwd", "/dev/zero", "../../../target/pwn.pth", "../../../../target/pwn", "..", ".", "", "a/../../b",
             "x\x00.onnx", "piece.onnx\x00/../../../target/nul", "a" * 5000, "/" * 300, "~/.bashrc", "C:\\x\\y",
             "..\\..\\..\\target\\w", "sub/dir/piece.onnx", "\u202epiece.onnx", "/proc/self/mem"]
HOSTILE_TEXT = ["", "\x00", "../../etc/passwd", "/etc/passwd", "sink:", "sink:nope", "a" * 10000, "é\u202e",
                "%s%n", "{}", "input\x00"]
BAD_JSON = ["", "{", "}", "null", "[]", "5", '"s"', "{\"a\":", "[" * 3000 + "]" * 3000, "NaN", "Infinity",
            '{"a": NaN}', "\x00", "{'single': 1}", "[1, 2,]", json.dumps({"x": "y" * 1000})]
BIG_DIMS = [-1, -2, 0, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -2**63]


# ----------------------------------------------------------------------------------- the deployment
def _tiny_chain(out: Path) -> list[Path]:
    """x[1,8] -> Relu -> r -> Mul(2) -> y, cut at r: two standalone ONNX pieces."""
    from tierplan.runtime.handplan import split_chain
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "tiny.onnx"))
    return split_chain(out / "tiny.onnx", ["r"], out, "m")


def _tls_for(certs: Path, site: str) -> tuple[TlsConfig, Path]:
    """A site's TLS material and the folder to pass as --tls-dir (one bundle per site, or one folder)."""
    folder = certs / site if (certs / site).is_dir() else certs
    return TlsConfig.from_dir(folder, site), folder


def _files_under(root: Path, skip: list[Path]) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not any((d / n) == s for s in skip)]
        out.update(str(d / n) for n in [*filenames, *dirnames])
    return out


@dataclass
class Live:
    """One running deployment and stubs onto each of its servers, as a peer with valid credentials."""

    mode: str
    root: Path
    svc: object
    worker: object
    agent: subprocess.Popen
    agent_address: str
    tls: TlsConfig | None
    device_tls: TlsConfig | None      # the phone's own material: what a compromised edge device holds
    x: np.ndarray
    certs: Path | None = None
    channels: list = field(default_factory=list)

    def chan(self, address: str) -> grpc.Channel:
        ch = channel(address, self.tls, GRPC_OPTIONS)
        self.channels.append(ch)
        return ch

    def __post_init__(self) -> None:
        self.stage = {"worker": pbg.StageStub(self.chan(self.worker.address)),
                      "agent": pbg.StageStub(self.chan(self.agent_address))}
        self.address = {"worker": self.worker.address, "agent": self.agent_address,
                        "control": self.svc.address, "front": self.svc.front_door_address}
        self.control = pbg.ControlStub(self.chan(self.svc.address))
        device_ch = channel(self.svc.address, self.device_tls, GRPC_OPTIONS)
        self.channels.append(device_ch)
        self.control_as_device = pbg.ControlStub(device_ch)
        self.front = pbg.FrontDoorStub(self.chan(self.svc.front_door_address))
        self.site_of = {"worker": "cloud", "agent": "phone"}
        self.target = self.root / "target"
        self.target.mkdir()
        self.caches = [self.root / "worker" / "cache", *sorted((self.root / "agent_tmp").glob("*"))]
        self.before = _files_under(self.root, self.caches)

    def raw(self, target: str, method: str, kind: str):
        ch = self.chan(self.address[target])
        make = ch.stream_unary if kind == "stream" else ch.unary_unary
        return make(method, request_serializer=None, response_deserializer=pb.Ack.FromString)

    # ------------------------------------------------------------------ checks after every example
    def good_config(self, target: str) -> pb.ConfigureRequest:
        return self.svc._configure_request(self.site_of[target], self.svc.generation)

    def restore(self, target: str) -> None:
        """Configure the target as the controller would (a fuzzed Configure may have changed it)."""
        ack = self.stage[target].Configure(self.good_config(target), timeout=60)
        assert ack.ok, ack.error

    def alive(self) -> None:
        """Both processes answer Health as themselves, nothing appeared outside the caches."""
        if self.agent.poll() is not None:
            COUNTS["crashes"] += 1
            pytest.fail(f"the agent died (exit {self.agent.returncode})")
        for target, site in self.site_of.items():
            try:
                h = self.stage[target].Health(pb.HealthRequest(), timeout=CALL_TIMEOUT_S + SLACK_S)
            except grpc.RpcError as e:
                COUNTS["crashes"] += 1
                pytest.fail(f"{target} stopped answering Health: {e.code().name} {e.details()}")
            assert h.site == site
        self.no_escape()

    def no_escape(self) -> None:
        new = _files_under(self.root, self.caches) - self.before
        if new or any(self.target.iterdir()):
            COUNTS["escapes"] += 1
            pytest.fail(f"files written outside the caches: {sorted(new)[:5]}")

    def good_request(self) -> None:
        """A real request through the front door: both pieces run and the answer is relu(x) * 2."""
        reply = self.front.Predict(pb.PredictRequest(inputs={"input": tensor_to_pb("input", self.x)},
                                                     timeout_ms=20000), timeout=30)
        assert reply.error == "", reply.error
        t = reply.outputs["output"].items[0].tensors[0]
        got = np.frombuffer(t.data, dtype=t.dtype).reshape(tuple(t.shape))
        np.testing.assert_allclose(got, np.maximum(self.x, 0) * 2, rtol=1e-6)


def _start_agent(root: Path, tls_dir: Path | None) -> tuple[subprocess.Popen, str]:
    tmp = root / "agent_tmp"
    tmp.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(tmp), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    cmd = [sys.executable, "-m", "tierplan", "agent", "--site", "phone", "--listen", "127.0.0.1:0"]
    if tls_dir is not None:
        cmd += ["--tls-dir", str(tls_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, cwd=root)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)
    line = got[0] if got else ""
    if not line.startswith("READY "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"agent did not start: {line!r}")
    return proc, line.split()[1]


@pytest.fixture(scope="module", params=["plain", "tls"])
def live(request, tmp_path_factory):
    """A deployment of the tiny chain: phone (agent process) -> cloud (worker here), controller, front door."""
    from tierplan.runtime.deploy import deploy
    from tierplan.runtime.handplan import chain_plan
    from tierplan.runtime.stage import StageWorker
    mode = request.param
    root = tmp_path_factory.mktemp(f"fuzz-{mode}")
    files = _tiny_chain(root / "model")
    plan = chain_plan(files, ["phone", "cloud"], "phone", fleet=three_tier_fleet())
    tls = agent_dir = certs = None
    if mode == "tls":
        certs = root / "certs"
        make_certs(certs, ["phone", "cloud"])
        tls, _ = _tls_for(certs, "controller")
        _, agent_dir = _tls_for(certs, "phone")
    worker = StageWorker("cloud", "127.0.0.1:0", tls=_tls_for(certs, "cloud")[0] if certs else None,
                         cache_dir=str(root / "worker" / "cache"))
    worker.start()
    agent, agent_address = _start_agent(root, agent_dir)
    svc = None
    try:
        svc = deploy(plan, local=True, agents={"phone": agent_address, "cloud": worker.address},
                     tls_dir=_tls_for(certs, "controller")[1] if certs else None, front_door="127.0.0.1:0",
                     emulate_links=False, request_timeout_s=5.0)
        x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
        device_tls = _tls_for(certs, "phone")[0] if certs else None
        lv = Live(mode, root, svc, worker, agent, agent_address, tls, device_tls, x, certs)
        lv.good_request()
        yield lv
        lv.alive()
        lv.good_request()
        for ch in lv.channels:
            ch.close()
    finally:
        if svc is not None:
            svc.close()
        worker.stop()
        crashed = agent.poll() is not None
        agent.terminate()
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        agent.stdout.close()
        if crashed:
            COUNTS["crashes"] += 1


# ----------------------------------------------------------------------------------- calling
def _count(rpc: str, outcome: str) -> None:
    COUNTS["calls"] += 1
    COUNTS[outcome] += 1
    PER_RPC.setdefault(rpc, Counter())[outcome] += 1


def call(rpc: str, fn, request, *, timeout: float = CALL_TIMEOUT_S, cut: bool = False,
         garbage: bool = False):
    """Make one fuzz call; returns the reply or None for an error status. An UNKNOWN status (a handler
    raised) fails the test unless the client itself cut the stream (`cut`); INTERNAL is fine only for
    bytes that are not the method's message (`garbage`); a call past timeout + slack is a hang."""
    t0 = time.monotonic()
    try:
        reply = fn(request, timeout=timeout)
    except grpc.RpcError as e:
        elapsed = time.monotonic() - t0
        code = e.code()
        if elapsed > timeout + SLACK_S:
            _count(rpc, "hangs")
            pytest.fail(f"{rpc}: returned after {elapsed:.1f} s (timeout {timeout} s)")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not cut:
            _count(rpc, "hangs")
            pytest.fail(f"{rpc}: no answer within {timeout} s")
        if not cut and (code == grpc.StatusCode.UNKNOWN or (code == grpc.StatusCode.INTERNAL and not garbage)):
            _count(rpc, "unhandled")
            pytest.fail(f"{rpc}: the handler raised: {code.name} {e.details()}")
        _count(rpc, "errors")
        return None
    elapsed = time.monotonic() - t0
    if elapsed > timeout + SLACK_S:
        _count(rpc, "hangs")
        pytest.fail(f"{rpc}: answered after {elapsed:.1f} s (timeout {timeout} s)")
    refused = (isinstance(reply, pb.Ack) and not reply.ok) or (isinstance(reply, pb.PredictReply) and reply.error)
    _count(rpc, "errors" if refused else "ok")
    return reply


# ----------------------------------------------------------------------------------- strategies
texts = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=24))
node_names = st.one_of(st.sampled_from(NODES + ["", "sink:nope", "m/p9", "input\x00"]), st.text(max_size=16))
deadlines = st.one_of(st.sampled_from(["soon", "soon", "past"]),
                      st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e300, 2**63]),
                      st.floats(allow_nan=True, allow_infinity=True))
branches = st.one_of(st.just(""), st.sampled_from(["0/1", "1/0", "-1/2", "a/b", "0/2.1/3", "99999999999999999999/1",
                                                   "/", "..", "0/1.", "3/2", "0/0"]), st.text(max_size=12))
traces = st.one_of(st.just(""), st.sampled_from(BAD_JSON),
                   st.sampled_from(['[["compute","x",1.0]]', "[[1,2,3]]", '[["a","b"]]', '[["a","b","c"]]',
                                    json.dumps([["compute", "x", 1.0]] * 20000), '[{"k":1}]']),
                   st.text(max_size=20))
dtypes = st.one_of(st.sampled_from(GOOD_DTYPES), st.sampled_from(BAD_DTYPES), st.text(max_size=10))
shapes = st.lists(st.one_of(st.integers(-3, 9), st.sampled_from(BIG_DIMS)), max_size=5)


def _deadline(v) -> float:
    if v == "soon":
        return time.time() * 1e3 + 3000
    if v == "past":
        return time.time() * 1e3 - 3000
    return v


@st.composite
def tensors(draw):
    """(name, dtype, shape, data): sometimes consistent, mostly not."""
    name = draw(st.one_of(st.sampled_from(["x", "r", "y", "input"]), texts))
    dtype = draw(dtypes)
    shape = draw(shapes)
    if draw(st.booleans()) and dtype in GOOD_DTYPES and all(0 <= d <= 9 for d in shape):
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        data = draw(st.binary(min_size=n, max_size=n))
    else:
        data = draw(st.binary(max_size=300))
    return name, dtype, shape, data


@st.composite
def frame_lists(draw):
    """The frames of one hostile delivery (maybe none)."""
    head = dict(request_id=draw(texts), src=draw(node_names), dst=draw(node_names), branch=draw(branches),
                deadline_unix_ms=_deadline(draw(deadlines)), error=draw(st.one_of(st.just(""), texts)),
                sent_unix_ms=draw(st.one_of(st.just(0.0), st.floats(allow_nan=True, allow_infinity=True))),
                empty=draw(st.booleans()), trace=draw(traces))
    frames = []
    for i, (name, dtype, shape, data) in enumerate(draw(st.lists(tensors(), max_size=3))):
        first = head if i == 0 else dict(request_id=head["request_id"])
        frames.append(pb.Frame(**first, name=name, dtype=dtype, shape=shape, data=data,
                               last_chunk=draw(st.booleans())))
        if draw(st.booleans()):   # a continuation chunk, maybe of another tensor
            frames.append(pb.Frame(request_id=draw(texts), name=draw(st.sampled_from([name, "other"])),
                                   data=draw(st.binary(max_size=64)), last_chunk=draw(st.booleans())))
    if not frames and draw(st.booleans()):
        frames.append(pb.Frame(**head))
    return frames


def _valid_delivery(dst: str = "m/p1", src: str = "m/p0") -> Delivery:
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    return Delivery("fuzz-good", src, dst, {"r": x}, deadline_unix_ms=time.time() * 1e3 + 3000)


STAGES = st.sampled_from(["worker", "agent"])
# dtype name -> code in a hostile packed header: runtime.wire's own codes (None) or any byte
DTYPE_CODES = st.one_of(st.none(), st.dictionaries(st.sampled_from(sorted(GOOD_DTYPES)), st.integers(0, 255), max_size=3))
CUTS = st.sampled_from(["whole", "whole", "raise", "cancel"])


def _stream(items: list, cut: str, at: int, release: threading.Event):
    for i, m in enumerate(items):
        if cut != "whole" and i == at:
            if cut == "raise":
                raise RuntimeError("fuzz: the sender broke mid-stream")
            release.wait(CALL_TIMEOUT_S)
            return
        yield m


def stream_call(rpc: str, method, items: list, cut: str, at: int) -> None:
    """A client stream of `items`, whole, broken by an exception at item `at`, or cancelled there."""
    release = threading.Event()
    it = _stream(items, cut, at, release)
    if cut == "cancel":
        t0 = time.monotonic()
        fut = method.future(it, timeout=CALL_TIMEOUT_S)
        time.sleep(0.02)
        fut.cancel()
        release.set()
        try:
            fut.result(timeout=CALL_TIMEOUT_S + SLACK_S)
            _count(rpc, "ok")
        except (grpc.RpcError, grpc.FutureCancelledError):
            _count(rpc, "errors")
        except grpc.FutureTimeoutError:
            _count(rpc, "hangs")
            pytest.fail(f"{rpc}: a cancelled stream did not end within {CALL_TIMEOUT_S + SLACK_S} s")
        if time.monotonic() - t0 > CALL_TIMEOUT_S + SLACK_S:
            _count(rpc, "hangs")
            pytest.fail(f"{rpc}: a cancelled stream took {time.monotonic() - t0:.1f} s")
        return
    call(rpc, method, it, cut=cut != "whole")


# ----------------------------------------------------------------------------------- Stage
@FUZZ
@given(target=STAGES, frames=frame_lists(), cut=CUTS, at=st.integers(0, 3))
def test_stage_deliver_stream_survives_hostile_frames(live, target, frames, cut, at):
    """Stage.Deliver: hostile frames, whole or cut mid-stream, end in a status; the site stays up."""
    stream_call("Stage.Deliver", live.stage[target].Deliver, frames, cut, at)
    live.alive()


@FUZZ
@given(target=STAGES, frames=frame_lists())
def test_stage_deliver_bundle_survives_hostile_frames(live, target, frames):
    """Stage.DeliverBundle: hostile frames in one message end in a status; the site stays up."""
    call("Stage.DeliverBundle", live.stage[target].DeliverBundle, pb.Bundle(frames=frames))
    live.alive()


def test_stage_refuses_inconsistent_tensors_and_unknown_nodes(live):
    """A delivery whose shape does not match its bytes, with a negative or huge dim, a dtype outside the
    numeric allowlist, an unknown node or a non-finite deadline is refused with INVALID_ARGUMENT."""
    soon = time.time() * 1e3 + 3000
    ok_head = dict(request_id="fuzz", src="m/p0", dst="m/p1", deadline_unix_ms=soon)
    x = np.zeros((1, 8), np.float32).tobytes()
    bad = {"shape product != bytes": pb.Frame(**ok_head, name="r", dtype="float32", shape=[1, 9], data=x),
           "negative dim": pb.Frame(**ok_head, name="r", dtype="float32", shape=[-1, 8], data=x),
           "two -1 dims": pb.Frame(**ok_head, name="r", dtype="float32", shape=[-1, -8], data=x),
           "huge dims": pb.Frame(**ok_head, name="r", dtype="float32", shape=[2**32, 2**32], data=b""),
           "object dtype": pb.Frame(**ok_head, name="r", dtype="object", shape=[1], data=b"\0" * 8),
           "structured dtype": pb.Frame(**ok_head, name="r", dtype="i4,i4", shape=[1], data=b"\0" * 8),
           "unknown dst": pb.Frame(**{**ok_head, "dst": "m/p9"}, name="r", dtype="float32", shape=[1, 8], data=x),
           "dst on another site": pb.Frame(**{**ok_head, "dst": "m/p0"}, name="r", dtype="float32", shape=[1, 8],
                                           data=x),
           "unknown src": pb.Frame(**{**ok_head, "src": "nobody"}, name="r", dtype="float32", shape=[1, 8], data=x),
           "nan deadline": pb.Frame(**{**ok_head, "deadline_unix_ms": math.nan}, name="r", dtype="float32",
                                    shape=[1, 8], data=x),
           "malformed trace": pb.Frame(**ok_head, name="r", dtype="float32", shape=[1, 8], data=x, trace="[["),
           "trace not a list": pb.Frame(**ok_head, name="r", dtype="float32", shape=[1, 8], data=x,
                                        trace='{"a": 1}')}
    for what, frame in bad.items():
        with pytest.raises(grpc.RpcError) as e:
            live.stage["worker"].DeliverBundle(pb.Bundle(frames=[frame]), timeout=CALL_TIMEOUT_S)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, e.value.details())
        _count("Stage.DeliverBundle", "errors")
    good = pb.Frame(**ok_head, name="r", dtype="float32", shape=[1, 8], data=x)
    assert live.stage["worker"].DeliverBundle(pb.Bundle(frames=[good]), timeout=CALL_TIMEOUT_S).ok
    _count("Stage.DeliverBundle", "ok")
    live.alive()
    live.good_request()


configure_files = st.lists(st.builds(
    pb.PieceFile, node=node_names,
    manifest_entry_json=st.one_of(st.sampled_from(BAD_JSON), st.sampled_from([
        json.dumps({"backend": "onnxruntime", "file": "/etc/passwd"}),
        json.dumps({"backend": "tvm", "file": "../../../target/x.so", "path": "/tmp/x.so"}),
        json.dumps({"backend": "pickle", "class": "os.system"}),
        json.dumps({"backend": "onnxruntime", "sha256": "0" * 64}),
        json.dumps({"piece": "m/p1", "backend": "onnxruntime", "inputs": ["r"] * 3})])),
    data=st.one_of(st.binary(max_size=200), st.just(b"\0" * 5000)),
    filename=st.one_of(st.sampled_from(TRAVERSAL), st.text(max_size=30))), max_size=3)


bad_plans = st.one_of(st.sampled_from(BAD_JSON), st.text(max_size=30))
bad_options = st.one_of(st.sampled_from(BAD_JSON), st.sampled_from([
    '{"compute_threads": 1000000}', '{"threads": -1}', '{"threads": 100000}', '{"chunk_bytes": 0}',
    '{"max_batch": -5}', '{"max_wait_ms": 1e300}', '{"sender_threads": 0}', '{"links_shared_dir": "TARGET"}',
    '{"links_shared_dir": "/tmp"}', '{"batch_sites": 5}', '{"shm": "yes"}', '{"max_batch": 1e999}',
    '{"compute_threads": true}']))
# each field of the controller's own request is replaced by a hostile value or kept: most examples
# carry one to three hostile fields, and a few none (a well-formed Configure must still be accepted)
CONFIG_FIELDS = ["site", "plan", "peers", "collector", "links", "files", "options", "generation"]


def _mutated_plan(plan_json: str, how: str, hostile: str) -> str:
    doc = json.loads(plan_json)
    piece = next(p for p in doc["pieces"] if p["id"] == "m/p1")
    if how == "file":
        piece["file"] = hostile or "/dev/zero"
    elif how == "transform":
        piece.update(kind="transform", function={"": "os:system", "\x00": "subprocess:run"}.get(hostile, f"{hostile}:f"))
    elif how == "site":
        doc["assignment"]["m/p1"] = hostile
    elif how == "edge":
        doc["edges"].append({"src": hostile, "dst": "m/p1", "nbytes": -1, "tensors": [hostile]})
    elif how == "inputs":
        piece["inputs"] = [{"name": "r", "shape": [2**40, -1], "dtype": "object"}]
    return json.dumps(doc)


@FUZZ
@given(target=STAGES, hostile_fields=st.sets(st.sampled_from(CONFIG_FIELDS), max_size=3),
       site=st.one_of(st.sampled_from(["phone", "cloud", "", "nope", "../cloud"]), texts),
       plan=st.one_of(bad_plans, st.sampled_from(["file", "transform", "site", "edge", "inputs"])), hostile=texts,
       peers=st.dictionaries(texts, texts, max_size=3), collector=texts,
       links=st.one_of(st.sampled_from(BAD_JSON), st.just('{"a": [{"bad": 1}]}')), files=configure_files,
       keep_real_files=st.booleans(), options=bad_options,
       generation=st.one_of(st.sampled_from(["older", "same", "newer"]), st.integers(-2**63, 2**63 - 1)))
def test_stage_configure_survives_hostile_requests(live, target, hostile_fields, site, plan, hostile, peers,
                                                   collector, links, files, keep_real_files, options, generation):
    """Stage.Configure: hostile sites, plans, files (traversal names), options and generations end in an
    Ack; nothing lands outside the cache; Health then reports a generation that was sent; a well-formed
    request is accepted; the site serves a real request once the controller's configuration is back."""
    good = live.good_config(target)
    req = pb.ConfigureRequest()
    req.CopyFrom(good)
    gens = {"older": live.svc.generation - 1, "same": live.svc.generation, "newer": live.svc.generation + 1}
    if "site" in hostile_fields:
        req.site = site
    if "plan" in hostile_fields:
        req.plan_json = _mutated_plan(good.plan_json, plan, hostile) if plan in (
            "file", "transform", "site", "edge", "inputs") else plan
    if "peers" in hostile_fields:
        req.peers.clear()
        req.peers.update(peers)
    if "collector" in hostile_fields:
        req.collector = collector
    if "links" in hostile_fields:
        req.links_json = links
    if "files" in hostile_fields:
        del req.files[:]
        req.files.extend([*files, *(good.files if keep_real_files else [])])
    if "options" in hostile_fields:
        req.options_json = options.replace("TARGET", str(live.target))
    if "generation" in hostile_fields:
        req.generation = gens.get(generation, generation)
    stub = live.stage[target]
    before = stub.Health(pb.HealthRequest(), timeout=CALL_TIMEOUT_S).generation
    ack = call("Stage.Configure", stub.Configure, req, timeout=60)
    after = stub.Health(pb.HealthRequest(), timeout=CALL_TIMEOUT_S).generation
    assert after in (before, req.generation, live.svc.generation), (before, req.generation, after)
    if ack is not None and not ack.ok:
        assert ack.error
    if not hostile_fields - {"generation"}:   # the controller's request, at any generation
        assert ack is not None and ack.ok, ack
    live.alive()
    live.restore(target)
    live.good_request()


def test_stage_configure_never_writes_outside_its_cache(live):
    """Every traversal name (absolute, ../, NUL, very long, into a sentinel folder) as a piece file's
    name, and as paths in its manifest entry, leaves nothing outside the cache, on the worker and the
    agent; the request still configures the site or is refused with a message."""
    names = [*TRAVERSAL, str(live.target / "abs.pth"), f"../../../{live.target.name}/rel.pth",
             "../" * 40 + str(live.target)[1:] + "/deep.pth"]
    for target in ("worker", "agent"):
        good = live.good_config(target)
        for name in names:
            req = pb.ConfigureRequest()
            req.CopyFrom(good)
            for f in req.files:
                entry = json.loads(f.manifest_entry_json)
                f.filename = name
                f.manifest_entry_json = json.dumps({**entry, "file": name, "path": name, "rel_file": name})
            ack = call("Stage.Configure", live.stage[target].Configure, req, timeout=60)
            assert ack is not None and (ack.ok or ack.error)
            live.no_escape()
        live.restore(target)
    live.alive()
    live.good_request()


@FUZZ
@given(target=STAGES)
def test_stage_health_answers_as_itself(live, target):
    """Stage.Health answers with the site's own name and the controller's generation."""
    h = call("Stage.Health", live.stage[target].Health, pb.HealthRequest())
    assert h.site == live.site_of[target] and h.configured and h.pid > 0


# ----------------------------------------------------------------------------------- raw forms
RAW_TARGETS = st.sampled_from(["worker", "agent", "control"])


def _raw_method(target: str, stage_method: str, control_method: str) -> str:
    return control_method if target == "control" else stage_method


@FUZZ
@given(target=RAW_TARGETS, frames=frame_lists(), mutation=st.sampled_from(["none", "truncate", "flip", "prefix",
                                                                           "garbage", "hostile"]),
       garbage=st.binary(max_size=200), where=st.integers(0, 10**6), codes=DTYPE_CODES)
def test_raw_deliver_one_survives_hostile_bytes(live, target, frames, mutation, garbage, where, codes):
    """RawStage/RawControl DeliverOne (one packed message): truncated, flipped, mis-prefixed or hostile
    bytes end in a status; the site and the controller stay up."""
    packed = pack_delivery(_valid_delivery("sink:output" if target == "control" else "m/p1"))
    header = packed_header(frames or [pb.Frame()], codes=codes)
    msg = {"none": packed, "truncate": packed[:where % len(packed)], "garbage": garbage,
           "prefix": struct.pack("<I", (where * 7919) % 2**32) + packed[4:],
           "hostile": struct.pack("<I", len(header)) + header + bytes(-(4 + len(header)) % 64) + garbage}.get(mutation)
    if mutation == "flip":
        b = bytearray(packed)
        b[where % len(b)] ^= 0xFF
        msg = bytes(b)
    call("Raw.DeliverOne", live.raw(target, _raw_method(target, RAW_STAGE_ONE_METHOD, RAW_CONTROL_ONE_METHOD), "unary"),
         msg, garbage=True)
    live.alive()


@FUZZ
@given(target=RAW_TARGETS, frames=frame_lists(), mutation=st.sampled_from(["none", "garbage", "hostile", "short",
                                                                           "extra"]),
       garbage=st.binary(max_size=200), chunks=st.lists(st.binary(max_size=64), max_size=4), cut=CUTS,
       at=st.integers(0, 3))
def test_raw_deliver_stream_survives_hostile_bytes(live, target, frames, mutation, garbage, chunks, cut, at):
    """RawStage/RawControl Deliver (a raw-bytes stream): a bad header, too few or too many bytes, a
    stream cut mid-way end in a status; the site and the controller stay up."""
    msgs = raw_messages(_valid_delivery("sink:output" if target == "control" else "m/p1"))
    items = {"none": msgs, "garbage": [garbage, *chunks], "short": [msgs[0], msgs[1][:len(msgs[1]) // 2]],
             "extra": [*msgs, garbage or b"x"],
             "hostile": [pb.Bundle(frames=frames).SerializeToString(), *chunks]}[mutation]
    stream_call("Raw.Deliver", live.raw(target, _raw_method(target, RAW_STAGE_METHOD, RAW_CONTROL_METHOD), "stream"),
                items, cut, at)
    live.alive()


@FUZZ
@given(target=RAW_TARGETS, name=st.one_of(st.sampled_from(["tierplan-0-nosuch", "tierplan-../../etc/passwd", "x\x00y",
                                                         "/dev/shm/tierplan-x", "tierplan-" + "a" * 300, "REAL"]),
                                          st.text(max_size=20)),
       nbytes=st.one_of(st.integers(0, 5000), st.sampled_from([2**64 - 1, 2**63, 4096])),
       contents=st.binary(max_size=300), frames=frame_lists(), raw=st.binary(max_size=20), codes=DTYPE_CODES)
def test_raw_deliver_shm_survives_hostile_handles(live, target, name, nbytes, contents, frames, raw, codes):
    """DeliverShm (a shared-memory handle): names of no segment or outside /dev/shm, lengths beyond the
    segment and segments holding hostile bytes end in a status; the site and the controller stay up."""
    method = live.raw(target, _raw_method(target, RAW_STAGE_SHM_METHOD, RAW_CONTROL_SHM_METHOD), "unary")
    if name != "REAL":
        msg = struct.pack("<Q", nbytes) + name.encode() if name else raw
        call("Raw.DeliverShm", method, msg, garbage=True)
    else:   # a real segment of this process with hostile contents
        seg = shared_memory.SharedMemory(name=f"tierplan-{os.getpid()}-fuzz{time.monotonic_ns()}", create=True,
                                         size=4096)
        try:
            header = packed_header(frames or [pb.Frame()], codes=codes)
            payload = (struct.pack("<I", len(header)) + header + contents)[:4096 - 64]
            seg.buf[64:64 + len(payload)] = payload
            call("Raw.DeliverShm", method, encode_ref(seg.name, nbytes % 2**64), garbage=True)
        finally:
            seg.close()
            seg.unlink()
    live.alive()


@FUZZ
@given(target=STAGES, kind=st.integers(0, 255), length=st.one_of(st.integers(0, 2**32 - 1),
                                                                   st.sampled_from([0, 1, 2**32 - 1, 2**31])),
       body=st.binary(max_size=300), valid=st.booleans(), close_early=st.booleans())
def test_same_host_socket_survives_hostile_frames(live, target, kind, length, body, valid, close_early):
    """The same-host Unix socket (runtime.localwire) answers hostile frames with an error or closes the
    connection; it never allocates what a peer's length prefix claims beyond the message limit."""
    from tierplan.runtime.localwire import socket_name
    name = socket_name(live.address[target])
    if live.tls is not None or name is None:
        return   # with TLS there is no same-host socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waits = not valid and not close_early and length > len(body)   # the server waits for the rest: fine
    s.settimeout(0.2 if waits else CALL_TIMEOUT_S)
    t0 = time.monotonic()
    try:
        s.connect(name)
        if valid:
            msg = pack_delivery(_valid_delivery())
            s.sendall(struct.pack("<IB", len(msg), 2) + msg)
        else:
            s.sendall(struct.pack("<IB", length, kind) + body[:length])
            if close_early:
                s.shutdown(socket.SHUT_WR)
        try:
            head = s.recv(5)
            _count("Local.socket", "ok" if head[4:5] == b"\x03" else "errors")
        except TimeoutError:
            if not waits:
                _count("Local.socket", "hangs")
                pytest.fail(f"same-host socket: no answer within {CALL_TIMEOUT_S} s")
            _count("Local.socket", "errors")
    except OSError:
        _count("Local.socket", "errors")
    finally:
        s.close()
    assert time.monotonic() - t0 < CALL_TIMEOUT_S + SLACK_S
    live.alive()


# ----------------------------------------------------------------------------------- Control
@FUZZ
@given(frames=frame_lists(), cut=CUTS, at=st.integers(0, 3), bundle=st.booleans())
def test_control_deliver_survives_hostile_results(live, frames, cut, at, bundle):
    """Control.Deliver / DeliverBundle: hostile results end in a status; the controller stays up."""
    if bundle:
        call("Control.DeliverBundle", live.control.DeliverBundle, pb.Bundle(frames=frames))
    else:
        stream_call("Control.Deliver", live.control.Deliver, frames, cut, at)
    live.alive()


@FUZZ
@given(site=st.one_of(st.sampled_from(["phone", "cloud", "nope", ""]), texts),
       address=st.one_of(st.just("SELF"), st.sampled_from(["127.0.0.1:1", "127.0.0.1:0", "127.0.0.1:99999", "[::1]:1", "host",
                                          ":", "", "127.0.0.1:-5", "unix:/tmp/x", "a" * 3000, "SELF_OTHER", "SELF"]),
                         texts),
       pid=st.integers(-2**63, 2**63 - 1), replica=st.integers(-2**31, 2**31 - 1))
def test_control_register_survives_hostile_workers(live, site, address, pid, replica):
    """Control.Register, from the phone's own credentials (a compromised edge device under TLS): unknown
    sites, bad addresses and replicas are refused, a site cannot be pointed at a worker that is not that
    site, and the deployment still serves a request afterwards."""
    if address == "SELF_OTHER":   # a live worker that is another site
        address = live.address["agent" if site == "cloud" else "worker"]
    elif address == "SELF":       # where the site's worker already is (a worker registering again)
        address = live.address["agent" if site == "phone" else "worker"]
    call("Control.Register", live.control_as_device.Register,
         pb.RegisterRequest(site=site, address=address, pid=pid, replica=replica))
    live.alive()
    live.good_request()


def test_control_register_accepts_a_restarted_worker(live):
    """A worker of a site that starts at a new address registers itself (it answers Health there as that
    site, with its own certificate under TLS), is configured and serves; the old one registers back."""
    from tierplan.runtime.stage import StageWorker

    def wait_for(address: str) -> None:
        deadline = time.time() + 30
        st_ = live.svc.sites["cloud"]
        while not (st_.address == address and st_.up and st_.configured_generation == live.svc.generation):
            assert time.time() < deadline, (st_.address, st_.up, st_.error)
            time.sleep(0.05)

    cloud_tls = _tls_for(live.certs, "cloud")[0] if live.certs else None
    second = StageWorker("cloud", "127.0.0.1:0", tls=cloud_tls, controller=live.svc.address,
                         cache_dir=str(live.root / "worker" / "cache" / "second"))
    second.start()
    try:
        wait_for(second.address)
        live.good_request()
        ch = channel(live.svc.address, cloud_tls, GRPC_OPTIONS)
        try:
            ack = call("Control.Register", pbg.ControlStub(ch).Register,
                       pb.RegisterRequest(site="cloud", address=live.worker.address, pid=os.getpid()))
        finally:
            ch.close()
        assert ack is not None and ack.ok
        wait_for(live.worker.address)
    finally:
        second.stop()
    live.alive()
    live.good_request()


# ----------------------------------------------------------------------------------- FrontDoor
@FUZZ
@given(items=st.lists(st.tuples(st.one_of(st.sampled_from(["input", "x", "nope", ""]), texts),
                                st.one_of(tensors(), st.just("GOOD"))), max_size=3),
       timeout_ms=st.one_of(st.sampled_from([0.0, 3000.0]),
                            st.sampled_from([-1.0, math.nan, math.inf, -math.inf, 1e300, 5.0, 2**63]),
                            st.floats(allow_nan=True, allow_infinity=True)))
@example(items=[("input", "GOOD")], timeout_ms=3000.0)
def test_front_door_predict_survives_hostile_inputs(live, items, timeout_ms):
    """FrontDoor.Predict: wrong dtypes, shapes, sizes, unknown sources and timeouts end in an error
    status or an error reply (or a correct answer); the next good request is served."""
    req = pb.PredictRequest(timeout_ms=timeout_ms)
    for key, t in items:
        req.inputs[key].CopyFrom(tensor_to_pb("input", live.x) if t == "GOOD" else
                                 pb.Tensor(name=t[0], dtype=t[1], shape=t[2], data=t[3]))
    reply = call("FrontDoor.Predict", live.front.Predict, req, timeout=CALL_TIMEOUT_S * 2)
    if reply is not None and not reply.error:   # an answer: it must be the model's for the input used
        fed = req.inputs["input" if "input" in req.inputs else "x"]   # the source's name, else its tensor's
        x = np.frombuffer(fed.data, dtype=fed.dtype).reshape(tuple(fed.shape))
        t = reply.outputs["output"].items[0].tensors[0]
        got = np.frombuffer(t.data, dtype=t.dtype).reshape(tuple(t.shape))
        np.testing.assert_allclose(got, np.maximum(x, 0) * 2, rtol=1e-6)
    live.alive()
    live.good_request()


def test_front_door_health_answers(live):
    """FrontDoor.Health reports the deployment configured."""
    h = call("FrontDoor.Health", live.front.Health, pb.HealthRequest())
    assert h.configured and h.site == "front-door"


# ----------------------------------------------------------------------------------- every method, garbage
METHODS = [("worker", "/tierplan.runtime.Stage/Configure", "unary"), ("worker", "/tierplan.runtime.Stage/Health", "unary"),
           ("worker", "/tierplan.runtime.Stage/DeliverBundle", "unary"), ("worker", "/tierplan.runtime.Stage/Deliver", "stream"),
           ("agent", "/tierplan.runtime.Stage/Configure", "unary"), ("agent", "/tierplan.runtime.Stage/Deliver", "stream"),
           ("control", "/tierplan.runtime.Control/Register", "unary"),
           ("control", "/tierplan.runtime.Control/DeliverBundle", "unary"),
           ("control", "/tierplan.runtime.Control/Deliver", "stream"),
           ("front", "/tierplan.runtime.FrontDoor/Predict", "unary"), ("front", "/tierplan.runtime.FrontDoor/Health", "unary"),
           ("worker", "/tierplan.runtime.Stage/NoSuchMethod", "unary")]


@FUZZ
@given(method=st.sampled_from(METHODS), data=st.lists(st.binary(max_size=200), min_size=1, max_size=3))
def test_every_method_survives_bytes_that_are_not_its_message(live, method, data):
    """Bytes that do not parse as the method's message (or an unknown method) end in a status."""
    target, path, kind = method
    fn = live.raw(target, path, kind)
    if kind == "stream":
        call(path, fn, iter(data), garbage=True)
    else:
        call(path, fn, data[0], garbage=True)
    live.alive()


# ----------------------------------------------------------------------------------- summary
def test_zz_fuzz_summary():
    """The fuzzer's counts: no unhandled errors, hangs, crashes or escapes (printed; JSON if asked)."""
    failures = {k: COUNTS[k] for k in ("unhandled", "hangs", "crashes", "escapes")}
    line = (f"fuzz: {COUNTS['calls']} calls, {COUNTS['ok']} ok, {COUNTS['errors']} errors, "
            + ", ".join(f"{k} {v}" for k, v in failures.items()))
    print("\n" + line)
    for rpc, c in sorted(PER_RPC.items()):
        print(f"  {rpc:<45} " + " ".join(f"{k}={v}" for k, v in sorted(c.items())))
    if REPORT:
        Path(REPORT).parent.mkdir(parents=True, exist_ok=True)
        Path(REPORT).write_text(json.dumps({"examples_per_test": EXAMPLES, **{k: COUNTS[k] for k in
                                            ("calls", "ok", "errors", "unhandled", "hangs", "crashes", "escapes")},
                                            "per_rpc": {r: dict(c) for r, c in sorted(PER_RPC.items())}}, indent=1))
    assert COUNTS["calls"] > 0
    assert failures == {k: 0 for k in failures}, line
