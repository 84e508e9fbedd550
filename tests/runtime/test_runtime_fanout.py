"""Fan-out transforms, joins of a branch's inputs, and empty fan-outs, across an agent and a Ray site."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rt_helpers import three_tier_fleet

from tierplan.planner.plan import Plan, PlanEdge, PlanPiece
from tierplan.runtime.deploy import deploy
from tierplan.runtime.handplan import with_fleet

pytestmark = pytest.mark.integration

WIDTH = 16


@pytest.fixture(scope="module")
def fanout_service(ray_cluster, tmp_path_factory):
    """rows (phone) -> split_rows (phone, fan-out) -> dense (cloud) -> add_row_sum (cloud, joins the row) -> phone."""
    w = np.random.default_rng(5).standard_normal((WIDTH, WIDTH)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                          "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])],
                          [onnx.numpy_helper.from_array(w, "W")])
    path = tmp_path_factory.mktemp("fan") / "dense.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    mod = "tests.runtime.rt_fanout_transforms"
    row = [{"name": "x", "shape": [1, WIDTH], "dtype": "float32", "nbytes": 4 * WIDTH}]
    plan = Plan(
        status="feasible",
        assignment={"rows": "phone", "split": "phone", "dense/p0": "cloud", "tag": "cloud", "sink:out": "phone"},
        pieces=[PlanPiece(id="rows", kind="source"),
                PlanPiece(id="split", kind="transform", function=f"{mod}:split_rows"),
                PlanPiece(id="dense/p0", kind="piece", file=str(path), inputs=row),
                PlanPiece(id="tag", kind="transform", function=f"{mod}:add_row_sum"),
                PlanPiece(id="sink:out", kind="sink")],
        edges=[PlanEdge(src="rows", dst="split", nbytes=0, tensors=["x"]),
               PlanEdge(src="split", dst="dense/p0", nbytes=64, tensors=["x"]),
               PlanEdge(src="split", dst="tag", nbytes=64, tensors=["x"]),
               PlanEdge(src="dense/p0", dst="tag", nbytes=64, tensors=["y"]),
               PlanEdge(src="tag", dst="sink:out", nbytes=64, tensors=["z"])])
    plan = with_fleet(plan, three_tier_fleet())
    with deploy(plan, cluster=ray_cluster, request_timeout_s=10, allow_transforms=[mod]) as svc:
        yield svc, w


def test_fan_out_items_come_back_in_order_after_their_join(fanout_service):
    """Each fanned-out row is joined with its own model output and the sink lists them in row order."""
    svc, w = fanout_service
    x = np.random.default_rng(6).standard_normal((5, WIDTH)).astype(np.float32)
    out = svc.predict({"rows": x})["out"]
    assert isinstance(out, list) and len(out) == 5
    for i, item in enumerate(out):
        expected = np.maximum(x[i:i + 1] @ w, 0) + x[i].sum()
        np.testing.assert_allclose(item["z"], expected, rtol=1e-5, atol=1e-5)


def test_empty_fan_out_completes_with_no_items(fanout_service):
    """A fan-out that produces nothing ends the request at once with an empty list (no wait for the deadline)."""
    svc, _ = fanout_service
    out, trace = svc.predict_traced({"rows": np.zeros((0, WIDTH), np.float32)})
    assert out["out"] == []
    assert trace.latency_ms < 5000


def test_a_joined_request_traces_each_step_once(fanout_service):
    """The join at `tag` meets each row's own input and its model output, whose traces share their past
    (the row's feed and the split): the request's trace has each step once, and every node that ran."""
    svc, _ = fanout_service
    _, trace = svc.predict_traced({"rows": np.ones((2, WIDTH), np.float32)})
    keys = [(k, n, ms) for k, n, ms in trace.steps]
    assert len(keys) == len(set(keys)), f"repeated steps in {trace.steps}"
    ran = [n for k, n, _ in trace.steps if k == "compute"]
    assert ran.count("split@phone") == 1 and ran.count("dense/p0@cloud") == 2 and ran.count("tag@cloud") == 2, ran
