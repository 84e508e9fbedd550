"""`tierplan partition`: pieces + manifest.json on disk, JSON as in DESIGN.md, a table, --verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierplan", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_json_matches_manifest_and_design_fields(ocr_models, tmp_path):
    """--json prints manifest.json (DESIGN.md fields), with --verify's max_abs_diff, and pieces exist."""
    out = tmp_path / "pieces"
    r = _cli("partition", str(ocr_models / "ch_ppocr_mobile_v2.0_cls_infer.onnx"), "--out", str(out),
             "--max-pieces", "3", "--verify", "--dims", "x[0]=1,x[2]=48", "--dims", "x[3]=192", "--json")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed == json.loads((out / "manifest.json").read_text())
    assert printed["model"] == "ch_ppocr_mobile_v2.0_cls_infer" and len(printed["pieces"]) == 3
    for p in printed["pieces"]:
        assert {"id", "inputs", "outputs", "flops", "param_bytes", "file"} <= set(p)
        assert (out / p["file"]).is_file()
        assert all({"name", "shape", "dtype", "nbytes"} <= set(t) for t in p["inputs"] + p["outputs"])
    assert printed["verify"]["max_abs_diff"] is not None and printed["verify"]["max_rel_diff"] <= 1e-5


def test_cli_table_and_verify_line(light, tmp_path):
    """Human output is a table of pieces and a verify line saying OK."""
    r = _cli("partition", str(light / "light_resnet50.onnx"), "--out", str(tmp_path / "o"), "--max-pieces", "4",
             "--verify")
    assert r.returncode == 0, r.stderr
    assert "4 piece(s)" in r.stdout and "p3" in r.stdout and "GFLOPs" in r.stdout
    assert "verify:" in r.stdout and "OK" in r.stdout
