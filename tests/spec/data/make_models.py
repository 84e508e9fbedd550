"""Write the tiny ONNX fixtures of tests/spec (det.onnx, cls.onnx and the broken copies in bad/models).

    python tests/spec/data/make_models.py

det.onnx: images [1, 3, height, width] -> 1x1 Conv (3->4) -> Relu -> features [1, 4, height, width].
cls.onnx: x [1, 4, 8, 8] -> GlobalAveragePool -> Flatten -> logits [1, 4].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["det_model", "cls_model", "write_all"]

HERE = Path(__file__).resolve().parent
OPSET = 17


def det_model() -> onnx.ModelProto:
    """A two-node detector stand-in with symbolic height and width."""
    w = numpy_helper.from_array(np.full((4, 3, 1, 1), 0.25, dtype=np.float32), "conv_w")
    nodes = [helper.make_node("Conv", ["images", "conv_w"], ["conv_out"], name="conv"),
             helper.make_node("Relu", ["conv_out"], ["features"], name="relu")]
    graph = helper.make_graph(
        nodes, "det",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4, "height", "width"])],
        initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def cls_model() -> onnx.ModelProto:
    """A two-node classifier stand-in with a fixed 8x8 input."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"], name="gap"),
             helper.make_node("Flatten", ["pooled"], ["logits"], name="flatten")]
    graph = helper.make_graph(
        nodes, "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def write_all() -> None:
    """Write the good models and the corrupt / truncated / empty copies used by the bad corpus."""
    det = det_model().SerializeToString()
    (HERE / "det.onnx").write_bytes(det)
    (HERE / "cls.onnx").write_bytes(cls_model().SerializeToString())
    bad = HERE.parent / "bad" / "models"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "truncated.onnx").write_bytes(det[: len(det) // 2])
    (bad / "corrupt.onnx").write_bytes(b"\xff\xfe not a protobuf \x00\x01\x02" * 8)
    (bad / "empty.onnx").write_bytes(b"")


if __name__ == "__main__":
    write_all()
