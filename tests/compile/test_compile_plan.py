"""Integration tests of `compile_plan` with real TVM, onnxruntime and LiteRT builds on real models."""

from __future__ import annotations

import json
import tarfile
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from compile_fixtures import FACE_TFLITE, PPOCR_CLS, make_plan
from onnx import TensorProto, helper, numpy_helper

from tierplan.runtime.backends import load_artifact
from tierplan.runtime.compile import CROSS_NOTE, CompileOptions, compile_plan, load_manifest
from tierplan.errors import InputError

pytestmark = pytest.mark.integration

FAST = CompileOptions(measure_runs=3, measure_budget_s=1.0)
MANIFEST_FIELDS = {"piece", "site", "device", "backend", "file", "verified", "latency_ms", "piece_sha256", "target",
                   "versions", "max_abs_diff", "fallback_reason", "alternatives", "inputs", "outputs", "key"}


def _ort(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def test_tvm_build_of_real_piece_matches_onnxruntime(squeezenet_pieces, tmp_path):
    """A TVM build of a SqueezeNet piece for `local` (this machine's detected CPU) matches onnxruntime, is timed
    natively, and loads and runs."""
    _, p0, _ = squeezenet_pieces
    plan = make_plan([("squeezenet/p0", p0, "edge")], {"edge": "local"})
    res = compile_plan(plan, tmp_path / "art", backends=["tvm"], progress=False, options=FAST)
    e = res.entry("squeezenet/p0", "edge")
    assert e["backend"] == "tvm" and e["file"].endswith(".so")
    assert e["verified"] is True and e["max_abs_diff"] <= 1e-4
    assert e["latency_ms"] > 0 and e["latency_source"] == "measured"
    x = np.random.default_rng(7).random((1, 3, 224, 224), dtype=np.float32)
    runner = load_artifact(e, root=tmp_path / "art")
    got = runner.run({"data_0": x, "unrelated": np.zeros(1)})
    want = _ort(p0, {"data_0": x})
    np.testing.assert_allclose(got["r9"], want["r9"], rtol=1e-4, atol=1e-4)
    assert runner.output_names == ["r9"]


def test_aarch64_cross_compile_exports_tar(squeezenet_pieces, tmp_path):
    """A piece on an aarch64 device with TVM is cross-compiled to a non-empty .tar, marked not verified."""
    _, _, p1 = squeezenet_pieces
    plan = make_plan([("squeezenet/p1", p1, "pi")], {"pi": "rpi5"})
    res = compile_plan(plan, tmp_path / "art", backends=["tvm"], progress=False, options=FAST)
    e = res.entry("squeezenet/p1", "pi")
    assert e["backend"] == "tvm" and e["file"].endswith(".tar")
    assert e["target"]["mtriple"] == "aarch64-linux-gnu"
    with tarfile.open(e["file"]) as tar:
        members = tar.getmembers()
    assert members and sum(m.size for m in members) > 0
    assert e["verified"] is False and e["verify_note"] == CROSS_NOTE
    assert e["host_check_max_abs_diff"] <= 1e-4          # the same Relax module checked on this machine
    assert e["latency_source"].startswith("predicted")
    with pytest.raises(InputError, match="cross-compiled for aarch64"):
        load_artifact(e, emulate=False)
    runner = load_artifact(e, root=tmp_path / "art")       # local emulation: the checked host build
    assert runner.emulated is True and e["host_rel_file"].endswith(".so")
    x = np.random.default_rng(1).random((1, 128, 55, 55), dtype=np.float32)
    np.testing.assert_allclose(runner.run({"r9": x})["softmaxout_1"], _ort(p1, {"r9": x})["softmaxout_1"],
                               rtol=1e-4, atol=1e-4)


def test_tvm_frontend_failure_falls_back_to_onnxruntime(tmp_path):
    """PP-OCR's orientation classifier is rejected by TVM's frontend; onnxruntime is used and the reason kept."""
    plan = make_plan([("cls/p0", PPOCR_CLS, "edge")], {"edge": "local"},
                     inputs={"cls/p0": [{"name": "x", "shape": [1, 3, 48, 192], "dtype": "float32"}]})
    res = compile_plan(plan, tmp_path / "art", progress=False, options=FAST)
    e = res.entry("cls/p0", "edge")
    assert e["backend"] == "onnxruntime" and e["verified"] is True
    assert "tvm" in e["fallback_reason"] and "frontend" in e["fallback_reason"]
    tvm_alt = [a for a in e["alternatives"] if a["backend"] == "tvm"][0]
    assert tvm_alt["ok"] is False and tvm_alt["chosen"] is False
    out = load_artifact(e).run({"x": np.zeros((1, 3, 48, 192), np.float32)})
    assert out["save_infer_model/scale_0.tmp_1"].shape == (1, 2)


def _softmax_model(path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 3, (64, 64)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Exp", ["t"], ["e"]), helper.make_node("Softmax", ["e"], ["y"], axis=-1)]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_numerical_mismatch_rejects_artifact(tmp_path):
    """With a zero tolerance TVM's float rounding counts as a mismatch: the build is rejected, onnxruntime used."""
    model = _softmax_model(tmp_path / "tiny.onnx")
    plan = make_plan([("tiny/p0", model, "edge")], {"edge": "local"})
    strict = CompileOptions(measure_runs=2, measure_budget_s=0.5, rtol=0.0, atol=0.0)
    res = compile_plan(plan, tmp_path / "art", backends=["tvm", "onnxruntime"], progress=False, options=strict)
    e = res.entry("tiny/p0", "edge")
    tvm_alt = [a for a in e["alternatives"] if a["backend"] == "tvm"][0]
    assert tvm_alt["ok"] is False and "mismatch" in tvm_alt["reason"] and tvm_alt["max_abs_diff"] > 0
    assert e["backend"] == "onnxruntime" and "mismatch" in e["fallback_reason"]


def test_litert_runs_real_tflite(tmp_path):
    """BlazeFace (.tflite) is compiled with LiteRT, timed, and runs by its flatbuffer tensor names."""
    plan = make_plan([("face/p0", FACE_TFLITE, "edge")], {"edge": "local"})
    res = compile_plan(plan, tmp_path / "art", progress=False, options=FAST)
    e = res.entry("face/p0", "edge")
    assert e["backend"] == "litert" and e["file"].endswith(".tflite") and e["latency_ms"] > 0
    assert [i["name"] for i in e["inputs"]] == ["input"]
    out = load_artifact(e).run({"input": np.zeros((1, 128, 128, 3), np.float32)})
    assert out["regressors"].shape == (1, 896, 16) and out["classificators"].shape == (1, 896, 1)


def test_recompile_unchanged_plan_is_all_cached(squeezenet_pieces, tmp_path):
    """Compiling the same plan again builds nothing: every artifact is cached and it takes a fraction of the time."""
    _, p0, p1 = squeezenet_pieces
    plan = make_plan([("squeezenet/p0", p0, "edge"), ("squeezenet/p1", p1, "cloud")],
                     {"edge": "local", "cloud": "aws-c7i-2xlarge"})
    first = compile_plan(plan, tmp_path / "art", progress=False, options=FAST)
    assert first.manifest["built"] == 2 and first.cached == 0
    t0 = time.perf_counter()
    second = compile_plan(plan, tmp_path / "art", progress=False, options=FAST)
    again_s = time.perf_counter() - t0
    assert second.cached == 2 and second.manifest["built"] == 0
    assert again_s < 0.25 * first.compile_s
    assert [a["key"] for a in second.artifacts] == [a["key"] for a in first.artifacts]


def test_manifest_fields_present(squeezenet_pieces, tmp_path):
    """manifest.json carries the DESIGN fields plus hashes, target, versions, check result and alternatives."""
    _, p0, _ = squeezenet_pieces
    plan = make_plan([("squeezenet/p0", p0, "edge")], {"edge": "local"})
    compile_plan(plan, tmp_path / "art", backends=["onnxruntime"], progress=False, options=FAST)
    manifest = load_manifest(tmp_path / "art")
    e = manifest["artifacts"][0]
    assert MANIFEST_FIELDS <= set(e)
    assert {"tvm", "onnxruntime"} <= set(e["versions"]) and len(e["piece_sha256"]) == 64
    assert (tmp_path / "art" / e["rel_file"]).is_file() and e["rel_file"].startswith(e["key"])
    assert e["alternatives"][0]["chosen"] is True
    assert json.loads((tmp_path / "art" / "manifest.json").read_text()) == manifest


def test_unknown_dimension_is_input_error(tmp_path):
    """A piece with a symbolic input dimension and no declared shape is refused, naming the tensor."""
    plan = make_plan([("cls/p0", PPOCR_CLS, "edge")], {"edge": "local"})
    with pytest.raises(InputError, match="'x' has unknown dimension"):
        compile_plan(plan, tmp_path / "art", progress=False, options=FAST)
    assert not (tmp_path / "art" / "manifest.json").exists()


def test_tuning_uses_and_reuses_persistent_database(tmp_path):
    """--tune-trials tunes the heaviest task into a database; a new store with the same database tunes nothing."""
    model = _softmax_model(tmp_path / "tiny.onnx")
    plan = make_plan([("tiny/p0", model, "edge")], {"edge": "local"})
    kw = dict(tune_trials=4, tune_tasks=1, backends=["tvm"], progress=False, tune_db=tmp_path / "db", options=FAST)
    first = compile_plan(plan, tmp_path / "a", **kw).entry("tiny/p0", "edge")
    assert first["backend"] == "tvm" and first["verified"] is True
    assert len(first["tune"]["tasks_tuned"]) == 1 and first["tune"]["tasks_reused"] == []
    assert list((tmp_path / "db").glob("*/database_tuning_record.json"))
    second = compile_plan(plan, tmp_path / "b", **kw).entry("tiny/p0", "edge")
    assert second["tune"]["tasks_tuned"] == [] and second["tune"]["tasks_reused"] == first["tune"]["tasks_tuned"]
    assert second["verified"] is True
    untuned = compile_plan(plan, tmp_path / "a", backends=["tvm"], progress=False, options=FAST)
    assert untuned.artifacts[0]["key"] != first["key"]        # tune settings are part of the key


def test_forced_tvm_failure_still_falls_back_to_onnxruntime(tmp_path):
    """Even with backends=['tvm'], an ONNX piece TVM cannot build ends on onnxruntime with the reason."""
    plan = make_plan([("cls/p0", PPOCR_CLS, "edge")], {"edge": "local"},
                     inputs={"cls/p0": [{"name": "x", "shape": [1, 3, 48, 192], "dtype": "float32"}]})
    e = compile_plan(plan, tmp_path / "art", backends=["tvm"], progress=False, options=FAST).artifacts[0]
    assert e["backend"] == "onnxruntime" and e["fallback_reason"].startswith("tvm:")


def test_gpu_device_is_not_measured_here(squeezenet_pieces, tmp_path):
    """A CUDA device is not this machine: every listed backend is tried (TVM's CUDA target is not built here, and
    says so), onnxruntime wins with the cost model's latency."""
    _, p0, _ = squeezenet_pieces
    plan = make_plan([("squeezenet/p0", p0, "cells")], {"cells": "mec-t4"})
    e = compile_plan(plan, tmp_path / "art", progress=False, options=FAST).artifacts[0]
    assert e["device"] == "mec-t4" and e["backend"] == "onnxruntime"
    assert e["latency_source"].startswith("predicted") and e["predicted_ms"] > 0
    assert e["latency_ms"] == pytest.approx(e["predicted_ms"])
    alts = {a["backend"]: a for a in e["alternatives"]}
    assert set(alts) == {"onnxruntime", "tvm"} and not alts["tvm"]["ok"] and "cuda" in alts["tvm"]["reason"]
    assert e["choice"].startswith("predicted fastest on mec-t4")


def test_device_not_runnable_here_gets_the_backend_the_cost_model_predicts_fastest(squeezenet_pieces, tmp_path):
    """On a Raspberry Pi 5 (aarch64, not this machine) onnxruntime and a cross-compiled TVM build are both made;
    each gets predicted_ms = the cost model's device latency x its time here over onnxruntime's, the lowest wins
    and `choice` says why; LiteRT, which the Pi lists, is recorded with what an ONNX piece would need."""
    _, p0, _ = squeezenet_pieces
    plan = make_plan([("squeezenet/p0", p0, "cams")], {"cams": "rpi5"})
    e = compile_plan(plan, tmp_path / "art", progress=False, options=FAST).artifacts[0]
    alts = {a["backend"]: a for a in e["alternatives"]}
    assert alts["onnxruntime"]["ok"] and alts["tvm"]["ok"] and alts["tvm"]["host_latency_ms"] > 0
    ort_ms, tvm_ms = alts["onnxruntime"]["latency_ms"], alts["tvm"]["host_latency_ms"]
    assert alts["onnxruntime"]["predicted_ms"] == pytest.approx(e["predicted_ms"])
    assert alts["tvm"]["predicted_ms"] == pytest.approx(e["predicted_ms"] * tvm_ms / ort_ms)
    best = min(("onnxruntime", "tvm"), key=lambda b: alts[b]["predicted_ms"])
    assert e["backend"] == best and e["latency_ms"] == pytest.approx(alts[best]["predicted_ms"])
    assert e["choice"].startswith("predicted fastest on rpi5")
    assert not alts["litert"]["ok"] and "onnx2tf" in alts["litert"]["reason"]


def test_litert_asked_for_an_onnx_piece_says_what_is_needed(squeezenet_pieces, tmp_path):
    """--backend litert on an ONNX piece is bad input naming the conversion it needs and the backends that run it."""
    _, p0, _ = squeezenet_pieces
    plan = make_plan([("squeezenet/p0", p0, "cams")], {"cams": "rpi5"})
    with pytest.raises(InputError, match="LiteRT runs .tflite.*onnx2tf.*To fix: choose --backend tvm or onnxruntime"):
        compile_plan(plan, tmp_path / "art", backends=["litert"], progress=False, options=FAST)


def _same_arch_other_cpu() -> tuple[str, str]:
    """A catalog CPU device of this machine's architecture whose mcpu is not this machine's (detected)."""
    from tierplan.devices.catalog import load_catalog
    from tierplan.devices.host import local_device
    from tierplan.runtime.backends.base import host_arch, target_arch

    mine = local_device().tvm_target.get("mcpu")
    for name, d in sorted(load_catalog().items()):
        t = d.tvm_target
        if name != "local" and t.get("kind") == "llvm" and target_arch(t) == host_arch() and t.get("mcpu") not in (None, mine):
            return name, t["mcpu"]
    pytest.skip(f"no catalog CPU of this architecture ({host_arch()}) with an mcpu other than {mine}")


def test_same_arch_other_cpu_checked_on_host_build(squeezenet_pieces, tmp_path):
    """A CPU target of this architecture with another mcpu is built for it, checked and timed on a host build, emulated locally."""
    _, p0, _ = squeezenet_pieces
    device, mcpu = _same_arch_other_cpu()
    plan = make_plan([("squeezenet/p0", p0, "cloud")], {"cloud": device})
    e = compile_plan(plan, tmp_path / "art", backends=["tvm"], progress=False, options=FAST).artifacts[0]
    assert e["backend"] == "tvm" and e["file"].endswith("piece.so") and e["target"]["mcpu"] == mcpu
    assert e["verified"] is True and "this machine's CPU" in e["verify_note"]
    assert e["latency_source"] == "measured (host build)" and e["latency_ms"] > 0
    runner = load_artifact(e)
    assert runner.emulated is True
    x = np.random.default_rng(2).random((1, 3, 224, 224), dtype=np.float32)
    np.testing.assert_allclose(runner.run({"data_0": x})["r9"], _ort(p0, {"data_0": x})["r9"], rtol=1e-4, atol=1e-4)
