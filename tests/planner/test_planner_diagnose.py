"""Diagnoses from the solver (issue #16): binding constraints by assumption literals, the fleet's
own figures (nothing widened or clipped), and classes that miss their SLO planned at their best."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tierplan.errors import InfeasibleError
from tierplan.planner.api import plan_graph
from tierplan.planner.build import SloTarget, build_problem
from tierplan.planner.diagnose import binding_constraints, diagnose, most_devices
from tierplan.planner.formulation import _Model, solve
from planner_fixtures import chain_graph, cost_model, three_tier_fleet

ROOT = Path(__file__).resolve().parents[2]


def _graph(cam_ms: float = 200.0):
    """Two pieces far too slow on the camera for the SLO: they must run at the base station or cloud."""
    ms = {"cam-dev0": cam_ms, "cam-dev1": 2 * cam_ms, "bs-dev": 5.0, "cloud-dev": 2.0}
    return chain_graph([ms, ms], [20_000, 1_000], input_bytes=20_000)


def test_doubling_a_class_until_the_shared_site_fills_names_that_site() -> None:
    """cam1 doubles until the base stations and the cloud (both shared with cam0) are full: the plan
    (or the error) then names the compute capacity that binds, from the solver's assumption core."""
    g, slo = _graph(), {"out": SloTarget(150.0)}
    count = 50
    for _ in range(12):
        fleet = three_tier_fleet(uplink_mbps=100.0, n_edge=2, count=count, bs_instances=1, cloud_instances=1)
        try:
            plan = plan_graph(g, fleet, cost_model(), slo=slo, with_baselines=False, analyse_uncovered=False,
                              time_limit_s=5)
        except InfeasibleError as e:
            msg = str(e)
            break
        if plan.not_met:
            msg = " ".join(str(x["why"]) for x in plan.not_met)
            break
        count *= 2
    else:
        pytest.fail("the shared sites never filled")
    assert "compute capacity at bs (at most 2 instances)" in msg
    assert "compute capacity at cloud (at most 1 instances)" in msg


def test_the_binding_core_is_infeasible_and_each_member_matters() -> None:
    """Enforcing only the reported constraints is infeasible, and dropping any one of them is not."""
    fleet = three_tier_fleet(uplink_mbps=100.0, n_edge=2, count=3200, bs_instances=1, cloud_instances=1)
    problem, _ = build_problem(_graph(), fleet, cost_model(), slo={"out": SloTarget(150.0)})
    core = binding_constraints(problem, 10.0)
    assert core
    mdl = _Model(problem, assume=True)
    from tierplan.planner.diagnose import _solve_under
    from ortools.sat.python import cp_model
    assert _solve_under(mdl, core, 10.0, workers=8)[0] == cp_model.INFEASIBLE
    for k in core:
        rest = [x for x in core if x != k]
        assert _solve_under(mdl, rest, 10.0, workers=8)[0] in (cp_model.OPTIMAL, cp_model.FEASIBLE), k


def test_served_devices_are_the_largest_count_that_fits() -> None:
    """'serves N but not M': N devices of the class fit every constraint, M do not (checked by solving)."""
    fleet = three_tier_fleet(uplink_mbps=100.0, count=400_000, bs_instances=1, cloud_instances=1)
    problem, _ = build_problem(_graph(cam_ms=1000.0), fleet, cost_model())   # no camera can run it
    got = most_devices(problem, "cam0", 10.0)
    assert got is not None
    lo, hi = got
    assert 1 <= lo < hi <= 400_000

    def fits(n: int) -> bool:
        from tierplan.planner.diagnose import _scaled
        sub = problem.with_classes((_scaled(problem.classes[0], n / 400_000),))
        return solve(replace(sub, segments=()), 10).status in ("optimal", "feasible")

    assert fits(lo) and not fits(hi)


def test_a_billion_devices_gives_real_figures() -> None:
    """count 10^9: every 'X Mbit/s > Y Mbit/s' states the link's real capacity as Y (nothing widened)
    and the served count is a plain integer below 10^9."""
    fleet = three_tier_fleet(uplink_mbps=100.0, count=10**9, bs_instances=1, cloud_instances=1)
    problem, _ = build_problem(_graph(cam_ms=1000.0), fleet, cost_model())
    msg = diagnose(problem, 5.0)
    caps = {round(v / 1e6, 2) for v in problem.link_cap_bps.values()}
    for used, cap in re.findall(r"([\d.]+) Mbit/s > ([\d.]+) Mbit/s", msg):
        assert float(cap) in caps and float(used) > float(cap)
    served = re.search(r"serves (?:at most )?([\d,]+)", msg)
    assert served and int(served.group(1).replace(",", "")) < 10**9
    assert "e+" not in msg


@pytest.mark.slow
def test_smart_city_at_slo_120_serves_legacy_cams_at_its_best(tmp_path: Path) -> None:
    """The issue's case: smart-city at SLO 120 ms. legacy_cams is planned at the best p95 it can
    reach (about 125 ms), not the cheapest placement at any latency; exit 1 names each not-met class
    with planned and best latency and a fix; --allow-partial exits 0."""
    src = ROOT / "examples" / "smart-city"
    app = yaml.safe_load((src / "app.yaml").read_text())
    app["slo"][0]["latency_ms"] = 120
    for m in app["models"].values():
        m["onnx"] = str(src / m["onnx"])
    (tmp_path / "app.yaml").write_text(yaml.safe_dump(app))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "tierplan", "plan", str(tmp_path / "app.yaml"), "--fleet", str(src / "fleet.yaml"),
           "--json", "--no-progress", "--time-limit", "40"]   # generous: the CPU may be shared
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    plan = json.loads(r.stdout)
    miss = {x["edge_class"]: x for x in plan["not_met"]}
    assert set(miss) == {n for n, c in plan["coverage"].items() if not c["meets_slo"]}
    legacy = miss["legacy_cams"]
    # within 10% of its best alone (the others keep their capacity; the solve is time-limited), where
    # the cheapest placement at any latency took 1,214 ms
    assert legacy["planned_ms"] <= 1.1 * legacy["best_alone_ms"] and legacy["best_alone_ms"] < 140
    assert all(x["fix"] and x["best_alone_ms"] > 120 for x in plan["not_met"])
    assert "legacy_cams (1,500 devices)" in r.stderr and "To fix" in r.stderr
    partial = subprocess.run(cmd + ["--allow-partial"], capture_output=True, text=True, env=env, timeout=300)
    assert partial.returncode == 0, partial.stderr
