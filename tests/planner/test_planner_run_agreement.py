"""The planner's latency model against `tierplan run` on a branching example (issue #16 item 2).

`tierplan run` deploys the plan on this machine, with the fleet's links emulated as declared. The
planner's model is evaluated on the plan's own pieces with each compute step's measured p50 (this
machine's times, not the fleet's devices): what is checked is the latency semantics (which steps
add up, which overlap, what each transfer costs), apart from the cost model. Every class's measured
p50 must be within 15% of it.

Measured (2 shared vCPUs): the two-detector app 1.11-1.12 (the sum model 2.24) at load averages 2-3;
examples/two-detectors (one detector on the dashcam, the other on the roadside unit) 1.04, 1.11 and
1.07 at 2.5, 4.1 and 8.4 (1.25 before the stage worker sent a branch to its other site before running
the local one); in a slow phase of this VM 1.17-1.21 at its sources' rate and 1.07-1.10 one request
after another, which the test now runs. The two-detector app on one phone read 1.20 and 1.43 at loads 6.9-7.2 at its sources' rate: under
that load its frames' feed waits for the phone's busy compute thread (queueing, which this leaves
out), so it runs with --sequential (one request after another, no queueing).
smart-city's camera classes were 0.92-1.13 at a load of 1.1 but 0.99-1.44 at 4.9 (legacy_cams, whose
frames queue at the base station it shares: queueing, which this comparison leaves out), so it is
not asserted here; read-text's text sinks were 1.03-1.10 at 4.3, its 1.5 ms speech requests 4x
(they wait for the phone's compute thread behind the OCR job: queueing again).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tierplan.planner.measured import latency_with_steps
from tierplan.planner.plan import Plan
from tierplan.runtime.fleetrun import split_node
from planner_fixtures import twin_app_yaml

pytestmark = [pytest.mark.slow, pytest.mark.integration]   # deploys every class: Ray, agents, gRPC
REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 0.15


def _steps(plan: Plan, report: dict) -> dict:
    """(class or None, node, site) -> the run's p50 of that compute step (ms)."""
    classes = list(plan.per_class)
    measured = {}
    for row in report["stages"]:
        if row["kind"] == "compute":
            node, _, site = row["name"].rpartition("@")
            cls, base = split_node(node, classes)
            measured[(cls, base.rpartition("~")[2], site)] = row["measured_p50_ms"]
    return measured


def planned_with_measured_steps(plan: Plan, report: dict, model: str) -> dict[str, dict[str, float]]:
    """Per class, per sink: the planner's latency under `model` ("overlap" or "sum", without
    queueing) with every compute step at its measured p50 in the run (planner.measured)."""
    return latency_with_steps(plan, _steps(plan, report), model)


# one camera frame to two detectors (planner_fixtures.twin_app_yaml): one site runs a request's
# pieces one at a time, so the second sink waits for the first detector; the sum model (each sink's
# own path) reads half the latency
TWINS_FLEET = """\
name: phone-server
sites:
  phones: {tier: edge, device: rpi4, count: 10, attach: server, link: wifi}
  server: {tier: cloud, device: aws-g5-xlarge, max_instances: 4}
links:
  wifi: {uplink_mbps: 5.85, downlink_mbps: 5.85, rtt_ms: 10}
"""


def _run(example: str, tmp_path: Path, *extra: str) -> tuple[Plan, dict]:
    plan_path = tmp_path / "plan.json"
    r = subprocess.run([sys.executable, "-m", "tierplan", "run", example, "--duration", "15", "--json",
                        "--no-progress", "--plan-out", str(plan_path), *extra],
                       capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))),
                       timeout=540)
    assert r.returncode == 0, r.stderr[-3000:]
    (tmp_path / "run.json").write_text(r.stdout)      # kept with the plan, for a look when it fails
    return Plan.load(plan_path), json.loads(r.stdout)


def _ratios(plan: Plan, report: dict, model: str) -> dict[str, float]:
    """Per class: measured p50 / the planner's figure with the measured steps (its slowest sink)."""
    planned = planned_with_measured_steps(plan, report, model)
    return {row["device_class"]: row["measured_p50_ms"] / max(planned[row["device_class"]][s] for s in row["sinks"])
            for row in report["classes"]}


def _assert_within(ratios: dict[str, float], plan: Plan, report: dict) -> None:
    assert set(ratios) == set(plan.per_class)
    off = {c: round(x, 3) for c, x in ratios.items() if abs(x - 1) > TOLERANCE}
    assert not off, f"measured / planned p50 outside 1 +- {TOLERANCE} (load {report.get('load_average_1m')}): {ratios}"


def test_two_branches_on_one_site_run_one_after_another_as_planned(tmp_path: Path) -> None:
    """Two detectors on one frame: the run takes both detectors' time, as the overlap model plans;
    the sum model's figure is far below what runs."""
    model = REPO / "examples" / "smart-city" / "detector.onnx"
    (tmp_path / "twins").mkdir()
    (tmp_path / "twins" / "app.yaml").write_text(twin_app_yaml(model, "frame", [1, 320, 320, 3], "uint8"))
    (tmp_path / "twins" / "fleet.yaml").write_text(TWINS_FLEET)
    # one request after another: what is checked is that one site runs a request's branches one at a
    # time; at the sources' rate a loaded machine adds queueing behind the busy phone (1.20-1.43)
    plan, report = _run(str(tmp_path / "twins"), tmp_path, "--sequential")
    assert plan.latency_semantics.startswith("overlap")
    _assert_within(_ratios(plan, report, "overlap"), plan, report)
    assert len(set(plan.per_class["phones"].values())) == 1     # both branches on one site (the uplink is slow)
    assert all(x > 1.5 for x in _ratios(plan, report, "sum").values())


def test_two_detectors_example_runs_its_branches_on_two_sites_as_planned(tmp_path: Path) -> None:
    """examples/two-detectors: the plan puts the two detectors of one frame on the dashcam and on
    the roadside unit; the run's p50 is within 15% of the overlap model with the measured steps
    (the frame goes up while the dashcam's detector runs, as examples/two-detectors/README says)."""
    # one request after another, as for the twins above: at the sources' rate this machine read
    # 1.04-1.11 earlier but 1.17-1.21 in a slow phase at load 0.7 (queueing behind the busy dashcam,
    # which this comparison leaves out); one after another it read 1.07-1.10 then
    plan, report = _run(str(REPO / "examples" / "two-detectors"), tmp_path, "--sequential")
    assert plan.latency_semantics.startswith("overlap")
    for cls, placed in plan.per_class.items():
        by_model = {m: {s for n, s in placed.items() if n.startswith(f"{m}/")} for m in ("road", "signs")}
        assert by_model["road"] and by_model["signs"] and by_model["road"] != by_model["signs"], (cls, placed)
    _assert_within(_ratios(plan, report, "overlap"), plan, report)
