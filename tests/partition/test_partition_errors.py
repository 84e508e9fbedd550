"""Bad input gives one clear InputError each (and exit code 2 with one line from the CLI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tierplan.partition.api import partition_model
from tierplan.partition.onnx_graph import load_onnx
from tierplan.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierplan", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_onnx_is_named_corrupt(light, tmp_path, frac):
    """A truncated model file is reported as corrupt or truncated, naming the file."""
    data = (light / "light_squeezenet.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(InputError, match=r"bad\.onnx: (empty file|not a valid ONNX model)"):
        load_onnx(bad)


def test_garbage_file_is_named_corrupt(tmp_path):
    """A file that is not protobuf at all is reported as not a valid ONNX model."""
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"\xff\xfe this is not onnx" * 10)
    with pytest.raises(InputError, match="not a valid ONNX model"):
        load_onnx(bad)


def _small_model(op="Relu", domain=""):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node(op, ["h"], ["y"], name="act", domain=domain)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=opsets)


def test_missing_external_weights_name_tensor_and_file(tmp_path):
    """Weights stored as external data whose file is gone: the error names the tensor and the missing file."""
    m = _small_model()
    path = tmp_path / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="ext.weights", size_threshold=0)
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(InputError, match=r"external-data weights missing: tensor 'w' needs file .*ext\.weights"):
        load_onnx(path, {"batch": 1})


def test_external_weights_present_load(tmp_path):
    """Weights stored as external data next to the model load and count as parameters."""
    path = tmp_path / "ext.onnx"
    onnx.save(_small_model(), str(path), save_as_external_data=True, location="ext.weights", size_threshold=0)
    G = load_onnx(path, {"batch": 2})
    assert G.nodes["mm"]["param_bytes"] == 4 * 4 * 4


def test_unbound_dim_names_tensor_dim_and_fix(tmp_path):
    """An unbound dynamic dimension names the tensor, the dimension and both ways to bind it."""
    path = tmp_path / "dyn.onnx"
    onnx.save(_small_model(), str(path))
    with pytest.raises(InputError) as e:
        load_onnx(path)
    msg = str(e.value)
    assert "'x' dim 0 (batch)" in msg and "--dims batch=VALUE" in msg and "dims:" in msg and "app.yaml" in msg


def test_stray_dim_name_is_refused(tmp_path):
    """A dims entry matching no dynamic dimension is refused with the list of real ones."""
    path = tmp_path / "dyn.onnx"
    onnx.save(_small_model(), str(path))
    with pytest.raises(InputError, match=r"dims\.batchh: no input .* \(dynamic dimensions: batch\)"):
        load_onnx(path, {"batchh": 1})


def test_unknown_ops_are_listed(tmp_path):
    """Operators that are neither ONNX nor onnxruntime contrib ops are listed by name."""
    m = _small_model(op="FancyAct", domain="my.company")
    m.graph.node.append(helper.make_node("NotAnOnnxOp", ["y"], ["z"], name="n2"))
    path = tmp_path / "custom.onnx"
    onnx.save(m, str(path))
    with pytest.raises(InputError, match=r"unknown operators NotAnOnnxOp, my\.company\.FancyAct"):
        load_onnx(path, {"batch": 1})


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    """The CLI turns bad input into exit code 2, one `error:` line, no traceback, nothing written."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07\x12")
    out = tmp_path / "out"
    r = _cli("partition", str(bad), "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert not out.exists()


def test_cli_bad_dims_flag(tmp_path, light):
    """A malformed --dims value is refused with the expected syntax."""
    r = _cli("partition", str(light / "light_squeezenet.onnx"), "--out", str(tmp_path / "o"), "--dims", "batch")
    assert r.returncode == 2 and "expected NAME=VALUE" in r.stderr


def test_missing_model_file(tmp_path):
    """A model path that does not exist is reported as not found."""
    with pytest.raises(InputError, match="model file not found"):
        partition_model(tmp_path / "nope.onnx", out_dir=tmp_path / "o")
