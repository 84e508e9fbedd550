"""Benchmark of fleet-scale planning: a 3-model ensemble on 100..100,000 devices in 20 classes.

Scenario (issue 6): 10,000 devices in 20 device classes (device type x network), 500 base
stations in 10 classes, 5 cloud regions; the app is a detector whose crops feed two
classifiers (24 pieces). Goals: 10,000 devices planned in <= 60 s with an optimality gap
<= 1% (CP-SAT's bound), 1,000 devices in <= 10 s. Also a table for 100 / 1k / 10k / 100k
devices, and replanning after a link degrades, a base-station class fails and 2,000 devices
join (warm-started from the old plan, listing the pieces that move). Prints rich tables and
writes benchmarks/results/fleet.json.

    python benchmarks/fleet.py [--sizes 100,1000,10000,100000] [--pieces 24]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tierplan.devices.costmodel import CostModel  # noqa: E402
from tierplan.devices.fleet import resolve_fleet  # noqa: E402
from tierplan.planner.api import plan_graph  # noqa: E402
from tierplan.planner.build import SloTarget  # noqa: E402
from tierplan.planner.synthetic import synthetic_app, synthetic_fleet_spec  # noqa: E402

GOALS = {10_000: (60.0, 0.01), 1_000: (10.0, None)}   # devices -> (seconds, gap)
SLO = {"out0": SloTarget(300.0), "out1": SloTarget(600.0), "out2": SloTarget(600.0)}
N_EDGE, N_BS, N_CLOUD = 20, 10, 5


def _spec(devices: int):
    return synthetic_fleet_spec(N_EDGE, N_BS, N_CLOUD, devices, base_stations_total=max(N_BS, devices // 20))


def _row(name: str, devices: int, plan, wall_s: float, limit_s: float, goal) -> dict:
    seconds, gap_goal = goal if goal else (None, None)
    met = None
    if goal:
        met = wall_s <= seconds and (gap_goal is None or (plan.gap is not None and plan.gap <= gap_goal))
    best_base = max(plan.baselines.items(), key=lambda kv: (kv[1].coverage_share or 0, -kv[1].cost_per_hour_usd))
    return {"scenario": name, "devices": devices, "classes": len(plan.per_class), "status": plan.status,
            "gap": plan.gap, "solve_s": round(wall_s, 2), "time_limit_s": limit_s,
            "coverage_share": plan.coverage_share, "cost_per_hour_usd": plan.cost_per_hour_usd,
            "monthly_cost_usd_by_tier": plan.monthly_cost_usd_by_tier, "instances": plan.instances,
            "best_baseline": best_base[0], "best_baseline_coverage": best_base[1].coverage_share,
            "best_baseline_cost_per_hour_usd": best_base[1].cost_per_hour_usd,
            "goal_s": seconds, "goal_gap": gap_goal, "goal_met": met}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,10000,100000")
    ap.add_argument("--pieces", type=int, default=24)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fleet.json"))
    args = ap.parse_args()
    cm = CostModel(calibration=False)
    app = synthetic_app(args.pieces, n_models=3)
    con = Console(width=200)
    rows, plans = [], {}
    for devices in [int(x) for x in args.sizes.split(",")]:
        limit = GOALS.get(devices, (60.0, None))[0]
        fleet = resolve_fleet(_spec(devices))
        t0 = time.perf_counter()
        plan = plan_graph(app, fleet, cm, slo=SLO, objective="cost", time_limit_s=limit)
        wall = time.perf_counter() - t0
        plans[devices] = plan
        rows.append(_row("plan", devices, plan, wall, limit, GOALS.get(devices)))
        con.print(f"planned {devices:,} devices: {plan.status}, gap {plan.gap}, {wall:.1f} s")
    # replanning the 10k fleet (or the largest planned): warm start from the old plan
    base_n = 10_000 if 10_000 in plans else max(plans)
    old = plans[base_n]
    spec = _spec(base_n)
    first_edge = next(n for n, s in spec.sites.items() if s.tier == "edge")
    offloading = [n for n, c in old.coverage.items() if c.mode == "offload"] or [first_edge]
    degrade = max(offloading, key=lambda n: spec.sites[n].count)   # the biggest class that offloads
    link = spec.sites[degrade].link
    degraded = spec.model_copy(update={"links": {**spec.links, link: spec.links[link].model_copy(
        update={"uplink_mbps": spec.links[link].uplink_mbps / 10})}})
    used_bs = sorted((n for n in spec.sites if spec.sites[n].tier == "base_station"),
                     key=lambda n: -old.instances.get(n, 0))
    failed_bs, backup = used_bs[0], next(n for n in used_bs[1:] if spec.sites[n].attach == spec.sites[used_bs[0]].attach) \
        if any(spec.sites[n].attach == spec.sites[used_bs[0]].attach for n in used_bs[1:]) else used_bs[1]
    sites = {n: (s.model_copy(update={"attach": backup}) if s.attach == failed_bs else s)
             for n, s in spec.sites.items() if n != failed_bs}
    bs_failed = spec.model_copy(update={"sites": sites})
    joined = spec.model_copy(update={"sites": {**spec.sites, "newcam": spec.sites[first_edge].model_copy(
        update={"count": 2000})}})
    for name, changed in ((f"{degrade}'s uplink / 10", degraded), (f"{failed_bs} fails -> {backup}", bs_failed),
                          ("2,000 devices join", joined)):
        t0 = time.perf_counter()
        plan = plan_graph(app, resolve_fleet(changed), cm, slo=SLO, objective="cost", time_limit_s=60.0,
                          from_plan=old)
        wall = time.perf_counter() - t0
        row = _row(f"replan: {name}", sum(s.count for s in changed.sites.values() if s.tier == "edge"),
                   plan, wall, 60.0, None)
        row["moves"] = len(plan.moves)
        row["moves_sample"] = [m.model_dump() for m in plan.moves[:5]]
        rows.append(row)
    t = Table(title="fleet-scale planning (CP-SAT, per device class)", title_justify="left")
    for col in ("scenario", "devices", "classes", "status", "gap", "solve s", "coverage", "$/h", "moves",
                "best baseline (coverage, $/h)", "goal"):
        t.add_column(col, justify="left" if col in ("scenario", "status", "best baseline (coverage, $/h)") else "right")
    for r in rows:
        goal = "-" if r["goal_met"] is None else ("met" if r["goal_met"] else "[red]missed[/]")
        t.add_row(r["scenario"], f"{r['devices']:,}", str(r["classes"]), r["status"],
                  "-" if r["gap"] is None else f"{100 * r['gap']:.2f}%", f"{r['solve_s']:.1f}",
                  f"{100 * (r['coverage_share'] or 0):.0f}%", f"{r['cost_per_hour_usd']:.2f}", str(r.get("moves", "-")),
                  f"{r['best_baseline']} ({100 * (r['best_baseline_coverage'] or 0):.0f}%, "
                  f"{r['best_baseline_cost_per_hour_usd']:.2f})", goal)
    con.print(t)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "fleet", "pieces": args.pieces, "edge_classes": N_EDGE,
                               "base_station_classes": N_BS, "regions": N_CLOUD, "rows": rows}, indent=2))
    con.print(f"wrote {out}")


if __name__ == "__main__":
    main()
