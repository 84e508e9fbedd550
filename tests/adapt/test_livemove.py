"""A live move on a real deployment (SqueezeNet in 3 pieces, an agent and an in-process worker,
gRPC on loopback): requests sent throughout, none lost or answered twice, the new placement used
after the switch, the switch reported; an emulated link stepped live."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from adapt_helpers import CUTS, phone_gw_fleet
from tierplan.runtime import livemove
from tierplan.runtime.deploy import deploy
from tierplan.runtime.handplan import chain_plan, split_chain
from tierplan.runtime.stage import StageWorker


@pytest.fixture(scope="module")
def sq_pieces(squeezenet_random: Path, tmp_path_factory) -> list[Path]:
    return split_chain(squeezenet_random, CUTS, tmp_path_factory.mktemp("sq"), "sq")


@pytest.fixture(scope="module")
def gw_worker():
    w = StageWorker("gw")
    w.start()
    yield w
    w.stop()


def _reference(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return s.run(None, {"data_0": x})[0]


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_move_loses_no_request_and_uses_the_new_placement(sq_pieces, gw_worker, squeezenet_random, tmp_path):
    fleet = phone_gw_fleet(uplink_mbps=100.0)
    old = chain_plan(sq_pieces, ["phone", "gw", "gw"], "phone", fleet=fleet)
    new = chain_plan(sq_pieces, ["phone", "phone", "gw"], "phone", fleet=fleet)
    x = np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)
    want = _reference(squeezenet_random, x)
    done: list[tuple[float, dict, object]] = []
    errors: list[str] = []
    stop = threading.Event()
    with deploy(old, local=True, agents={"gw": gw_worker.address}) as svc:
        def client() -> None:
            while not stop.is_set():
                try:
                    y, tr = svc.predict_traced({"input": x})
                    done.append((time.time(), y, tr))
                except Exception as e:  # a lost request: the test fails on it
                    errors.append(f"{type(e).__name__}: {e}")
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.8)
        # the piece that moves is compiled for the phone's device as `tierplan compile` does, before the switch
        comp = livemove.compile_moved(new, [("m/p1", "phone")], tmp_path / "store", ["onnxruntime"])
        report = livemove.move(svc, new, manifest=comp["manifest"])
        shipped = json.loads(svc.files["g2~m/p1"].manifest_entry_json)
        time.sleep(0.8)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        described = svc.describe()
    assert errors == []
    assert comp["built"] == 1 and [p["piece"] for p in comp["pieces"]] == ["m/p1"], comp
    assert shipped["backend"] == "onnxruntime" and shipped["verified"] and shipped["site"] == "phone"
    assert shipped["file"].startswith(str(tmp_path / "store"))       # the compiled artifact, not the plan's file
    assert report["switched"] and report["prefix"] == "g2~", report
    assert described["switches"][0]["generation"] == report["generation"]
    before = [d for d in done if d[0] < report["switched_at_unix"]]
    after = [d for d in done if d[0] > report["switched_at_unix"] + report["drain_s"] + 0.05]
    assert before and after
    ids = [d[2].request_id for d in done]
    assert len(ids) == len(set(ids))                       # none answered twice
    for _, y, _ in done:                                   # every answer is the model's
        out = y["output"]
        got = next(iter(out.values())) if isinstance(out, dict) else out
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    # before the switch piece 1 ran on the gateway; requests started after it run it on the phone
    assert any("m/p1@gw" == s[1] for s in before[0][2].steps)
    for _, _, tr in after:
        names = {s[1] for s in tr.steps if s[0] == "compute"}
        assert "g2~m/p1@phone" in names and "g2~m/p2@gw" in names, names


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_set_link_slows_the_emulated_transfer(sq_pieces, gw_worker):
    fleet = phone_gw_fleet(uplink_mbps=400.0, rtt_ms=2.0)
    plan = chain_plan(sq_pieces, ["phone", "gw", "gw"], "phone", fleet=fleet)
    x = {"input": np.random.default_rng(1).random((1, 3, 224, 224)).astype(np.float32)}

    def uplink_ms(svc) -> float:
        ms = []
        for _ in range(3):
            _, tr = svc.predict_traced(x)
            ms += [s[2] for s in tr.steps if s[0] == "transfer" and s[1] == "phone->gw"]
        return float(np.median(ms))
    with deploy(plan, local=True, agents={"gw": gw_worker.address}) as svc:
        fast = uplink_ms(svc)
        livemove.set_link(svc, "phone", up_mbps=20.0)
        slow = uplink_ms(svc)
    # 1.55 MB: 31 ms at 400 Mbit/s, 620 ms at 20 Mbit/s (the worker paces the bytes)
    assert slow > 450 and slow > 4 * fast, (fast, slow)


def test_move_needing_a_site_that_does_not_run_is_refused(sq_pieces, gw_worker):
    fleet = phone_gw_fleet()
    plan = chain_plan(sq_pieces, ["phone", "phone", "phone"], "phone", fleet=fleet)
    other = chain_plan(sq_pieces, ["phone", "gw", "gw"], "phone", fleet=fleet)
    x = {"input": np.random.default_rng(2).random((1, 3, 224, 224)).astype(np.float32)}
    with deploy(plan, local=True) as svc:
        report = livemove.move(svc, other)
        assert not report["switched"] and "gw" in report["error"]
        svc.predict(x)                                      # the old plan still serves
        assert svc.node_prefix == ""
