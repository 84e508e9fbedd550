"""The devices CLI verbs: devices, estimate, profile, calibrate; JSON fields and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def tierplan(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    if env and "XDG_CACHE_HOME" in env:   # the cache given, not one from the calling environment
        full.pop("TIERPLAN_CACHE", None)
    return subprocess.run([sys.executable, "-m", "tierplan", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=full)


def test_devices_json_lists_the_catalog():
    """`tierplan devices --json` lists every device with its figures; one device by name works too."""
    r = tierplan("devices", "--json")
    assert r.returncode == 0, r.stderr
    names = {d["name"] for d in json.loads(r.stdout)["devices"]}
    assert {"rpi4", "mec-t4", "aws-p5-h100", "local"} <= names
    local = json.loads(tierplan("devices", "local", "--json").stdout)
    assert local["detected"]["cpu"]["key"] and local["tvm_target"]["mtriple"].startswith(local["detected"]["cpu"]["arch"])
    one = json.loads(tierplan("devices", "rpi5", "--json").stdout)
    assert one["peak_gflops"]["fp32"] == 153.6


def test_unknown_device_exits_2_with_suggestion():
    """A typo in a device name exits 2 with one line and no traceback."""
    r = tierplan("devices", "jetson-nan")
    assert r.returncode == 2
    assert "did you mean 'jetson-nano'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_estimate_json_fields(squeezenet):
    """`tierplan estimate MODEL --device D --json` has device, latency_ms and pieces[{id, latency_ms}]."""
    r = tierplan("estimate", str(squeezenet), "--device", "rpi4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["device"] == "rpi4" and out["latency_ms"] > 0
    assert out["pieces"][0]["id"] == "light_squeezenet/p0"
    assert out["latency_ms"] == sum(p["latency_ms"] for p in out["pieces"])
    faster = json.loads(tierplan("estimate", str(squeezenet), "--device", "rpi5", "--json").stdout)
    assert faster["latency_ms"] < out["latency_ms"]


def test_profile_json_measures_the_model(squeezenet):
    """`tierplan profile MODEL --json` reports a positive median latency from real runs."""
    r = tierplan("profile", str(squeezenet), "--runs", "3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["backend"] == "ort" and out["threads"] == 1
    assert out["pieces"][0]["runs"] >= 3 and 0 < out["pieces"][0]["p10_ms"] <= out["pieces"][0]["p90_ms"]


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_profile_bad_backend_and_missing_file_exit_2(squeezenet, tmp_path):
    """Unknown backend and missing file are bad input: exit 2, one line naming the culprit."""
    r = tierplan("profile", str(squeezenet), "--backend", "cuda")
    assert r.returncode == 2 and "--backend" in r.stderr
    r = tierplan("estimate", str(tmp_path / "nope.onnx"), "--device", "rpi4")
    assert r.returncode == 2 and "nope.onnx" in r.stderr


@pytest.mark.slow   # measures this CPU
def test_calibrate_writes_a_file_the_cost_model_loads(tmp_path):
    """`tierplan calibrate --out F` measures real models, writes F, and F loads as a Calibration of this CPU."""
    from tierplan.devices.costmodel import Calibration
    from tierplan.devices.host import cpu_identity

    out = tmp_path / "mine.json"
    r = tierplan("calibrate", "--out", str(out), "--model", "squeezenet", "--model", "ppocr_cls",
                 "--max-pieces", "3", "--runs", "3", "--json")
    assert r.returncode == 0, r.stderr
    cal = Calibration.load(out)
    assert cal.device == "local" and set(cal.models) == {"squeezenet", "ppocr_cls", "synthetic"}
    assert cal.cpu_key == cpu_identity().key
    assert json.loads(r.stdout)["file"] == str(out)


@pytest.mark.slow   # measures this CPU
def test_calibrate_default_goes_to_the_user_cache_not_the_tree(tmp_path):
    """Without --out, `tierplan calibrate` writes $XDG_CACHE_HOME/tierplan/calibration/<cpu key>.json and leaves the
    package and the git tree untouched."""
    from tierplan.devices.host import cpu_identity

    before = subprocess.run(["git", "status", "--porcelain", "--", "devices"], capture_output=True, text=True,
                            cwd=ROOT).stdout
    r = tierplan("calibrate", "--model", "ppocr_cls", "--max-pieces", "2", "--runs", "3", "--json",
                 env={"XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["file"] == str(tmp_path / "tierplan" / "calibration" / f"{cpu_identity().key}.json")
    assert not (ROOT / "devices" / "calibration").exists()
    assert subprocess.run(["git", "status", "--porcelain", "--", "devices"], capture_output=True, text=True,
                          cwd=ROOT).stdout == before
