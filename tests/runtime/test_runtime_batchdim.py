"""A piece's batch dimension freed again (runtime.batchdim): partitioning binds it to 1, batching sites need it free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from tierplan.loader import load_app
from tierplan.planner.plan import batch_free_models
from tierplan.runtime.batchdim import BATCH_DIM, free_batch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "smart-city"


def _bound_to_one(path: Path) -> bytes:
    """The model with every input's and output's first dimension fixed at 1 (what a piece looks like)."""
    m = onnx.load(str(path))
    for t in [*m.graph.input, *m.graph.output]:
        d = t.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_value = 1
    return m.SerializeToString()


def test_the_smart_city_classifier_batches_and_the_detector_does_not():
    """classifier.onnx takes any batch of crops (its first dimension is `batch`); the detector takes one frame."""
    assert batch_free_models(load_app(EXAMPLE / "app.yaml")) == ["classifier"]


def test_a_batch_one_classifier_is_freed_and_a_batch_of_four_gives_the_four_single_results():
    """The classifier bound to batch 1 comes back with a free `batch` dimension; four crops in one call give
    exactly what four calls give."""
    freed = free_batch(_bound_to_one(EXAMPLE / "classifier.onnx"))
    assert freed is not None
    m = onnx.load_from_string(freed)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH_DIM
    sess = ort.InferenceSession(freed, providers=["CPUExecutionProvider"])
    crops = np.random.default_rng(1).standard_normal((4, 3, 224, 224)).astype(np.float32)
    together = sess.run(None, {"crop": crops})[0]
    alone = np.concatenate([sess.run(None, {"crop": crops[i:i + 1]})[0] for i in range(4)])
    assert together.shape == (4, 8)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-6)


def test_a_piece_that_reshapes_to_a_fixed_batch_keeps_batch_one():
    """A graph whose Reshape pins the batch to 1 fails the batch-of-two check: free_batch says no (None)."""
    shape = onnx.numpy_helper.from_array(np.array([1, 6], dtype=np.int64), "shape")
    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "pinned",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], [shape])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert free_batch(model.SerializeToString()) is None


def test_deploy_frees_the_batch_of_pieces_on_batching_sites_whose_model_takes_any_batch(tmp_path):
    """The pieces deploy ships: the classifier's (its model takes any batch) on a batching site comes with `batch`
    free; the same piece on a site that does not batch, and a fixed-size model's piece, ship as they are."""
    from tierplan.devices.fleet import resolve_fleet
    from tierplan.loader import load_app, load_fleet
    from tierplan.planner.plan import Plan, PlanPiece
    from tierplan.runtime.deploy import with_free_batch
    from tierplan.runtime.service import files_for

    piece = tmp_path / "classifier_p0.onnx"
    piece.write_bytes(_bound_to_one(EXAMPLE / "classifier.onnx"))
    det = tmp_path / "detector_p0.onnx"
    det.write_bytes((EXAMPLE / "detector.onnx").read_bytes())
    plan = Plan(status="feasible", assignment={"classifier/p0": "region_east", "detector/p0": "region_east"},
                pieces=[PlanPiece(id="classifier/p0", model="classifier", file=str(piece)),
                        PlanPiece(id="detector/p0", model="detector", file=str(det))])
    plan = plan.with_inputs(load_app(EXAMPLE / "app.yaml"), resolve_fleet(load_fleet(EXAMPLE / "fleet.yaml")))
    files = files_for(plan)
    served = with_free_batch(plan, files, ("region_east",))
    first_dim = onnx.load_from_string(served["classifier/p0"].data).graph.input[0].type.tensor_type.shape.dim[0]
    assert first_dim.dim_param == BATCH_DIM
    assert served["detector/p0"].data == files["detector/p0"].data                      # its model is fixed-size
    assert with_free_batch(plan, files, ("stations_north",))["classifier/p0"].data == files["classifier/p0"].data
