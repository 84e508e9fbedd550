"""Progress on stderr: the planner's hook (phase, incumbent, bound), and the commands' --progress bars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "smart-city"
BAR = "━"   # rich's bar character: a drawn bar has it


def _tierplan(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "tierplan", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout_s)


def test_plan_hook_reports_phases_incumbents_and_bounds():
    """plan_app(progress=hook) reports each phase and the running CP-SAT model's incumbent and proven bound."""
    from tierplan.planner.api import plan_app
    from tierplan.planner.progress import SolveEvent
    from tierplan.loader import load_app, load_fleet

    events: list[SolveEvent] = []
    plan = plan_app(load_app(EXAMPLE / "app.yaml"), load_fleet(EXAMPLE / "fleet.yaml"), time_limit_s=3,
                    progress=events.append, segments=None)
    assert plan.status in ("optimal", "feasible")
    phases = list(dict.fromkeys(e.phase for e in events))
    assert phases[0] == "partitioning the models" and any(p.startswith("edge class") for p in phases)
    with_both = [e for e in events if e.incumbent is not None and e.bound is not None]
    assert with_both and all(e.bound <= e.incumbent + 1e-6 and 0 <= e.gap <= 1 for e in with_both)


def test_plan_without_hook_is_the_same_plan():
    """Reporting progress does not change the plan (same placement and objective with and without a hook)."""
    from tierplan.planner.api import plan_app
    from tierplan.loader import load_app, load_fleet

    app, fleet = load_app(EXAMPLE / "app.yaml"), load_fleet(EXAMPLE / "fleet.yaml")
    # proven optima (a time-limited incumbent would depend on the machine's load, not on the hook)
    a = plan_app(app, fleet, time_limit_s=10, segments=None)
    b = plan_app(app, fleet, time_limit_s=10, segments=None, progress=lambda e: None)
    assert a.status == b.status == "optimal"
    assert a.objective == b.objective


def test_progress_policy():
    """--progress / --no-progress decide; otherwise only a terminal stderr without --json draws bars."""
    from tierplan.console import progress_wanted

    assert progress_wanted(True, as_json=True) is True and progress_wanted(False) is False
    assert progress_wanted(None, as_json=True) is False
    assert progress_wanted(None) is sys.stderr.isatty()


def test_progress_into_a_pipe_prints_plain_lines(capfd, monkeypatch):
    """A forced bar on a stream that is not a terminal prints plain lines (no cursor codes) and its final state."""
    import time

    import tierplan.console as tc
    monkeypatch.setattr(tc, "LOG_EVERY_S", 0.1)
    with tc.progress(True) as bar:
        task = bar.add_task("counting", total=3)
        for _ in range(3):
            time.sleep(0.25)
            bar.advance(task)
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) >= 2 and "counting" in lines[-1] and "3/3" in lines[-1]
    assert "\x1b[" not in err


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
@pytest.mark.parametrize("flag", ["--progress", None], ids=["progress", "default"])
def test_plan_progress_on_stderr_only_when_asked(flag, tmp_path):
    """`plan --json` into pipes: with --progress stderr shows the solver's bar; without it stderr has no bar; stdout stays JSON."""
    r = _tierplan("plan", str(EXAMPLE / "app.yaml"), "--fleet", str(EXAMPLE / "fleet.yaml"), "--json",
                  "--time-limit", "2", *([flag] if flag else []))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["status"] in ("optimal", "feasible")
    if flag:
        assert "plan" in r.stderr and BAR in r.stderr
    else:
        assert BAR not in r.stderr


@pytest.mark.slow   # simulates every strategy / measures this CPU
def test_simulate_progress_counts_strategies():
    """`simulate --progress` into a pipe shows the strategies replayed on stderr; without it, no bar."""
    r = _tierplan("simulate", str(EXAMPLE), "--duration", "2", "--strategies", "optimal,all-cloud", "--json",
                  "--progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "simulated" in r.stderr and "2/2" in r.stderr and BAR in r.stderr
    json.loads(r.stdout)
    r = _tierplan("simulate", str(EXAMPLE), "--duration", "2", "--strategies", "optimal", "--json")
    assert r.returncode == 0 and BAR not in r.stderr


@pytest.mark.slow   # simulates every strategy / measures this CPU
def test_calibrate_progress_counts_measured_pieces(tmp_path):
    """`calibrate --progress` into a pipe shows the pieces measured on stderr; stdout stays the JSON calibration."""
    r = _tierplan("calibrate", "--model", "ppocr_cls", "--max-pieces", "2", "--runs", "3", "--json", "--progress",
                  "--out", str(tmp_path / "cal.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pieces measured" in r.stderr and "fitted" in r.stderr
    assert json.loads(r.stdout)["device"] == "local"
