"""Benchmark of planner/: solve time and gap as apps and fleets grow; the optimum's gain over baselines.

Part 1: synthetic 3-model ensembles of 10-50 pieces on fleets of 5-20 site classes (10,000
devices), cost and latency objectives, 10 s limit; goal: 50 pieces x 20 site classes proven
optimal (gap 0) within 10 s. The time is the whole `plan_graph` optimisation (per-class solves,
the joint CP-SAT solve when classes couple, tie-breaking), without baselines and without the
what-would-it-need analysis of uncovered classes; `proof s` is when the optimum was proven
(before tie-breaking among equally good plans). Queueing waits are on (the default). The
machine's load average is recorded with the results (the CPU may be shared).
Part 2: the examples (read-text, smart-city) and a synthetic ensemble with every edge link's
uplink set to 0.13, 1.1, 5.85, 18.88 and 100 Mbit/s (the 2G/3G/4G/Wi-Fi presets of the
partitioning literature), latency objective, no SLO: the optimum's objective (the
request-weighted mean sink latency, what CP-SAT minimises) and its gain over all-on-device,
all-in-cloud, the best single split (Neurosurgeon) and greedy, each baseline's objective
evaluated by the same function (planner.evaluate, same queueing levels logic). The JSON also
keeps each one's mean of the slowest sink per class (`latency_ms`), which is not the objective. Prints rich tables, writes benchmarks/results/planner.json.

    python benchmarks/planner.py [--pieces 10,25,50] [--classes 5,10,20] [--skip-examples]
"""

from __future__ import annotations

import argparse
import json
import os
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
from tierplan.errors import InfeasibleError  # noqa: E402
from tierplan.planner.synthetic import UPLINKS_MBPS, synthetic_app, synthetic_fleet, synthetic_fleet_spec  # noqa: E402

SHAPES = {5: (3, 1, 1), 10: (6, 2, 2), 20: (12, 5, 3)}   # site classes -> (edge, base station, cloud)
SLO = {"out0": SloTarget(300.0), "out1": SloTarget(600.0), "out2": SloTarget(600.0)}
GOAL_PIECES, GOAL_CLASSES, GOAL_S = 50, 20, 10.0
EXAMPLES = ("read-text", "smart-city")


def scaling(pieces: list[int], classes: list[int], cm) -> list[dict]:
    rows = []
    for n in pieces:
        app = synthetic_app(n, n_models=3)
        for k in classes:
            fleet = synthetic_fleet(*SHAPES[k], 10_000)
            for objective in ("cost", "latency"):
                t0 = time.perf_counter()
                plan = plan_graph(app, fleet, cm, slo=SLO, objective=objective, time_limit_s=GOAL_S,
                                  with_baselines=False, analyse_uncovered=False)
                wall = time.perf_counter() - t0
                goal = None
                proof = plan.solver.get("proof_s")
                if n == GOAL_PIECES and k == GOAL_CLASSES:
                    goal = (plan.status == "optimal" and plan.gap == 0.0 and wall <= GOAL_S
                            and proof != "none" and proof <= GOAL_S)
                rows.append({"pieces": len([p for p in plan.pieces if p.kind in ("piece", "transform")]),
                             "site_classes": k, "edge_classes": SHAPES[k][0], "objective": objective,
                             "status": plan.status, "gap": plan.gap, "solve_s": round(wall, 3),
                             "proof_s": proof if plan.status == "optimal" and proof != "none" else None,
                             "coverage_share": plan.coverage_share, "goal_met": goal,
                             "load_avg_1min": round(os.getloadavg()[0], 2)})
    return rows


def _edge_links(spec) -> set[str]:
    return {s.link for s in spec.sites.values() if s.tier == "edge" and s.link}


def _with_uplink(spec, mbps: float):
    links = {n: (l.model_copy(update={"uplink_mbps": mbps}) if n in _edge_links(spec) else l)
             for n, l in spec.links.items()}
    return spec.model_copy(update={"links": links})


def gains(cm) -> list[dict]:
    from tierplan.partition.app_graph import build_app_graph
    from tierplan.loader import load_app, load_fleet

    cases = []
    for name in EXAMPLES:
        app = load_app(REPO / "examples" / name / "app.yaml")
        cases.append((name, build_app_graph(app, None), load_fleet(REPO / "examples" / name / "fleet.yaml")))
    cases.append(("synthetic-ensemble", synthetic_app(24, n_models=3), synthetic_fleet_spec(4, 2, 1, 1_000)))
    rows = []
    for name, graph, spec in cases:
        for mbps in UPLINKS_MBPS:
            fleet = resolve_fleet(_with_uplink(spec, mbps))
            t0 = time.perf_counter()
            try:
                plan = plan_graph(graph, fleet, cm, objective="latency", time_limit_s=GOAL_S, analyse_uncovered=False)
            except InfeasibleError as e:
                rows.append({"example": name, "uplink_mbps": mbps, "status": "infeasible", "reason": str(e),
                             "solve_s": round(time.perf_counter() - t0, 3), "baselines": {}})
                continue
            wall = time.perf_counter() - t0
            row = {"example": name, "uplink_mbps": mbps, "status": plan.status, "gap": plan.gap,
                   "objective_ms": plan.objective, "latency_ms": plan.latency_ms, "cost_per_hour_usd": plan.cost_per_hour_usd,
                   "solve_s": round(wall, 3), "baselines": {}}
            for b, res in plan.baselines.items():
                gain = (res.objective - plan.objective) / res.objective if res.objective else 0.0
                row["baselines"][b] = {"objective_ms": res.objective, "latency_ms": res.latency_ms,
                                       "feasible": res.feasible, "gain": round(gain, 4),
                                       "speedup": round(res.objective / plan.objective, 3) if plan.objective else None}
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pieces", default="10,25,50")
    ap.add_argument("--classes", default="5,10,20")
    ap.add_argument("--skip-examples", action="store_true")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "planner.json"))
    args = ap.parse_args()
    cm = CostModel(calibration=False)
    con = Console(width=200)
    rows = scaling([int(x) for x in args.pieces.split(",")], [int(x) for x in args.classes.split(",")], cm)
    t = Table(title=f"solve time and gap (10,000 devices, 3-model ensemble, queueing on, {GOAL_S:g} s limit, "
                    f"{os.cpu_count()} CPUs; load = 1-min load average)", title_justify="left")
    for col in ("pieces", "site classes", "edge classes", "objective", "status", "gap", "solve s", "proof s",
                "coverage", "load", "goal"):
        t.add_column(col, justify="left" if col in ("objective", "status") else "right")
    for r in rows:
        goal = "-" if r["goal_met"] is None else ("met" if r["goal_met"] else "[red]missed[/]")
        t.add_row(str(r["pieces"]), str(r["site_classes"]), str(r["edge_classes"]), r["objective"], r["status"],
                  "-" if r["gap"] is None else f"{100 * r['gap']:.2f}%", f"{r['solve_s']:.2f}",
                  "-" if r["proof_s"] is None else f"{r['proof_s']:.2f}",
                  f"{100 * (r['coverage_share'] or 0):.0f}%", f"{r['load_avg_1min']:.1f}", goal)
    con.print(t)
    gain_rows = [] if args.skip_examples else gains(cm)
    if gain_rows:
        names = list(next(r for r in gain_rows if r["baselines"])["baselines"])
        t = Table(title="latency objective (request-weighted mean sink latency): each baseline's objective and the "
                        "optimum's change from it (-31% = the optimum is 31% faster)", title_justify="left")
        for col in ("example", "uplink Mbit/s", "status", "optimum ms", *[f"vs {b}" for b in names], "solve s"):
            t.add_column(col, justify="left" if col in ("example", "status") else "right")
        for r in gain_rows:
            if r["status"] == "infeasible":
                t.add_row(r["example"], f"{r['uplink_mbps']:g}", "infeasible", "-",
                          *[r["reason"][:40] if i == 0 else "" for i in range(len(names))], f"{r['solve_s']:.2f}")
                continue
            cells = []
            for b in names:
                x = r["baselines"][b]
                cells.append(f"{x['objective_ms']:.0f} ms ({-100 * x['gain']:+.0f}%)" + ("" if x["feasible"] else "*"))
            t.add_row(r["example"], f"{r['uplink_mbps']:g}", r["status"], f"{r['objective_ms']:.1f}", *cells,
                      f"{r['solve_s']:.2f}")
        con.print(t)
        con.print("* the baseline breaks a constraint (capacity, memory or privacy) of the fleet")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "planner", "scaling": rows, "gains": gain_rows}, indent=2))
    con.print(f"wrote {out}")


if __name__ == "__main__":
    main()
