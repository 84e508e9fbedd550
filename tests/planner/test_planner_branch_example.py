"""examples/two-detectors (issue #16 item 2): a bundled app whose plan runs a real branch on a second site.

`tierplan run` on it is checked against the overlap model in test_planner_run_agreement (slow,
integration); here: the plan itself, from the command line and the API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tierplan.loader import load_app, load_fleet
from tierplan.planner.api import plan_app
from tierplan.planner.measured import latency_with_steps

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-detectors"


def test_the_two_detectors_run_on_two_sites_at_the_same_time() -> None:
    """The latency plan puts one detector on the dashcam and the other on the roadside unit, beats
    both all-on-one-site baselines, and its overlap figure is the slower branch, not the sum."""
    plan = plan_app(load_app(EXAMPLE / "app.yaml"), load_fleet(EXAMPLE / "fleet.yaml"))
    assert plan.status == "optimal" and plan.latency_semantics.startswith("overlap")
    placed = plan.per_class["dashcams"]
    road = {s for n, s in placed.items() if n.startswith("road/")}
    signs = {s for n, s in placed.items() if n.startswith("signs/")}
    assert len(road) == len(signs) == 1 and road != signs
    for name in ("all_on_device", "all_in_cloud"):
        assert plan.objective < plan.baselines[name].objective, name
    overlap = latency_with_steps(plan, {}, "overlap")["dashcams"]
    local = next(p for p in plan.pieces if p.kind == "piece" and placed[p.id] == "dashcams")
    here, there = ("road_objects", "sign_objects") if local.model == "road" else ("sign_objects", "road_objects")
    # the local detector starts with the request (its sink: its own time); the other one waits only
    # for the frame's transfer, not for the local detector: the two branches overlap
    assert overlap[here] == pytest.approx(local.latency_ms["dashcams"], abs=1e-3)
    remote = next(p for p in plan.pieces if p.kind == "piece" and p is not local)
    assert overlap[there] > remote.latency_ms["roadside"]


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_plan_and_check_script_from_the_command_line(tmp_path: Path) -> None:
    """`tierplan plan` on the example writes a plan; check_overlap.py reads a run report of it and
    exits 0 when the measured p50 is the overlap model's figure (a report made from the model)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(EXAMPLE.parents[1]), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "plan.json"
    r = subprocess.run([sys.executable, "-m", "tierplan", "plan", str(EXAMPLE / "app.yaml"), "--fleet",
                        str(EXAMPLE / "fleet.yaml"), "--out", str(out)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from tierplan.planner.plan import Plan
    plan = Plan.load(out)
    steps = {p.id: p.latency_ms[plan.per_class["dashcams"][p.id]] for p in plan.pieces if p.kind == "piece"}
    model = latency_with_steps(plan, {("dashcams", n, plan.per_class["dashcams"][n]): ms for n, ms in steps.items()})
    report = {"stages": [{"kind": "compute", "name": f"{n}@{plan.per_class['dashcams'][n]}", "measured_p50_ms": ms}
                         for n, ms in steps.items()],
              "classes": [{"device_class": "dashcams", "sinks": list(model["dashcams"]),
                           "measured_p50_ms": max(model["dashcams"].values())}]}
    (tmp_path / "run.json").write_text(json.dumps(report))
    ok = subprocess.run([sys.executable, str(EXAMPLE / "check_overlap.py"), str(out), str(tmp_path / "run.json")],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0 and "within 15%" in ok.stdout, ok.stdout + ok.stderr
    report["classes"][0]["measured_p50_ms"] *= 1.3       # 30% slower than planned: flagged
    (tmp_path / "run.json").write_text(json.dumps(report))
    off = subprocess.run([sys.executable, str(EXAMPLE / "check_overlap.py"), str(out), str(tmp_path / "run.json")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert off.returncode == 1 and "outside 15%" in off.stdout, off.stdout + off.stderr
