"""Dynamic batching at cloud stages: concurrent requests share one run of a batchable piece."""

from __future__ import annotations

import urllib.request

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tierplan.planner.plan import Plan, PlanEdge, PlanPiece
from tierplan.runtime.deploy import deploy
from tierplan.runtime.handplan import with_fleet
from tierplan.runtime.stage import StageOptions
from tierplan.spec import FleetSpec

pytestmark = pytest.mark.integration

WIDTH = 64


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory):
    """y = relu(x @ W) with a free batch dimension N (a batchable piece)."""
    w = np.random.default_rng(3).standard_normal((WIDTH, WIDTH)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", WIDTH])],
        [onnx.numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("dense") / "dense.onnx"
    onnx.save(m, str(path))
    return path, w


def _cloud_plan(path) -> Plan:
    """The dense piece alone on a cloud site, fed by a source there."""
    x_info = [{"name": "x", "shape": [1, WIDTH], "dtype": "float32", "nbytes": 4 * WIDTH}]
    plan = Plan(status="feasible", assignment={"x": "cloud", "dense/p0": "cloud", "sink:y": "cloud"},
                pieces=[PlanPiece(id="x", kind="source", outputs=x_info),
                        PlanPiece(id="dense/p0", kind="piece", file=str(path), inputs=x_info),
                        PlanPiece(id="sink:y", kind="sink")],
                edges=[PlanEdge(src="x", dst="dense/p0", nbytes=4 * WIDTH, tensors=["x"]),
                       PlanEdge(src="dense/p0", dst="sink:y", nbytes=4 * WIDTH, tensors=["y"])])
    return with_fleet(plan, FleetSpec.model_validate({"sites": {"cloud": {"tier": "cloud", "device": "aws-g5-xlarge"}}}))


@pytest.mark.parametrize("caps", ["options", "batch"])
def test_cloud_stage_batches_concurrent_requests_and_splits_results(ray_cluster, dense_model, caps):
    """Requests arriving together at a cloud stage run as one batch, and each gets its own row back; the caps
    given as StageOptions or as deploy's `batch` (`tierplan run --batch`, the cloud tier's sites batching)."""
    path, w = dense_model
    plan = _cloud_plan(path)
    xs = np.random.default_rng(4).standard_normal((32, WIDTH)).astype(np.float32)
    how = {"options": StageOptions(batch_sites=("cloud",), max_batch=8, max_wait_ms=30.0)} if caps == "options" \
        else {"batch": (8, 30.0)}
    with deploy(plan, cluster=ray_cluster, request_timeout_s=20, **how) as svc:
        outs = svc.predict_batch({"x": xs})
        text = urllib.request.urlopen(f"http://{svc.health()['cloud']['metrics']}/metrics", timeout=5).read().decode()
    for i, o in enumerate(outs):
        np.testing.assert_allclose(o["y"]["y"], np.maximum(xs[i:i + 1] @ w, 0), rtol=1e-5, atol=1e-5)
    runs = float(next(l for l in text.splitlines()
                      if l.startswith("tierplan_stage_batch_size_count") and "dense/p0" in l).split()[-1])
    total = float(next(l for l in text.splitlines()
                       if l.startswith("tierplan_stage_batch_size_sum") and "dense/p0" in l).split()[-1])
    assert total == 32 and runs < 32, f"{runs} runs for 32 requests: no batching"


def test_a_partial_batch_reports_how_long_its_oldest_request_waited(ray_cluster, dense_model):
    """One request alone at a batching site runs once its wait runs out: the site's metrics say how long it
    waited (at least max_wait_ms; `tierplan run` reports the mean and `simulate --profile` replays it)."""
    path, _ = dense_model
    plan = _cloud_plan(path)
    opts = StageOptions(batch_sites=("cloud",), max_batch=8, max_wait_ms=20.0)
    with deploy(plan, cluster=ray_cluster, options=opts, request_timeout_s=20) as svc:
        svc.predict({"x": np.ones((1, WIDTH), np.float32)})
        text = urllib.request.urlopen(f"http://{svc.health()['cloud']['metrics']}/metrics", timeout=5).read().decode()
    line = {ln.split()[0].split("{")[0]: float(ln.split()[-1]) for ln in text.splitlines()
            if ln.startswith("tierplan_stage_batch_wait_seconds_") and "dense/p0" in ln and "_bucket" not in ln}
    assert line["tierplan_stage_batch_wait_seconds_count"] == 1
    assert line["tierplan_stage_batch_wait_seconds_sum"] >= 0.020
