"""`--adapt`, `--adapt-policy` and `--link-step` on `tierplan run` / `deploy`: bad values exit 2 with one
line naming the flag and a fix, before anything is planned or started; decisions print as one line."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import pytest

from tierplan.commands._adapt import event_line


def _cli(*args: str) -> tuple[int, str]:
    """(exit code, stderr) of `tierplan ARGS` run in this process (tierplan.cli.main)."""
    from tierplan.cli import main
    err = io.StringIO()
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            main(list(args))
        return 0, err.getvalue()
    except SystemExit as e:
        return (e.code if isinstance(e.code, int) else int(e.code is not None)), err.getvalue()


@pytest.mark.parametrize("args, flag", [
    (["--adapt", "--adapt-policy", "speed=2"], "--adapt-policy"),
    (["--adapt", "--adapt-policy", "window=0"], "--adapt-policy"),
    (["--adapt-policy", "window=2"], "--adapt-policy"),
    (["--link-step", "midrange_phones:up=2"], "--link-step"),
])
def test_run_refuses_bad_adapt_flags(args, flag, tmp_path):
    code, err = _cli("run", "read-text", "--no-progress", *args)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}") and "To fix: " in lines[0], err


def test_deploy_refuses_bad_adapt_policy(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"status": "feasible"}')
    code, err = _cli("deploy", str(plan), "--adapt", "--adapt-policy", "margin=2")
    assert code == 2 and "--adapt-policy margin=2" in err and "To fix" in err, err


def test_a_decision_prints_as_one_line():
    e = {"t_s": 17.2, "drifted": [{"key": "link:midrange_phones:up_mbps", "planned": 12.0, "observed": 2.04}],
         "replan_s": 1.4, "decision": {"adopt": True, "reason": "the old plan misses the SLO of x"},
         "moves": [{"piece": "orientation/p1"}], "switch": {"switched": True, "load_s": 0.41}, "switch_t_s": 18.9}
    line = event_line(e)
    assert "\n" not in line
    assert "link:midrange_phones:up_mbps 12 -> 2.04" in line and "1 move(s): adopted" in line
    assert "switched at t=18.9s" in line


@pytest.mark.slow   # takes seconds: kept out of the fast lane (under 3 min); the full suite runs it
def test_deploy_adapt_serves_with_the_controller_loop(squeezenet_random, tmp_path):
    """`tierplan deploy PLAN --adapt` serves with the adaptation loop running, and stops cleanly."""
    from test_adapt_loop import _app, _fleet
    from tierplan.planner.api import plan_app
    from tierplan.runtime.stage import StageWorker
    plan = plan_app(_app(squeezenet_random), _fleet(1000.0), time_limit_s=2, pieces_dir=tmp_path / "pieces")
    plan.save(tmp_path / "plan" / "plan.json")
    gw = StageWorker("gw")
    gw.start()
    try:
        code, err = _cli("deploy", str(tmp_path / "plan" / "plan.json"), "--agent", f"gw={gw.address}", "--adapt",
                         "--adapt-policy", "window=1,sustain=0.5", "--duration", "2", "--json")
    finally:
        gw.stop()
    assert code == 0 and "Traceback" not in err, err
