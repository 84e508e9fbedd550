"""The bad-input corpus: every malformed app or fleet file exits 2 with a message naming its YAML path."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from spec_paths import BAD, DATA

BAD_FILES = sorted(BAD.glob("*.yaml"))


def _header(path: Path, key: str) -> str | None:
    """The value of a `# key: value` line at the top of a corpus file."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = re.match(rf"#\s*{key}:\s*(.+)$", line)
        if m:
            return m.group(1).strip()
    return None


def _args(path: Path) -> list[str]:
    """`validate` arguments for one corpus file: a bad app with a good fleet, or a good app with a bad fleet."""
    if path.name.endswith(".fleet.yaml"):
        return ["validate", str(DATA / "app.yaml"), "--fleet", str(path)]
    fleet = _header(path, "fleet")
    fleet_path = (path.parent / fleet) if fleet else DATA / "fleet.yaml"
    return ["validate", str(path), "--fleet", str(fleet_path)]


def test_corpus_is_large_and_annotated():
    """The corpus holds at least 25 app and fleet files, each with an `# expect:` line."""
    assert len(BAD_FILES) >= 25
    assert sum(p.name.endswith(".app.yaml") for p in BAD_FILES) >= 15
    assert sum(p.name.endswith(".fleet.yaml") for p in BAD_FILES) >= 10
    assert all(_header(p, "expect") for p in BAD_FILES)


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.name for p in BAD_FILES])
def test_bad_input_exits_2_naming_the_yaml_path(path, cli):
    """A malformed file gives exit 2, no traceback, and `file:line: path: message` naming the expected path."""
    res = cli(*_args(path))
    expect = _header(path, "expect")
    assert res.exit_code == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert expect in res.stderr, res.stderr
    culprit = next(line for line in res.stderr.splitlines() if expect in line)
    assert re.match(r"^error: \S+\.yaml:\d+(:\d+)?: ", culprit), culprit


@pytest.mark.parametrize("name", ["corrupt_onnx.app.yaml", "unknown_device.fleet.yaml"])
def test_bad_input_through_python_dash_m(name, python, subprocess_env):
    """`python -m tierplan validate` on a bad file exits 2 with the message on stderr and no traceback."""
    path = BAD / name
    proc = subprocess.run([python, "-m", "tierplan", *_args(path)], capture_output=True, text=True,
                          env=subprocess_env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert _header(path, "expect") in proc.stderr


def test_every_problem_reported_at_once(cli, tmp_path):
    """A file with several mistakes lists each of them, in file order, in one run."""
    text = (BAD / "unknown_key.app.yaml").read_text()
    text = text.replace("objective: cost", "objective: speed").replace("latency_ms: 150", "latency_ms: -1")
    app = tmp_path / "app.yaml"
    app.write_text(text.replace("../data/", str(DATA) + "/"))
    res = cli("validate", str(app))
    assert res.exit_code == 2
    lines = [l for l in res.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 3, res.stderr
    assert ["rate_hzz" in lines[0], "slo[0].latency_ms" in lines[1], "objective" in lines[2]] == [True] * 3


def test_app_and_fleet_problems_together(cli):
    """Problems of the app file and of the fleet file come out of one run."""
    res = cli("validate", str(BAD / "negative_rate.app.yaml"), "--fleet", str(BAD / "zero_count.fleet.yaml"))
    assert res.exit_code == 2
    assert "sources.cam.rate_hz" in res.stderr and "sites.phones.count" in res.stderr


def test_json_problems_on_stdout(cli):
    """`--json` on bad input prints {"valid": false, "problems": [...]} and still exits 2."""
    import json
    res = cli("validate", str(BAD / "missing_onnx.app.yaml"), "--fleet", str(DATA / "fleet.yaml"), "--json")
    assert res.exit_code == 2
    doc = json.loads(res.stdout)
    assert doc["valid"] is False and any("models.det.onnx" in p for p in doc["problems"])


def test_missing_file_is_input_error(cli, tmp_path):
    """A path that does not exist exits 2 naming the path."""
    res = cli("validate", str(tmp_path / "nope.yaml"))
    assert res.exit_code == 2 and "nope.yaml: file not found" in res.stderr
