"""Extraction: standalone pieces with only their own weights whose chained onnxruntime run equals the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tierplan.partition.api import load_manifest, partition_model
from tierplan.partition.feeds import random_feeds
from tierplan.partition.flops import subgraphs_of
from tierplan.partition.onnx_graph import outer_refs

REL_TOL = 1e-5
REPO = Path(__file__).resolve().parents[2]


def _cases(light, ocr, vad, zoo):
    return {
        "resnet50 (residual)": (light / "light_resnet50.onnx", None, None),
        "inception_v1 (branches)": (light / "light_inception_v1.onnx", None, None),
        "tiny_detector (4 outputs)": (zoo / "tiny_detector.onnx", None, None),
        "transformer_encoder": (zoo / "transformer_encoder.onnx", None, None),
        "mobilenet_v2": (zoo / "mobilenet_v2.onnx", None, None),
        "ppocr_det": (ocr / "ch_PP-OCRv4_det_infer.onnx",
                      {"p2o.DynamicDimension.0": 1, "p2o.DynamicDimension.1": 320, "p2o.DynamicDimension.2": 320}, None),
        "ppocr_cls": (ocr / "ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x[0]": 1, "x[2]": 48, "x[3]": 192}, None),
        "ppocr_rec": (ocr / "ch_PP-OCRv4_rec_infer.onnx",
                      {"p2o.DynamicDimension.0": 1, "x[2]": 48, "p2o.DynamicDimension.1": 320}, None),
        "silero_vad_16k_sequence": (vad / "silero_vad_16k_sequence.onnx", {"sequence_length": 16}, None),
        "silero_vad (If)": (vad / "silero_vad.onnx", {"input[0]": 1, "input[1]": 512, "state[1]": 1},
                            {"sr": np.array(16000, np.int64)}),
        "silero_vad_16k_op15 (nested If)": (vad / "silero_vad_16k_op15.onnx", {"batch": 1, "sequence": 512},
                                            {"sr": np.array(16000, np.int64)}),
        "smart-city detector (SSDlite)": (REPO / "examples/smart-city/detector.onnx", None, None),
        "smart-city classifier": (REPO / "examples/smart-city/classifier.onnx", {"batch": 1}, None),
    }


CASES = ["resnet50 (residual)", "inception_v1 (branches)", "tiny_detector (4 outputs)", "transformer_encoder",
         "mobilenet_v2", "ppocr_det", "ppocr_cls", "ppocr_rec", "silero_vad_16k_sequence", "silero_vad (If)",
         "silero_vad_16k_op15 (nested If)", "smart-city detector (SSDlite)", "smart-city classifier"]


@pytest.mark.parametrize("case", CASES)
def test_chained_pieces_equal_whole_model(case, light, ocr_models, vad_models, zoo_dir, tmp_path):
    """Chaining the extracted pieces in onnxruntime reproduces every model output (rel max diff <= 1e-5)."""
    path, dims, feeds = _cases(light, ocr_models, vad_models, zoo_dir)[case]
    res = partition_model(path, max_pieces=4, out_dir=tmp_path, dims=dims, verify=True, feeds=feeds, use_cache=False)
    assert res.verify is not None and res.verify.max_rel_diff <= REL_TOL
    assert len(res.verify.outputs) == len(res.graph.graph["outputs"])
    n_ops = res.graph.number_of_nodes()
    if n_ops >= 20:
        assert len(res.pieces) >= 2, "a model of this size should be cut"
    for p in res.pieces:
        _assert_only_own_weights(Path(p.file))


def _assert_only_own_weights(path: Path) -> None:
    m = onnx.load(str(path))
    read = {x for n in m.graph.node for x in n.input if x}
    for n in m.graph.node:
        for g in subgraphs_of(n):
            read |= outer_refs(g)
    foreign = [t.name for t in m.graph.initializer if t.name not in read]
    assert not foreign, f"{path.name} carries weights none of its nodes read: {foreign[:3]}"
    onnx.checker.check_model(m)


def test_piece_weights_add_up_to_the_model(light, tmp_path):
    """The pieces' weights together are the model's weights, each stored once (no piece holds them all)."""
    path = light / "light_resnet50.onnx"
    res = partition_model(path, max_pieces=4, out_dir=tmp_path, use_cache=False)
    whole = res.manifest["param_bytes"]
    sizes = [p.param_bytes for p in res.pieces]
    assert sum(sizes) == whole
    assert max(sizes) < whole


def test_control_flow_node_stays_whole_with_outer_inputs(vad_models, tmp_path):
    """An If node lands whole in one piece, whose inputs include the outer-scope tensors its branches read."""
    path = vad_models / "silero_vad_16k_op15.onnx"
    res = partition_model(path, max_pieces=4, out_dir=tmp_path, dims={"batch": 1, "sequence": 512},
                          feeds={"sr": np.array(16000, np.int64)}, use_cache=False)
    G = res.graph
    for v, d in G.nodes(data=True):
        if d["op_type"] != "If":
            continue
        (piece,) = [p for p in res.pieces if v in p.nodes]
        model = onnx.load(piece.file)
        node = next(n for n in model.graph.node if n.op_type == "If" and n.name == v)
        refs = set().union(*(outer_refs(g) for g in subgraphs_of(node)))
        available = ({i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
                     | {o for n in model.graph.node for o in n.output})
        assert refs <= available


def test_manifest_round_trips_and_names_original_tensors(ocr_models, tmp_path):
    """manifest.json lists per piece the original tensor names with shapes and bytes, and reads back equal."""
    path = ocr_models / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    res = partition_model(path, max_pieces=3, out_dir=tmp_path, dims={"x[0]": 1, "x[2]": 48, "x[3]": 192},
                          use_cache=False)
    manifest, pieces = load_manifest(tmp_path / "manifest.json")
    assert [p.id for p in pieces] == [p.id for p in res.pieces]
    assert pieces[0].inputs[0].name == "x" and pieces[0].inputs[0].shape == (1, 3, 48, 192)
    assert pieces[-1].outputs[-1].name == "save_infer_model/scale_0.tmp_1"
    for p, q in zip(pieces, res.pieces):
        assert p.inputs == q.inputs and p.outputs == q.outputs and p.flops == q.flops
        assert Path(p.file).is_file()
    assert {"model", "pieces", "verify"} <= set(manifest)
    assert {"id", "inputs", "outputs", "flops", "param_bytes", "file"} <= set(manifest["pieces"][0])


def test_cached_result_is_reused(light, tmp_path, monkeypatch):
    """A second partition of the same model, dims and K reads the cache instead of recomputing."""
    monkeypatch.setenv("TIERPLAN_CACHE", str(tmp_path))
    path = light / "light_squeezenet.onnx"
    first = partition_model(path, max_pieces=3)
    second = partition_model(path, max_pieces=3)
    assert not first.cached and second.cached
    assert [p.file for p in first.pieces] == [p.file for p in second.pieces]
    third = partition_model(path, max_pieces=2)
    assert not third.cached and len(third.pieces) == 2


def test_random_feeds_are_deterministic(light):
    """The verification inputs are the same for the same seed."""
    from tierplan.partition.onnx_graph import load_onnx
    G = load_onnx(light / "light_squeezenet.onnx")
    a, b = random_feeds(G.graph["inputs"], 3), random_feeds(G.graph["inputs"], 3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
