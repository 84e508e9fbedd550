"""Compute threads per stage worker and cross-process link sharing (real onnxruntime, real agent processes)."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tierplan.runtime.handplan import chain_plan
from tierplan.runtime.runners import OrtRunner
from tierplan.runtime.options import LINKS_DIR_MARKER, StageOptions
from tierplan.runtime.stage import StageWorker
from tierplan.spec import FleetSpec


def _tiny_model(path) -> str:
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


class _StatefulRunner:
    """A runner like TVM's graph executor: per-call state, not safe to call from two threads."""

    input_names = ["x"]
    batchable = False
    thread_safe = False

    def run(self, inputs):
        return dict(inputs)


def test_stage_options_carry_links_shared_dir_and_compute_threads():
    """The options sent with Configure keep the shared link directory and the compute thread count."""
    opts = StageOptions(links_shared_dir="/tmp/x-links", compute_threads=3, batch_sites=("cloud",))
    back = StageOptions.from_json(opts.to_json())
    assert back == opts and back.links_shared_dir == "/tmp/x-links" and back.compute_threads == 3
    assert StageOptions.from_json("").links_shared_dir == ""


def test_only_thread_safe_runners_run_side_by_side(tmp_path):
    """onnxruntime pieces run without a lock; a runner that is not thread-safe gets one lock of its own."""
    w = StageWorker("s", cache_dir=str(tmp_path / "cache"))
    try:
        ort_lock = w._run_lock(OrtRunner(_tiny_model(tmp_path / "relu.onnx")))
        stateful = _StatefulRunner()
        lock = w._run_lock(stateful)
        assert w._run_lock(stateful) is lock and isinstance(lock, type(threading.Lock()))
        assert lock is not ort_lock and w._run_lock(_StatefulRunner()) is not lock
        with ort_lock, ort_lock:     # no lock at all: nesting does not block
            pass
    finally:
        w.stop()


def _two_edge_fleet() -> FleetSpec:
    return FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "pixel-8", "attach": "bs", "link": "radio"},
                  "hub": {"tier": "edge", "device": "pixel-8", "attach": "bs", "link": "radio"},
                  "bs": {"tier": "base_station", "device": "mec-t4"}},
        "links": {"radio": {"uplink_mbps": 2000, "downlink_mbps": 2000, "rtt_ms": 1}}})


@pytest.mark.integration
def test_concurrent_requests_on_compute_threads_share_emulated_links(sq_files, sq_input, sq_reference, tmp_path):
    """Requests run side by side on several compute threads per site, each gets its own correct result,
    and the agents pace the emulated links through the deployment's shared directory."""
    from tierplan.runtime.deploy import deploy
    fleet = _two_edge_fleet()
    plan = chain_plan(sq_files, ["phone", "hub", "hub"], "phone", fleet=fleet)
    shared = tmp_path / "links"
    shared.mkdir()
    rng = np.random.default_rng(7)
    xs = [sq_input["input"]] + [rng.random((1, 3, 224, 224)).astype(np.float32) for _ in range(7)]
    opts = StageOptions(compute_threads=3, links_shared_dir=str(shared))
    with deploy(plan, options=opts, request_timeout_s=60) as svc:
        outs = svc.predict_batch([{"input": x} for x in xs])
        again = svc.predict({"input": xs[3]})
    got = [next(iter(o["output"].values())) for o in outs]
    np.testing.assert_allclose(got[0], sq_reference, rtol=1e-4, atol=1e-5)
    for i in range(1, len(xs)):
        assert not np.allclose(got[i], got[0]), f"request {i} got another request's result"
    np.testing.assert_allclose(next(iter(again["output"].values())), got[3], rtol=1e-5, atol=1e-6)
    buckets = [p for p in shared.iterdir() if p.name != LINKS_DIR_MARKER]
    assert buckets and all(p.suffix == ".bucket" for p in buckets), f"no shared link buckets in {shared}: {buckets}"


def test_only_nodes_known_to_be_quick_run_on_the_connection_thread(tmp_path):
    """A same-host delivery runs on its connection's thread only when its node's last run took at most
    _INLINE_MAX_MS: a node not yet timed, or a slow one, goes to a compute thread, so the sender's next
    deliveries on that connection are taken at once (a sender gives one up after 1 s)."""
    from tierplan.runtime.stage import _INLINE_MAX_MS
    w = StageWorker("s", cache_dir=str(tmp_path / "cache"))
    try:
        assert not w._inline_ok("m/p0")                       # never timed here
        w._run_ms["m/p0"] = _INLINE_MAX_MS / 10
        assert w._inline_ok("m/p0")
        w._run_ms["m/p0"] = _INLINE_MAX_MS * 4                # grew slow: back to the compute threads
        assert not w._inline_ok("m/p0") and not w._inline_ok("m/p1")
    finally:
        w.stop()


def test_a_backlog_from_one_peer_runs_on_every_compute_thread(tmp_path):
    """With several compute threads, a same-host delivery whose peer's next delivery already arrived
    (`more`) goes to a compute thread while the connection's thread takes the next one; a delivery
    with none behind it runs on the connection's own thread (no handoff), as it always does with
    one compute thread."""
    import json
    import time

    from test_runtime_security import _configure, _piece
    from tierplan.runtime.wire import Delivery

    def delivery(i: int) -> Delivery:
        return Delivery(f"r{i}", "x", "relu", {"x": np.ones((1, 4), np.float32)},
                        deadline_unix_ms=(time.time() + 30) * 1e3)

    def ran_on(w: StageWorker, i: int, more: bool) -> str:
        names: list[str] = []
        done = threading.Event()
        timed = StageWorker._timed

        def note(cfg, d) -> None:
            names.append(threading.current_thread().name)
            timed(w, cfg, d)
            done.set()
        w._timed = note    # type: ignore[method-assign]   # observes where the real run happens
        w._take(delivery(i), more)
        assert done.wait(10), "the delivery never ran"
        return names[0]

    for threads in (2, 1):
        w = StageWorker("phone", "127.0.0.1:0", cache_dir=str(tmp_path / f"cache{threads}"))
        w.start()
        try:
            assert _configure(w.address, [_piece()], options=json.dumps({"compute_threads": threads})).ok
            assert ran_on(w, 0, False).startswith("compute-phone")     # not yet timed: a compute thread
            here = threading.current_thread().name
            assert ran_on(w, 1, False) == here
            assert ran_on(w, 2, True).startswith("compute-phone") if threads > 1 else ran_on(w, 2, True) == here
        finally:
            w.stop()
