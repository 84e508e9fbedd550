"""FLOP counts of the operator graph against published figures and hand-computed small cases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tierplan.partition.onnx_graph import load_onnx


def _total_macs(G) -> float:
    return sum(d["flops"] for _, d in G.nodes(data=True)) / 2


@pytest.mark.parametrize("name,published_macs", [
    ("light_resnet50.onnx", 4.1e9),       # ResNet-50 (He et al. 2016), 4.1 GMAC
    ("light_squeezenet.onnx", 350e6),     # this light graph is SqueezeNet 1.1 (~350 MMAC; 1.0 is ~830)
])
def test_light_models_match_published_macs(light, name, published_macs):
    """Total FLOPs / 2 of a real architecture is within 5% of its published MAC count."""
    G = load_onnx(light / name)
    assert G.graph["uncounted_ops"] == []
    assert abs(_total_macs(G) / published_macs - 1) < 0.05


def test_mobilenet_v2_matches_published_macs(zoo_dir):
    """MobileNetV2 1.0 at 224 (depthwise convs) counts within 5% of its published 300 MMAC."""
    G = load_onnx(zoo_dir / "mobilenet_v2.onnx")
    assert abs(_total_macs(G) / 300e6 - 1) < 0.05


def _one_op_model(tmp_path, node, inputs, outputs, inits=()):
    g = helper.make_graph([node], "t", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    return load_onnx(path)


def test_grouped_conv_counts_cin_per_group(tmp_path):
    """A grouped conv costs 2 * out elements * (Cin/group) * kh * kw FLOPs (no bias)."""
    w = numpy_helper.from_array(np.zeros((32, 4, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", group=4, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    G = _one_op_model(tmp_path, node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10, 10])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    assert G.nodes["c"]["flops"] == 2 * (32 * 10 * 10) * 4 * 9
    assert G.nodes["c"]["param_bytes"] == 32 * 4 * 9 * 4
    assert G.nodes["c"]["out_bytes"] == 32 * 100 * 4


def test_batched_matmul_counts_attention_shapes(tmp_path):
    """A batched MatMul [2,4,8,16] x [2,4,16,8] costs 2 * 2*4*8*8 * 16 FLOPs."""
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")
    G = _one_op_model(tmp_path, node, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 4, 8, 16]),
                                       helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 4, 16, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert G.nodes["mm"]["flops"] == 2 * (2 * 4 * 8 * 8) * 16


def test_uncountable_op_is_listed_not_zero(tmp_path):
    """An ONNX op without a FLOP rule (Det) is listed in uncounted_ops and marked uncounted."""
    node = helper.make_node("Det", ["a"], ["y"], name="det")
    G = _one_op_model(tmp_path, node, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 3])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert G.graph["uncounted_ops"] == ["Det"]
    assert G.nodes["det"]["counted"] is False


def test_graph_attributes_follow_contract(light):
    """Nodes and edges carry the attributes docs/ARCHITECTURE.md lists; edge bytes match tensor sizes."""
    G = load_onnx(light / "light_squeezenet.onnx")
    for _, d in G.nodes(data=True):
        assert {"op_type", "flops", "param_bytes", "out_bytes", "act_bytes", "inputs", "outputs"} <= set(d)
    tensors = G.graph["tensors"]
    for _, _, d in G.edges(data=True):
        assert d["nbytes"] == sum(tensors[t].nbytes for t in d["tensors"]) > 0
    assert G.graph["inputs"][0].shape == (1, 3, 224, 224)
    assert G.graph["outputs"][0].nbytes == 1000 * 4


def test_dims_bind_symbolic_inputs(ocr_models):
    """Binding PP-OCR det's symbolic dims gives static shapes everywhere; FLOPs grow with the image."""
    path = ocr_models / "ch_PP-OCRv4_det_infer.onnx"
    small = load_onnx(path, {"p2o.DynamicDimension.0": 1, "p2o.DynamicDimension.1": 320, "p2o.DynamicDimension.2": 320})
    big = load_onnx(path, {"p2o.DynamicDimension.0": 1, "p2o.DynamicDimension.1": 640, "p2o.DynamicDimension.2": 640})
    assert small.graph["outputs"][0].shape == (1, 1, 320, 320)
    ratio = _total_macs(big) / _total_macs(small)
    assert 3.9 < ratio < 4.1
