"""`tierplan plan` from the shell: tables, --json, --out, --html, --pareto, --from, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "tierplan", "plan", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def _app(tmp_path: Path, slo_ms: float = 450.0) -> Path:
    data = yaml.safe_load((DATA / "planner_app.yaml").read_text())
    data["slo"][0]["latency_ms"] = slo_ms
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_plan_json_out_and_html(tmp_path: Path) -> None:
    """A feasible plan exits 0, prints DESIGN.md's JSON fields and writes plan.json and plan.html."""
    out, html = tmp_path / "plan.json", tmp_path / "plan.html"
    r = _run(str(_app(tmp_path)), "--fleet", str(DATA / "planner_fleet.yaml"), "--json", "--out", str(out),
             "--html", str(html))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["status"] == "optimal" and data["gap"] == 0.0
    # the cuts are chosen with the placement: the plan's pieces cover the 4 layers in at most max_pieces
    pieces = [p for p in data["pieces"] if p["kind"] == "piece"]
    assert set(data["assignment"]) == {p["id"] for p in pieces} and 1 <= len(pieces) <= 4
    assert data["sinks"]["boxes"]["latency_ms"] <= 450
    assert set(data["baselines"]) == {"all_on_device", "all_in_cloud", "neurosurgeon", "greedy"}
    assert json.loads(out.read_text())["assignment"] == data["assignment"]
    assert "<svg" in html.read_text()


def test_plan_table_shows_baselines_and_coverage(tmp_path: Path) -> None:
    """The human view has the CHOSEN column, the per-sink latency table and the coverage line."""
    r = _run(str(_app(tmp_path)), "--fleet", str(DATA / "planner_fleet.yaml"), "--objective", "latency")
    assert r.returncode == 0, r.stderr
    for text in ("CHOSEN", "sink boxes", "neurosurgeon", "of devices", "status optimal"):
        assert text in r.stdout


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_infeasible_slo_exits_1_with_reason(tmp_path: Path) -> None:
    """An SLO nothing can meet exits 1, says the best achievable p95, and --json carries the reason."""
    r = _run(str(_app(tmp_path, slo_ms=5)), "--fleet", str(DATA / "planner_fleet.yaml"), "--json")
    assert r.returncode == 1
    assert "SLO 5 ms for sink 'boxes' cannot be met" in r.stderr and "best possible p95" in r.stderr
    assert "Traceback" not in r.stderr
    data = json.loads(r.stdout)
    # the plan still serves every device, at the best latency reachable, and lists what misses
    # the joint optimum is proven; serving the class at its best latency instead of the cheapest
    # placement costs more, so the plan is `feasible` with that optimum as its bound
    assert data["slo_met"] is False and data["solver"]["joint_status"] == "optimal"
    assert data["status"] in ("optimal", "feasible") and data["objective_bound"] <= data["objective"] + 1e-9
    miss = data["not_met"][0]
    assert miss["edge_class"] == "cams" and miss["planned_ms"] > 5 and "best possible" in miss["why"]
    assert miss["planned_ms"] == pytest.approx(miss["best_alone_ms"], abs=0.01)
    partial = _run(str(_app(tmp_path, slo_ms=5)), "--fleet", str(DATA / "planner_fleet.yaml"), "--allow-partial")
    assert partial.returncode == 0, partial.stderr
    assert "SLO not met" in partial.stdout and "best alone ms" in partial.stdout


def test_bad_objective_exits_2(tmp_path: Path) -> None:
    """An unknown --objective is bad input: exit 2, one line naming the flag."""
    r = _run(str(_app(tmp_path)), "--fleet", str(DATA / "planner_fleet.yaml"), "--objective", "speed")
    assert r.returncode == 2
    assert "--objective" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_replan_from_old_plan_and_pareto(tmp_path: Path) -> None:
    """--from an identical plan moves nothing; --pareto adds a frontier to the JSON."""
    old = tmp_path / "old.json"
    app = str(_app(tmp_path, slo_ms=400))
    assert _run(app, "--fleet", str(DATA / "planner_fleet.yaml"), "--out", str(old)).returncode == 0
    r = _run(app, "--fleet", str(DATA / "planner_fleet.yaml"), "--from", str(old), "--pareto", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["moves"] == []
    assert data["pareto"] and all("cost_per_hour_usd" in p for p in data["pareto"])


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_plan_names_each_sites_device_so_compile_needs_no_fleet_file(tmp_path: Path) -> None:
    """plan.json maps every site class to its device name; compile resolves them without the fleet file."""
    from tierplan.planner.plan import Plan
    from tierplan.runtime.compile import resolve_site_devices
    out = tmp_path / "plan.json"
    r = _run(str(_app(tmp_path)), "--fleet", str(DATA / "planner_fleet.yaml"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    plan = Plan.load(out)
    assert plan.site_devices == {"cams": "rpi4", "cells": "mec-t4", "eu": "aws-g5-xlarge"}
    moved = plan.model_copy(update={"fleet_path": str(tmp_path / "elsewhere" / "fleet.yaml")})
    devices = resolve_site_devices(moved, ["cams", "cells", "eu"])
    assert {s: d.name for s, d in devices.items()} == plan.site_devices


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_max_coverage_keeps_a_plan_that_already_covers_everyone(tmp_path: Path) -> None:
    """--max-coverage changes nothing when every class meets its SLO: same assignment and objective."""
    app = str(_app(tmp_path))
    plain = _run(app, "--fleet", str(DATA / "planner_fleet.yaml"), "--json")
    cover = _run(app, "--fleet", str(DATA / "planner_fleet.yaml"), "--json", "--max-coverage")
    assert plain.returncode == 0 and cover.returncode == 0, cover.stderr
    a, b = json.loads(plain.stdout), json.loads(cover.stdout)
    assert b["status"] == "optimal" and b["assignment"] == a["assignment"]
    assert b["objective"] == a["objective"]


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_plan_a_folder_uses_its_fleet_yaml(tmp_path: Path) -> None:
    """`tierplan plan FOLDER` plans FOLDER/app.yaml on FOLDER/fleet.yaml (as run and simulate take an
    example folder); a folder without fleet.yaml exits 2 saying to add --fleet."""
    app = _app(tmp_path)
    (tmp_path / "fleet.yaml").write_text((DATA / "planner_fleet.yaml").read_text())
    r = _run(str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["per_class"]
    (tmp_path / "fleet.yaml").unlink()
    r = _run(str(app))
    assert r.returncode == 2
    assert "no fleet given" in r.stderr and "--fleet" in r.stderr and "Traceback" not in r.stderr
