"""Benchmark of planner/: solve time and gap as apps and fleets grow; the optimum's gain over baselines.

Part 1: synthetic 3-model ensembles of 10-50 pieces on fleets of 5-20 site classes (10,000
devices), cost and latency objectives, 10 s limit; goal: 50 pieces x 20 site classes proven
optimal (gap 0) within 10 s, with the sum latency model (these ensembles are DAGs: their
default overlap model is not proven at that scale, see part 4 for its proof times). The time is the whole `plan_graph` optimisation (per-class solves,
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
keeps each one's mean of the slowest sink per class (`latency_ms`), which is not the objective.
Part 3 (issue #16, cuts chosen with the placement): the default plan (16 candidate segments per
ONNX model, cuts chosen by CP-SAT, then refined among every candidate near them by
planner.refine, max_pieces after the choice) against a reference: one piece per layer for the
24-layer AlexNet profile (tests/planner/data/alexnet24_app.yaml, phone -> cloud at the five
uplinks); for the bundled ONNX examples the best plan over candidate cuts (<= 4 tensors) this run
finds: 48 candidates per model proven optimal (120 s limit), then refined the same way, or the default
plan when that is lower (so gap >= 0 there). Every candidate cut (161-358 segments per model) is
not a usable reference: CP-SAT returns neither a plan nor a bound in 60 s on it, even hinted with
the default plan (read-text cost, load 4.5). The older default (cut beforehand at the cheapest
cuts into max_pieces) is shown beside them, and the default's optimum before refinement.
Goal: gap 0 for the chain, <= 1% for the ONNX examples, the examples planned in <= 10 s.
Part 4 (overlap): DAG apps (synthetic 3-model ensembles whose crop feeds two branches, 17 random
8-piece DAGs with fan-out and joins, the examples) planned for latency under the sum model and under the overlap model, both plans
evaluated under overlap (what the runtime executes): the overlap plan's gain, and proof times.
Prints rich tables, writes benchmarks/results/planner.json.

    python benchmarks/planner.py [--pieces 10,25,50] [--classes 5,10,20] [--skip-examples] [--parts 1,2,3,4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
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
from tierplan.planner.synthetic import (  # noqa: E402
    UPLINKS_MBPS, synthetic_app, synthetic_dag, synthetic_fleet, synthetic_fleet_spec,
)

SHAPES = {5: (3, 1, 1), 10: (6, 2, 2), 20: (12, 5, 3)}   # site classes -> (edge, base station, cloud)
SLO = {"out0": SloTarget(300.0), "out1": SloTarget(600.0), "out2": SloTarget(600.0)}
GOAL_PIECES, GOAL_CLASSES, GOAL_S = 50, 20, 10.0
EXAMPLES = ("read-text", "smart-city")
REF_SEGMENTS = 48    # candidate segments per model of the reference plan (the default is 16)
DAG_SEEDS = 17       # random DAGs in the overlap part (the count)


def scaling(pieces: list[int], classes: list[int], cm, latency_model: str = "sum") -> list[dict]:
    rows = []
    for n in pieces:
        app = synthetic_app(n, n_models=3)
        for k in classes:
            fleet = synthetic_fleet(*SHAPES[k], 10_000)
            for objective in ("cost", "latency"):
                t0 = time.perf_counter()
                plan = plan_graph(app, fleet, cm, slo=SLO, objective=objective, time_limit_s=GOAL_S,
                                  with_baselines=False, analyse_uncovered=False, latency_model=latency_model)
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
                             "coverage_share": plan.coverage_share, "goal_met": goal, "latency_model": latency_model,
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


def _solver_s(plan) -> tuple[float | None, str]:
    proof = plan.solver.get("proof_s")
    return (proof if plan.status == "optimal" and proof not in (None, "none") else None), plan.status


def cuts(cm) -> list[dict]:
    """Default plan vs the reference cuts (per layer / the strongest plan over candidate cuts found), and the older default."""
    from tierplan.loader import load_app, load_fleet
    from tierplan.partition.app_graph import build_app_graph
    from tierplan.spec import FleetSpec

    rows: list[dict] = []
    alex = load_app(REPO / "tests" / "planner" / "data" / "alexnet24_app.yaml")
    for mbps in UPLINKS_MBPS + (1000.0,):
        fleet = FleetSpec.model_validate({
            "name": "client-server",
            "sites": {"phones": {"tier": "edge", "device": "rpi4", "count": 10, "attach": "server", "link": "wifi"},
                      "server": {"tier": "cloud", "device": "aws-g5-xlarge", "max_instances": 4}},
            "links": {"wifi": {"uplink_mbps": mbps, "downlink_mbps": max(mbps, 1.0), "rtt_ms": 10}}})
        rows.append(_cut_row(f"alexnet24 @ {mbps:g} Mbit/s", alex, fleet, "latency", cm,
                             lambda app: build_app_graph(app, None, max_pieces=24), "per layer"))
    for name in EXAMPLES:
        app = load_app(REPO / "examples" / name / "app.yaml")
        fleet = load_fleet(REPO / "examples" / name / "fleet.yaml")
        for objective in ("cost", "latency"):
            # every candidate cut (161-358 segments per model) gives CP-SAT no plan and no bound in 60 s,
            # even hinted with the default plan: 48 per model, proven, then refined among every candidate
            rows.append(_cut_row(f"{name} ({objective})", app, fleet, objective, cm,
                                 lambda a: build_app_graph(a, None, segments=REF_SEGMENTS),
                                 f"{REF_SEGMENTS} cand. + refined", refine_app=app))
    return rows


def _unrefined(plan) -> float:
    """The plan's objective before planner.refine's rounds (natural units: the objective is linear
    in CP-SAT's integer objective, which the rounds record)."""
    rounds = plan.refine
    if not rounds or not rounds[0]["before"] or not rounds[-1]["after"]:
        return plan.objective
    return plan.objective * rounds[0]["before"] / rounds[-1]["after"]


def _cut_row(name: str, app, fleet, objective: str, cm, reference, ref_name: str, refine_app=None) -> dict:
    from tierplan.devices.fleet import resolve_fleet as _resolve
    from tierplan.planner.api import plan_app
    from tierplan.planner.refine import cut_space

    t0 = time.perf_counter()
    default = plan_app(app, fleet, objective=objective, cost_model=cm, time_limit_s=GOAL_S)
    wall = time.perf_counter() - t0
    before = plan_app(app, fleet, objective=objective, cost_model=cm, time_limit_s=GOAL_S, segments=None)
    t1 = time.perf_counter()
    kw = {}
    if refine_app is not None:
        from tierplan.partition.app_graph import build_app_graph
        kw = {"regroup": lambda cuts: build_app_graph(refine_app, None, cuts=cuts),
              "refine_cuts": cut_space(refine_app, None)}
    ref = plan_graph(reference(app), _resolve(fleet), cm, objective=objective,
                     time_limit_s=(12 if refine_app is not None else 6) * GOAL_S,
                     slo={s.sink: SloTarget(s.latency_ms, s.percentile) for s in app.slo},
                     with_baselines=False, analyse_uncovered=False, **kw)
    ref_wall = time.perf_counter() - t1
    best = min(ref.objective, default.objective)   # the best plan over candidate cuts this run found
    gap = (default.objective - best) / best if best else 0.0
    old_gap = (before.objective - best) / best if best else 0.0
    unrefined = _unrefined(default)
    return {"case": name, "objective": objective, "reference": ref_name,
            "default": default.objective, "default_status": default.status, "default_s": round(wall, 2),
            "default_proof_s": _solver_s(default)[0], "default_pieces": sum(p.kind == "piece" for p in default.pieces),
            "default_unrefined": unrefined, "refine_gain": round((unrefined - default.objective) / unrefined, 5)
            if unrefined else 0.0, "refine_rounds": default.refine,
            "reference_value": ref.objective, "reference_unrefined": _unrefined(ref),
            "reference_status": ref.status, "reference_s": round(ref_wall, 2),
            "reference_pieces": sum(p.kind == "piece" for p in ref.pieces), "best": best,
            "gap": round(gap, 5), "before": before.objective, "before_gap": round(old_gap, 5),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def overlap(cm, seeds: int = 6) -> list[dict]:
    """Latency optimum under the sum model vs the overlap model, both evaluated under overlap."""
    from tierplan.loader import load_app, load_fleet
    from tierplan.partition.app_graph import build_app_graph
    from tierplan.planner.build import build_problem
    from tierplan.planner.evaluate import evaluate
    from tierplan.planner.formulation import solve
    from tierplan.spec import ObjectiveSpec

    cases = [(f"ensemble-9 seed {s}", synthetic_app(9, n_models=3, seed=s),
              resolve_fleet(_with_uplink(synthetic_fleet_spec(2, 1, 1, 100), [1.1, 5.85, 18.88][s % 3])))
             for s in range(seeds)]
    cases += [(f"random DAG-8 seed {s}", synthetic_dag(8, seed=s),
               resolve_fleet(_with_uplink(synthetic_fleet_spec(1, 1, 1, 100), [5.85, 18.88, 100.0][s % 3])))
              for s in range(DAG_SEEDS)]
    for name in EXAMPLES:
        app = load_app(REPO / "examples" / name / "app.yaml")
        cases.append((name, build_app_graph(app, None, segments=16), resolve_fleet(load_fleet(REPO / "examples" / name / "fleet.yaml"))))
    rows = []
    for name, graph, fleet in cases:
        w = ObjectiveSpec(latency=1.0)
        over, _ = build_problem(graph, fleet, cm, weights=w, latency_model="overlap")
        summed, _ = build_problem(graph, fleet, cm, weights=w, latency_model="sum")
        over, summed = replace(over, segments=()), replace(summed, segments=())
        t0 = time.perf_counter()
        r_over = solve(over, 6 * GOAL_S)
        t_over = time.perf_counter() - t0
        t0 = time.perf_counter()
        r_sum = solve(summed, 6 * GOAL_S)
        t_sum = time.perf_counter() - t0
        if not (r_over.assignment and r_sum.assignment):
            rows.append({"case": name, "status": f"{r_over.status}/{r_sum.status}"})
            continue
        l_over = evaluate(over, r_over.assignment, r_over.levels).latency_term
        l_sum = evaluate(over, r_sum.assignment, r_sum.levels).latency_term
        rows.append({"case": name, "nodes": len(over.nodes), "classes": len(over.classes),
                     "overlap_status": r_over.status, "sum_status": r_sum.status,
                     "overlap_plan": l_over, "sum_plan_under_overlap": l_sum,
                     "sum_plan_as_planned": evaluate(summed, r_sum.assignment, r_sum.levels).latency_term,
                     "gain": round((l_sum - l_over) / l_sum, 5) if l_sum else 0.0,
                     "overlap_proof_s": round(r_over.proof_s or r_over.solve_s, 2),
                     "sum_proof_s": round(r_sum.proof_s or r_sum.solve_s, 2),
                     "overlap_s": round(t_over, 2), "sum_s": round(t_sum, 2)})
    return rows


def _print_cuts(con, rows: list[dict]) -> None:
    t = Table(title="cuts chosen with the placement: default plan vs the best plan over candidate cuts found "
                    "(reference: per layer, or 48 candidates per model proven optimal then refined among every "
                    "candidate near its cuts; best = the lower of it and the default; gap = default / best - 1; "
                    "unrefined = the default's optimum on its 16 candidates; before = cut beforehand into max_pieces)",
              title_justify="left")
    for col in ("case", "reference", "ref (48 cand.)", "ref refined", "ref status", "unrefined", "default",
                "pieces", "status", "gap", "before", "before gap", "default s", "proof s", "load"):
        t.add_column(col, justify="left" if col in ("case", "reference", "status", "ref status") else "right")
    for r in rows:
        t.add_row(r["case"], r["reference"], f"{r['reference_unrefined']:.4g}", f"{r['reference_value']:.4g}",
                  r["reference_status"], f"{r['default_unrefined']:.4g}", f"{r['default']:.4g}",
                  str(r["default_pieces"]), r["default_status"], f"{100 * r['gap']:+.2f}%", f"{r['before']:.4g}",
                  f"{100 * r['before_gap']:+.2f}%", f"{r['default_s']:.2f}",
                  "-" if r["default_proof_s"] is None else f"{r['default_proof_s']:.2f}", f"{r['load_avg_1min']:.1f}")
    con.print(t)


def _print_overlap(con, rows: list[dict]) -> None:
    t = Table(title="overlap on DAG apps (latency objective, summed over classes and sinks, us): the sum model's "
                    "optimum and the overlap model's, both evaluated under overlap", title_justify="left")
    for col in ("case", "nodes", "classes", "sum plan (as planned)", "sum plan (overlap)", "overlap plan", "gain",
                "status sum/overlap", "proof s sum", "proof s overlap"):
        t.add_column(col, justify="left" if col in ("case", "status sum/overlap") else "right")
    for r in rows:
        if "gain" not in r:
            t.add_row(r["case"], *[""] * 6, r["status"], "", "")
            continue
        t.add_row(r["case"], str(r["nodes"]), str(r["classes"]), f"{r['sum_plan_as_planned']:,}",
                  f"{r['sum_plan_under_overlap']:,}", f"{r['overlap_plan']:,}", f"{100 * r['gain']:.1f}%",
                  f"{r['sum_status']}/{r['overlap_status']}", f"{r['sum_proof_s']:.2f}", f"{r['overlap_proof_s']:.2f}")
    con.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pieces", default="10,25,50")
    ap.add_argument("--classes", default="5,10,20")
    ap.add_argument("--skip-examples", action="store_true")
    ap.add_argument("--parts", default="1,2,3,4", help="which parts to run (1 scaling, 2 gains, 3 cuts, 4 overlap)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "planner.json"))
    args = ap.parse_args()
    cm = CostModel(calibration=False)
    con = Console(width=200)
    parts = {int(x) for x in args.parts.split(",")}
    rows = scaling([int(x) for x in args.pieces.split(",")], [int(x) for x in args.classes.split(",")], cm) \
        if 1 in parts else []
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
    if rows:
        con.print(t)
    gain_rows = [] if args.skip_examples or 2 not in parts else gains(cm)
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
    cut_rows = cuts(cm) if 3 in parts else []
    if cut_rows:
        _print_cuts(con, cut_rows)
    overlap_rows = overlap(cm) if 4 in parts else []
    if overlap_rows:
        _print_overlap(con, overlap_rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "planner", "scaling": rows, "gains": gain_rows, "cuts": cut_rows,
                               "overlap": overlap_rows}, indent=2))
    con.print(f"wrote {out}")


if __name__ == "__main__":
    main()
