"""`--json` on bad input: every command that takes --json prints `{"error": {"code": 2, "problems": [...]}}`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BAD, DATA, REPO = HERE / "bad", HERE / "data", HERE.parents[1]

FLEET = REPO / "examples" / "smart-city" / "fleet.yaml"
APP = REPO / "examples" / "smart-city" / "app.yaml"

# command -> arguments that are bad input for it (each fails before any real work)
BAD_INPUT: dict[str, list[str]] = {
    "calibrate": ["--model", "no-such-model"],
    "certs": ["--out", "{tmp}/certs", "--sites", ","],
    "compile": ["{tmp}/no-plan.json"],
    "deploy": ["{tmp}/no-plan.json"],
    "devices": ["no-such-device"],
    "estimate": ["{tmp}/no-model.onnx", "--device", "pixel-8"],
    "partition": ["{tmp}/no-model.onnx", "--out", "{tmp}/pieces"],
    "plan": [str(BAD / "cycle.app.yaml"), "--fleet", str(FLEET)],
    "profile": ["{tmp}/no-model.onnx"],
    "run": ["no-such-example"],
    "simulate": [str(APP), "--duration", "-5"],
    "up": [],
    "validate": [str(BAD / "cycle.app.yaml")],
}


def _json_commands() -> set[str]:
    """The commands whose options include --json (from the typer app itself)."""
    import typer.main

    from tierplan.cli import _register_all, app
    _register_all()
    group = typer.main.get_command(app)
    return {name for name, cmd in group.commands.items()
            if any("--json" in getattr(p, "opts", ()) for p in cmd.params)}


def test_every_json_command_has_a_bad_input_case():
    """The bad-input table below covers every command that takes --json (a new one must be added)."""
    assert _json_commands() == set(BAD_INPUT)


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_bad_input_with_json_prints_a_json_error_and_exits_2(command, cli, tmp_path):
    """Bad input with --json: exit 2, the one-line error on stderr, and on stdout a JSON document with error.code 2."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in BAD_INPUT[command]]
    r = cli(command, *args, "--json")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    assert doc["error"]["code"] == 2
    assert doc["error"]["problems"] and all(isinstance(p, str) and p for p in doc["error"]["problems"])


def test_bad_input_without_json_prints_nothing_on_stdout(cli, tmp_path):
    """Without --json a bad input leaves stdout empty (the error is on stderr only)."""
    r = cli("plan", str(BAD / "cycle.app.yaml"), "--fleet", str(FLEET))
    assert r.exit_code == 2 and r.stdout == "" and "error:" in r.stderr


def test_spec_error_lists_every_problem_in_the_json_error(cli):
    """A SpecError's problems are the JSON error's problems (validate keeps its own valid/problems fields too)."""
    r = cli("validate", str(BAD / "cycle.app.yaml"), "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 2 and doc["valid"] is False
    assert doc["error"]["problems"] == doc["problems"] and doc["error"]["problems_total"] == doc["problems_total"]


def test_usage_error_with_json_is_a_json_error(cli):
    """A flag value click refuses (not a number) with --json is a JSON error with code 2 naming the flag."""
    r = cli("simulate", str(APP), "--duration", "soon", "--json")
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["error"]["code"] == 2 and "--duration" in doc["error"]["problems"][0]


@pytest.mark.parametrize("args", [
    ["plan", str(BAD / "cycle.app.yaml"), "--fleet", str(FLEET), "--json"],
    ["simulate", str(DATA / "no-such-plan.json"), "--fleet", str(FLEET), "--json"],
], ids=["plan", "simulate"])
def test_json_error_on_stdout_of_the_real_command(args, subprocess_env, python):
    """`python -m tierplan plan|simulate BAD --json` in a process: stdout parses as JSON with error.code 2, exit 2."""
    r = subprocess.run([python, "-m", "tierplan", *args], capture_output=True, text=True, env=subprocess_env,
                       timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert json.loads(r.stdout)["error"]["code"] == 2


def _smart_city_copy(tmp_path: Path, edit) -> Path:
    """examples/smart-city's app.yaml changed by `edit` (its ONNX models linked beside it)."""
    import yaml
    doc = yaml.safe_load(APP.read_text())
    edit(doc)
    app = tmp_path / "app.yaml"
    app.write_text(yaml.safe_dump(doc))
    for name in ("detector.onnx", "classifier.onnx"):
        (tmp_path / name).symlink_to(APP.parent / name)
    return app


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_slo_not_met_with_json_prints_the_plan_only(cli, tmp_path):
    """An SLO no class can meet (exit 1): every class is still planned, at its best latency, and
    stdout holds the plan.json result listing the classes that miss, with no error object after it."""
    def slo_1us(doc):
        for s in doc.get("slo", []):
            s["latency_ms"] = 0.001
    app = _smart_city_copy(tmp_path, slo_1us)
    r = cli("plan", str(app), "--fleet", str(FLEET), "--json", "--time-limit", "2")
    assert r.exit_code == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] in ("optimal", "feasible") and "error" not in out
    assert out["slo_met"] is False
    assert {m["edge_class"] for m in out["not_met"]} == set(out["per_class"]) and out["per_class"]


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_infeasible_plan_with_json_prints_the_plan_only(cli, tmp_path):
    """No placement at all (exit 1): raw frames that may not leave the camera, and legacy cameras too
    weak to run the detector on every frame. stdout holds the infeasible plan.json, saying why."""
    def private_frames(doc):
        doc["sources"]["camera"]["private"] = True
    app = _smart_city_copy(tmp_path, private_frames)
    r = cli("plan", str(app), "--fleet", str(FLEET), "--json", "--time-limit", "2")
    assert r.exit_code == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "infeasible" and "error" not in out
    assert "legacy_cams" in out["reason"]
