"""`tierplan simulate` on the command line: JSON fields, the HTML report, errors as one line."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sim_builders import embedded, make_fleet, make_plan

from tierplan.errors import InputError
from tierplan.simulations.api import simulate

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tierplan", "simulate", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    plan, fleet = tmp_path / "plan.json", tmp_path / "fleet.yaml"
    make_plan().save(plan)
    fleet.write_text(yaml.safe_dump(make_fleet(cams=30, bs=3).model_dump(mode="json", by_alias=True, exclude_none=True)))
    return plan, fleet


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_simulate_json_has_the_documented_fields(tmp_path):
    """--json prints DESIGN.md's fields for every requested strategy, with the seed; failures are counted."""
    plan, fleet = _files(tmp_path)
    r = _run(str(plan), "--fleet", str(fleet), "--strategies", "optimal,all-cloud", "--duration", "5",
             "--seed", "3", "--fail", "site:bs#0@1-2:fail", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["seed"] == 3 and set(doc["strategies"]) == {"optimal", "all-cloud"}
    for s in doc["strategies"].values():
        assert {"sinks", "cost_per_hour_usd", "requests", "throughput_rps", "utilisation"} <= set(s)
        assert {"p50_ms", "p95_ms", "p99_ms", "slo_attainment"} <= set(s["sinks"]["labels"])
        assert s["requests_ok"] + s["requests_failed"] == s["requests"] > 0
    assert doc["strategies"]["optimal"]["requests_failed"] > 0


@pytest.mark.slow   # takes seconds: kept out of the fast lane
def test_simulate_report_writes_html_with_embedded_figures(tmp_path):
    """--report DIR writes index.html embedding three PNG figures, the PNGs and report.json."""
    plan, fleet = _files(tmp_path)
    out = tmp_path / "report"
    r = _run(str(plan), "--fleet", str(fleet), "--duration", "5", "--report", str(out), "--link", "cams=4g~0.2")
    assert r.returncode == 0, r.stderr
    assert "optimal" in r.stdout and "all-device" in r.stdout
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    for name in ("latency_cdf.png", "cost_vs_slo.png", "utilisation.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = page.split("data:image/png;base64,", 1)[1].split('"', 1)[0]
    assert base64.b64decode(first)[:4] == b"\x89PNG"
    assert json.loads((out / "report.json").read_text())["strategies"]


def test_simulate_bad_input_is_one_line_exit_2(tmp_path):
    """A malformed --fail or a missing plan exits 2 with one error line naming the problem, no traceback."""
    plan, fleet = _files(tmp_path)
    r = _run(str(plan), "--fleet", str(fleet), "--fail", "bs down")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--fail" in r.stderr
    r = _run(str(tmp_path / "nope.json"), "--fleet", str(fleet))
    assert r.returncode == 2 and "not found" in r.stderr


@pytest.mark.slow   # plans smart-city first (CP-SAT, ~9 s): the fast lane stays under 3 minutes
def test_simulate_plans_an_example_app_first():
    """Given an example folder, simulate plans it (real partitioner and CP-SAT) and replays every class."""
    r = _run(str(ROOT / "examples" / "smart-city"), "--strategies", "optimal", "--duration", "2",
             "--arrivals", "periodic:5", "--json")
    assert r.returncode == 0, r.stderr
    opt = json.loads(r.stdout)["strategies"]["optimal"]
    sink = opt["sinks"]["road_users"]
    assert opt["requests"] > 0 and sink["p50_ms"] > 0
    fleet = yaml.safe_load((ROOT / "examples" / "smart-city" / "fleet.yaml").read_text())
    edge = {n for n, s in fleet["sites"].items() if s["tier"] == "edge"}
    assert set(sink["classes"]) == edge  # every edge class produced requests
    # the plan's rented instances priced as the planner prices them (egress aside)
    assert abs(opt["cost_per_hour_usd"] - opt["predicted_cost_per_hour_usd"]) <= 0.05 * opt["predicted_cost_per_hour_usd"]


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_simulate_profile_replays_measured_step_times(tmp_path):
    """--profile FILE replays its measured node@site times: a profile saying det/p0 takes 300 ms on cams moves p50."""
    import numpy as np
    from tierplan.simulations.calibration import ServiceProfile

    plan, fleet = _files(tmp_path)
    prof = tmp_path / "profile.json"
    ServiceProfile({("det/p0", "cams"): np.full(50, 300.0)}, correlation=0.0, source="test").save(prof)
    args = (str(plan), "--fleet", str(fleet), "--strategies", "optimal", "--duration", "3", "--json")
    base = json.loads(_run(*args).stdout)["strategies"]["optimal"]["sinks"]["labels"]["p50_ms"]
    r = _run(*args, "--profile", str(prof), "--service-correlation", "0.3")
    assert r.returncode == 0, r.stderr
    slow = json.loads(r.stdout)["strategies"]["optimal"]["sinks"]["labels"]["p50_ms"]
    assert slow >= base + 250  # det/p0 on cams: 20 ms in the plan, 300 ms measured
    r = _run(*args, "--profile", str(tmp_path / "none.json"))
    assert r.returncode == 2 and "--profile" in r.stderr and "Traceback" not in r.stderr
    r = _run(*args, "--service-correlation", "1.5")
    assert r.returncode == 2 and "--service-correlation" in r.stderr


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_a_moved_plan_simulates_from_another_directory_without_a_fleet(tmp_path):
    """plan.json carries its fleet: moved to another folder and run from a third, it needs no --fleet and
    gives the same report as where it was written."""
    here = tmp_path / "made"
    here.mkdir()
    embedded(make_plan(), make_fleet(cams=30, bs=3)).save(here / "plan.json")
    args = ("--strategies", "optimal,all-cloud", "--duration", "5", "--seed", "2", "--json", "--no-progress")
    before = subprocess.run([sys.executable, "-m", "tierplan", "simulate", "plan.json", *args], capture_output=True,
                            text=True, cwd=here, timeout=300)
    assert before.returncode == 0, before.stderr
    moved = tmp_path / "elsewhere" / "bundle"
    moved.parent.mkdir()
    here.rename(moved)
    other = tmp_path / "cwd"
    other.mkdir()
    after = subprocess.run([sys.executable, "-m", "tierplan", "simulate", str(moved / "plan.json"), *args],
                           capture_output=True, text=True, cwd=other, timeout=300)
    assert after.returncode == 0, after.stderr

    def same(doc: dict) -> dict:
        for s in doc["strategies"].values():
            s.pop("wall_s"), s.pop("sim_requests_per_s")
        return doc
    assert same(json.loads(after.stdout)) == same(json.loads(before.stdout))
    with pytest.raises(InputError, match="no embedded fleet"):   # a plan without one, and no what-if fleet
        simulate(make_plan(), duration_s=1)


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_sweep_runs_every_cell_and_reports_confidence_intervals(tmp_path):
    """--sweep seed=0..2 --sweep slo=60,120 --serial: 2 strategies x 2 SLOs x 3 seeds cells, a summary
    row per (strategy, SLO) with a CI over the seeds, and an HTML report with the figure."""
    plan = tmp_path / "plan.json"
    embedded(make_plan(), make_fleet(cams=20, bs=2)).save(plan)
    r = _run(str(plan), "--strategies", "optimal,all-cloud", "--duration", "3", "--sweep", "seed=0..2",
             "--sweep", "slo=60,120", "--serial", "--json", "--report", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["cells"]) == 12 and doc["runner"] == "serial"
    rows = doc["summary"]
    assert {(x["strategy"], x["slo"]) for x in rows} == {(s, v) for s in ("optimal", "all-cloud") for v in (60.0, 120.0)}
    assert all(x["seeds"] == 3 and x["p95_ms_ci"] is not None for x in rows)
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "95% confidence interval" in page and "data:image/png;base64," in page
    bad = _run(str(plan), "--sweep", "colour=red")
    assert bad.returncode == 2 and "--sweep" in bad.stderr and "Traceback" not in bad.stderr
