"""The `tierplan compile` verb end to end (subprocess), and site-device resolution from a plan's fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FACE_TFLITE, make_plan

from runtime.compile import resolve_site_devices
from tierplan.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def _tierplan(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tierplan", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


@pytest.mark.integration
def test_cli_compile_json_and_cache(squeezenet_pieces, tmp_path):
    """`tierplan compile PLAN --out DIR --json` prints the manifest; a second run reports every artifact cached."""
    _, p0, p1 = squeezenet_pieces
    plan = make_plan([("squeezenet/p0", p0, "edge"), ("squeezenet/p1", p1, "pi"), ("face/p0", FACE_TFLITE, "edge")],
                     {"edge": "local", "pi": "rpi5"})
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "artifacts"
    first = _tierplan("compile", str(tmp_path / "plan.json"), "--out", str(out), "--json", "--runs", "3")
    assert first.returncode == 0, first.stderr
    manifest = json.loads(first.stdout)
    assert {(a["piece"], a["site"]) for a in manifest["artifacts"]} == {
        ("squeezenet/p0", "edge"), ("squeezenet/p1", "pi"), ("face/p0", "edge")}
    for a in manifest["artifacts"]:
        assert {"piece", "site", "backend", "file", "verified", "latency_ms"} <= set(a)
        assert Path(a["file"]).is_file()
    assert json.loads((out / "manifest.json").read_text()) == manifest
    again = _tierplan("compile", str(tmp_path / "plan.json"), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "3 cached, 0 built" in " ".join(again.stdout.split())
    assert "CHOSEN" in again.stdout


def test_cli_missing_plan_is_exit_2(tmp_path):
    """A plan file that does not exist is bad input: exit 2 with a one-line message and no traceback."""
    res = _tierplan("compile", str(tmp_path / "nope.json"), "--out", str(tmp_path / "a"))
    assert res.returncode == 2
    assert "plan file not found" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "a").exists()


def test_cli_unknown_backend_is_exit_2(tmp_path):
    """--backend with an unknown name is refused before any work (exit 2)."""
    plan = make_plan([("face/p0", FACE_TFLITE, "edge")], {"edge": "local"})
    plan.save(tmp_path / "plan.json")
    res = _tierplan("compile", str(tmp_path / "plan.json"), "--out", str(tmp_path / "a"), "--backend", "tensorrt")
    assert res.returncode == 2 and "unknown backend" in res.stderr


def test_site_devices_from_plan_fleet_file():
    """Without site_devices the plan's fleet file gives each site class its catalog device."""
    plan = make_plan([("face/p0", FACE_TFLITE, "flagship_phones")], {})
    plan = plan.model_copy(update={"fleet_path": str(REPO / "examples" / "read-text" / "fleet.yaml")})
    devices = resolve_site_devices(plan, ["flagship_phones", "cells", "cloud_eu"])
    assert {s: d.name for s, d in devices.items()} == {
        "flagship_phones": "pixel-8", "cells": "mec-t4", "cloud_eu": "aws-g5-xlarge"}


def test_unknown_site_is_input_error():
    """A site class with no known device is bad input naming the site and the fix."""
    plan = make_plan([("face/p0", FACE_TFLITE, "somewhere")], {})
    with pytest.raises(InputError, match="'somewhere'.*To fix"):
        resolve_site_devices(plan, ["somewhere"])
