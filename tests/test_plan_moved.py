"""A plan folder moved to another directory simulates and compiles identically, from any cwd (#15):
the CLI reads only plan.json and what sits beside it, never the YAML it was made from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # plans, simulates and compiles smart-city twice (about 1.5 min on 2 cores)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "smart-city"


def _tierplan(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "tierplan", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(plan folder where it was made, the same folder moved deeper elsewhere, with the YAML gone)."""
    root = tmp_path_factory.mktemp("moved")
    made = root / "made"
    shutil.copytree(EXAMPLE, made)
    r = _tierplan("plan", "app.yaml", "--fleet", "fleet.yaml", "--out", "out/plan.json", cwd=made)
    assert r.returncode in (0, 1), r.stderr
    moved = root / "x" / "y" / "z"
    shutil.copytree(made / "out", moved)
    return made / "out", moved


WALL_CLOCK = {"wall_s", "sim_requests_per_s"}   # how fast this machine ran it, not what it computed


def _strip_paths(doc: object) -> object:
    """The JSON without values that name a file or folder (they differ by location only) or that
    time the simulator itself."""
    if isinstance(doc, dict):
        return {k: _strip_paths(v) for k, v in doc.items()
                if not (isinstance(v, str) and os.sep in v) and k not in WALL_CLOCK}
    if isinstance(doc, list):
        return [_strip_paths(v) for v in doc]
    return doc


def test_moved_plan_simulates_identically_from_another_cwd(folders: tuple[Path, Path], tmp_path: Path) -> None:
    """Same seed, same report, whether the plan sits where it was made or was moved without its YAML."""
    made, moved = folders
    args = ("--duration", "3", "--seed", "7", "--strategies", "optimal", "--json")
    a = _tierplan("simulate", str(made / "plan.json"), *args, cwd=tmp_path)
    b = _tierplan("simulate", str(moved / "plan.json"), *args, cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    assert b.returncode == 0, b.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert _strip_paths(ja) == _strip_paths(jb)
    assert ja["strategies"]["optimal"]["requests"] > 0


def test_moved_plan_compiles_the_same_artifacts(folders: tuple[Path, Path], tmp_path: Path) -> None:
    """The moved plan's pieces compile to the same artifact keys: same bytes, same devices, no fleet.yaml."""
    made, moved = folders
    keys = []
    for i, d in enumerate((made, moved)):
        out = tmp_path / f"art{i}"
        r = _tierplan("compile", str(d / "plan.json"), "--out", str(out), "--backend", "onnxruntime", "--json",
                      cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        keys.append(sorted((a["piece"], a["site"], a["device"], a["key"], a["piece_sha256"]) for a in manifest["artifacts"]))
    assert keys[0] == keys[1] and keys[0]
