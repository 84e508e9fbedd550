"""Terminal tables: piped output takes the width it needs; no identifier wraps and no header is cut to "…"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from tierplan.planner.api import plan_graph
from tierplan.planner.build import SloTarget
from tierplan.planner.render import render_plan
from planner_fixtures import chain_graph, cost_model, three_tier_fleet
from tierplan.console import PIPE_WIDTH, console

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "read-text"


def _cells(text: str) -> set[str]:
    """Every table cell's text (rich box borders or the compact layout's runs of 2+ spaces)."""
    out = set()
    for line in text.splitlines():
        out.update(c.strip() for c in re.split(r"[│┃]| {2,}", line) if c.strip())
    return out


@pytest.mark.slow   # plans an example through the CLI (~6 s)
def test_piped_plan_keeps_identifiers_whole_and_headers_uncut(tmp_path: Path) -> None:
    """`tierplan plan | cat` (COLUMNS=80 too): every class, piece and site is one cell on one line; no "…"."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "COLUMNS": "80"}
    out = tmp_path / "plan.json"
    r = subprocess.run([sys.executable, "-m", "tierplan", "plan", str(EXAMPLE / "app.yaml"), "--fleet",
                        str(EXAMPLE / "fleet.yaml"), "--out", str(out), "--time-limit", "5"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    plan = json.loads(out.read_text())
    cells = _cells(r.stdout)
    names = set(plan["per_class"]) | {p for c in plan["per_class"].values() for p in c} \
        | {s for c in plan["per_class"].values() for s in c.values()}
    assert names and names <= cells, sorted(names - cells)
    for header in ("compute edge", "compute cloud", "transfers", "latency", "SLO coverage"):
        assert all(w in cells or w in r.stdout for w in header.split())


@pytest.fixture(scope="module")
def plan():
    ms = {"cam-dev0": 40.0, "cam-dev1": 80.0, "cam-dev2": 120.0, "bs-dev": 8.0, "cloud-dev": 2.0}
    g = chain_graph([ms, ms, ms], [200_000, 20_000, 1_000], input_bytes=600_000)
    return plan_graph(g, three_tier_fleet(uplink_mbps=100.0, n_edge=3), cost_model(),
                      slo={"out": SloTarget(250)}, objective="latency", pareto=True, pareto_points=3)


@pytest.mark.parametrize("width", [200, 80, 50, 30])
def test_plan_tables_cut_nothing_on_a_narrow_terminal(plan, width: int) -> None:
    """However narrow the terminal, the plan's tables cut no cell to "…" and keep every name on one line."""
    buf = StringIO()
    render_plan(plan, Console(file=buf, width=width, force_terminal=True, color_system=None))
    text = buf.getvalue()
    assert "…" not in text
    cells = _cells(text)
    assert set(plan.per_class) <= cells and {"cp-sat (this plan)", *plan.baselines} <= cells


def test_console_is_as_wide_as_needed_when_not_a_terminal(monkeypatch) -> None:
    """A Console on a pipe or file is PIPE_WIDTH wide (TIERPLAN_WIDTH overrides; COLUMNS does not crush it)."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("TIERPLAN_WIDTH", raising=False)
    assert console(file=StringIO()).width == PIPE_WIDTH
    monkeypatch.setenv("TIERPLAN_WIDTH", "150")
    assert console(file=StringIO()).width == 150


def test_run_report_keeps_stage_names_whole(capsys, monkeypatch) -> None:
    """`tierplan run`'s per-stage table prints stage names like detector/p0@midrange_phones on one line."""
    from tierplan.commands.run import print_report
    monkeypatch.delenv("TIERPLAN_WIDTH", raising=False)
    from tierplan.run import RunReport, StageRow
    names = ["detector/p0@midrange_phones", "orientation/p7@cells", "midrange_phones->cells"]
    stages = [StageRow(kind="compute", name=n, measured_p50_ms=1.0, measured_p95_ms=2.0, predicted_ms=1.2, count=100,
                       predicted_local_ms=1.5) for n in names]
    rep = RunReport(example="read-text", requests_ok=100, requests_failed=0, measured_p50_ms=10.0,
                    measured_p95_ms=20.0, predicted_p50_ms=9.0, predicted_p95_ms=19.0, stages=stages)
    print_report(rep)
    text = capsys.readouterr().out
    assert set(names) <= _cells(text) and "…" not in text
