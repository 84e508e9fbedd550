"""`tierplan compile --progress`: the bar of pieces built goes to stderr, only when asked or on a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compile_fixtures import make_plan

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_compile_progress_on_stderr_only_when_asked(squeezenet_pieces, tmp_path):
    """compile --json into pipes: --progress shows `compile N/N` on stderr; without it stderr has no bar; stdout is the manifest."""
    _, p0, _ = squeezenet_pieces
    make_plan([("squeezenet/p0", p0, "edge")], {"edge": "local"}).save(tmp_path / "plan.json")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for flag, out in (("--progress", "a"), ("--json", "b")):
        r = subprocess.run([sys.executable, "-m", "tierplan", "compile", str(tmp_path / "plan.json"), "--out",
                            str(tmp_path / out), "--json", "--runs", "2", "--backend", "onnxruntime", flag],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert len(json.loads(r.stdout)["artifacts"]) == 1
        if flag == "--progress":
            assert "compile" in r.stderr and "1/1" in r.stderr and "━" in r.stderr
        else:
            assert "━" not in r.stderr
