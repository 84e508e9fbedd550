"""The `tierplan compile` verb end to end (subprocess), and site-device resolution from a plan's fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compile_fixtures import FACE_TFLITE, make_plan

from tierplan.runtime.compile import resolve_site_devices
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


def test_site_devices_come_from_the_plans_embedded_fleet_only(tmp_path):
    """Each site class's device is the one the plan embeds (inline), whatever fleet_path says; a plan with
    no embedded fleet is bad input saying to re-plan."""
    plan = make_plan([("face/p0", FACE_TFLITE, "flagship_phones")], {"flagship_phones": "pixel-8", "cells": "mec-t4"})
    plan = plan.model_copy(update={"fleet_path": str(tmp_path / "gone" / "fleet.yaml")})
    devices = resolve_site_devices(plan, ["flagship_phones", "cells"])
    assert {s: d.name for s, d in devices.items()} == {"flagship_phones": "pixel-8", "cells": "mec-t4"}
    with pytest.raises(InputError, match="no embedded fleet.*To fix"):
        resolve_site_devices(make_plan([("face/p0", FACE_TFLITE, "edge")], {}), ["edge"])


def test_unknown_site_is_input_error():
    """A site class the plan's fleet does not have is bad input naming the site and the fix."""
    plan = make_plan([("face/p0", FACE_TFLITE, "edge")], {"edge": "local"})
    with pytest.raises(InputError, match="'somewhere'.*To fix"):
        resolve_site_devices(plan, ["somewhere"])


def test_corrupt_tflite_piece_is_input_error(tmp_path):
    """A .tflite piece LiteRT cannot load is refused with the reason, naming the piece."""
    from tierplan.runtime.compile import compile_plan
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all" * 10)
    plan = make_plan([("face/p0", bad, "edge")], {"edge": "local"})
    with pytest.raises(InputError, match="face/p0@edge: bad.tflite is not a loadable .tflite file"):
        compile_plan(plan, tmp_path / "art", progress=False)


def test_corrupt_onnx_piece_is_input_error(tmp_path):
    """A piece file that is not ONNX is bad input naming the file, not a traceback."""
    from tierplan.runtime.compile import compile_plan
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    plan = make_plan([("m/p0", bad, "edge")], {"edge": "local"})
    with pytest.raises(InputError, match="bad.onnx"):
        compile_plan(plan, tmp_path / "art", progress=False)


def test_piece_without_file_is_skipped_and_listed(tmp_path):
    """A piece with no file (profile-table model) is skipped and listed under `skipped`, the rest compiled."""
    from tierplan.planner.plan import PlanPiece
    from tierplan.runtime.compile import compile_plan
    plan = make_plan([("face/p0", FACE_TFLITE, "edge")], {"edge": "local"})
    plan = plan.model_copy(update={"pieces": [*plan.pieces, PlanPiece(id="prof/p0", model="prof")],
                                   "assignment": {**plan.assignment, "prof/p0": "edge"}})
    res = compile_plan(plan, tmp_path / "art", progress=False)
    assert [a["piece"] for a in res.artifacts] == ["face/p0"]
    assert res.manifest["skipped"] == [{"piece": "prof/p0", "site": "edge",
                                        "reason": "no model file (profile-table model)"}]
