"""Simulator benchmark: fast-path goal (10 M requests, 10,000 devices, < 60 s), both paths' speed, fidelity.

    python benchmarks/simulate.py            # everything
    python benchmarks/simulate.py --quick    # smaller runs (CI smoke)

1. Goal: 10 million requests from a 10,000-device fleet (3-stage app: device -> base station ->
   cloud) through the vectorised path in under 60 s wall, stats included.
2. Speed of both paths on the peers' scenario (3-stage app, N devices at 5 req/s; DESIGN.md: YAFS
   and EdgeSimPy do 1,000-4,000 requests per wall second and YAFS slows down as N grows):
   simulated requests per wall second at N = 1,000 and 10,000. Cost per request must not grow with N.
3. Cross-check: SimPy and the fast path on one scenario (mean and p95 ratios, goal within 1%).
4. Fidelity: the local runtime (the request loop of `tierplan run EXAMPLE`, through its Python API,
   keeping each request's steps) against the simulator calibrated on alternate requests of the
   same run, p50 and p95 ratios (goal within 15%). Runs only when the runtime is importable;
   otherwise it prints that it was skipped and why.
5. Batching and link sharing: an overloaded cloud tier with one server per region, without
   batching, with the runtime's dynamic batching (8 requests, 2 ms) on both engines, and with
   fair link sharing on top (SimPy): p50/p95, mean batch size, cloud utilisation, simulated
   requests per second.
6. smart-city's optimal plan (requests return to the device) on both engines: wall time and
   the fast path's mean and p95 over SimPy's (same draws, so 1.00000).
Writes benchmarks/results/simulate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tierplan.planner.plan import Plan, PlanEdge, PlanPiece, SinkLatency  # noqa: E402
from tierplan.simulations.api import simulate  # noqa: E402
from tierplan.spec import DeviceSpec, FleetSpec, LinkSpec, SiteClassSpec  # noqa: E402

GOAL_REQUESTS = 10_000_000
GOAL_DEVICES = 10_000
GOAL_WALL_S = 60.0
PEER_RATE_HZ = 5.0
FIDELITY_TOLERANCE = 0.15
FIDELITY_RATE_HZ = 0.01      # one request per 100 s per source: no queueing, like one-at-a-time requests
FIDELITY_SIM_S = 200_000.0   # 2,000 requests per source
FIDELITY_WARMUP = 1          # first request after deploy: lazy initialisation, left out
FIDELITY_MIN_REQUESTS = 20   # measured requests below which a p95 means little
BATCH_BENCH_LOAD = 1.2       # cloud offered load over its one-at-a-time capacity in the batching rows
con = Console(width=140)


def _device(name: str, tier: str, usd: float) -> DeviceSpec:
    return DeviceSpec(name=name, tier=tier, peak_gflops={"fp32": 50.0}, memory_gb=8, memory_bandwidth_gbps=20,
                      power_idle_w=2, power_active_w=8, cost_per_hour_usd=usd)


def fleet(n_devices: int, n_bs: int, bs_servers: int) -> FleetSpec:
    """n_devices cameras behind n_bs base stations (each up to bs_servers replicas) and 2 cloud regions."""
    return FleetSpec(name=f"bench-{n_devices}", sites={
        "cams": SiteClassSpec(tier="edge", device=_device("cam", "edge", 0.0), count=n_devices, attach="bs", link="lte"),
        "bs": SiteClassSpec(tier="base_station", device=_device("mec", "base_station", 0.4), count=n_bs,
                            attach="cloud", link="backhaul", max_instances=bs_servers),
        "cloud": SiteClassSpec(tier="cloud", device=_device("vm", "cloud", 1.5), count=2),
    }, links={"lte": LinkSpec(uplink_mbps=20, downlink_mbps=60, rtt_ms=30, jitter_ms=4),
              "backhaul": LinkSpec(uplink_mbps=10_000, downlink_mbps=10_000, rtt_ms=10, egress_usd_per_gb=0.09)})


def plan(rate_hz: float) -> Plan:
    """A 3-stage app: piece 1 on the device, piece 2 on the base station, piece 3 in the cloud."""
    ms = {"app/p0": {"cams": 6.0, "bs": 1.5, "cloud": 1.0}, "app/p1": {"cams": 30.0, "bs": 4.0, "cloud": 2.0},
          "app/p2": {"cams": 50.0, "bs": 6.0, "cloud": 1.0}}
    pieces = [PlanPiece(id="camera", kind="source", rate_hz=rate_hz),
              *[PlanPiece(id=k, model="app", latency_ms=v) for k, v in ms.items()], PlanPiece(id="sink:out", kind="sink")]
    edges = [PlanEdge(src="camera", dst="app/p0", nbytes=150_000), PlanEdge(src="app/p0", dst="app/p1", nbytes=20_000),
             PlanEdge(src="app/p1", dst="app/p2", nbytes=8_000), PlanEdge(src="app/p2", dst="sink:out", nbytes=200)]
    return Plan(status="optimal", assignment={"app/p0": "cams", "app/p1": "bs", "app/p2": "cloud"}, pieces=pieces,
                edges=edges, sinks={"out": SinkLatency(latency_ms=80, slo_ms=150)})


def _bs_for(n_devices: int) -> int:
    return max(1, n_devices // 100)


def bench_goal(n_requests: int, n_devices: int) -> dict:
    """The fast path on n_requests over 60 simulated seconds from n_devices devices."""
    duration = 60.0
    rate = n_requests / (n_devices * duration)
    t0 = time.perf_counter()
    rep = simulate(plan(rate), fleet(n_devices, _bs_for(n_devices), 64), strategies=["optimal"],
                   duration_s=duration, seed=1, fast=True)
    wall = time.perf_counter() - t0
    r = rep.strategies["optimal"]
    return {"requests": r.requests, "devices": n_devices, "wall_s": wall, "engine_s": r.wall_s,
            "requests_per_s": r.requests / wall, "p95_ms": r.sinks["out"].p95_ms,
            "goal_wall_s": GOAL_WALL_S, "met": wall < GOAL_WALL_S and r.requests >= 0.99 * n_requests}


def bench_paths(sizes: list[int], simpy_requests: int) -> list[dict]:
    """Both paths on the peers' scenario (N devices at 5 req/s): requests per wall second."""
    rows = []
    for n in sizes:
        f = fleet(n, _bs_for(n), 8)
        for engine, fast, dur in (("simpy", False, simpy_requests / (n * PEER_RATE_HZ)), ("fast", True, 60.0)):
            rows.append(_timed(engine, fast, f, n, PEER_RATE_HZ, dur))
    return rows


def bench_scaling(sizes: list[int], simpy_requests: int, fast_requests: int) -> list[dict]:
    """Cost per request against fleet size: the same number of requests and the same load per device
    and per base station (5 req/s per device, 100 devices per base station), from 100 to 10,000
    devices; the simulated time shrinks as the fleet grows, so only the fleet size changes."""
    rows = []
    for n in sizes:
        f = fleet(n, _bs_for(n), 8)
        for engine, fast, total in (("simpy", False, simpy_requests), ("fast", True, fast_requests)):
            rows.append(_timed(engine, fast, f, n, PEER_RATE_HZ, total / (n * PEER_RATE_HZ)))
    return rows


def _timed(engine: str, fast: bool, f: FleetSpec, n: int, rate_hz: float, dur: float) -> dict:
    t0 = time.perf_counter()
    rep = simulate(plan(rate_hz), f, strategies=["optimal"], duration_s=dur, seed=2, fast=fast)
    wall = time.perf_counter() - t0
    r = rep.strategies["optimal"]
    return {"engine": engine, "devices": n, "sim_s": dur, "rate_hz": rate_hz, "requests": r.requests, "wall_s": wall,
            "requests_per_s": r.requests / wall, "p50_ms": r.sinks["out"].p50_ms}


def bench_crosscheck(duration_s: float) -> dict:
    """SimPy vs fast path on one scenario (1,000 devices, jitter, replicas): mean and p95 ratios."""
    f, p = fleet(1000, 10, 4), plan(PEER_RATE_HZ)
    out = {}
    for name, fast in (("simpy", False), ("fast", True)):
        s = simulate(p, f, strategies=["optimal"], duration_s=duration_s, seed=3, fast=fast).strategies["optimal"].sinks["out"]
        out[name] = {"mean_ms": s.mean_ms, "p95_ms": s.p95_ms}
    out["mean_ratio"] = out["fast"]["mean_ms"] / out["simpy"]["mean_ms"]
    out["p95_ratio"] = out["fast"]["p95_ms"] / out["simpy"]["p95_ms"]
    out["met"] = abs(out["mean_ratio"] - 1) <= 0.01 and abs(out["p95_ratio"] - 1) <= 0.01
    return out


def bench_batching(n_devices: int, duration_s: float) -> list[dict]:
    """Cloud offered 1.2x its one-at-a-time capacity: FIFO, batching 8:2 on both engines, batching 8:2 + fair links."""
    f = fleet(n_devices, _bs_for(n_devices), 8)
    cloud_ms = 1.0   # plan()'s app/p2 on the cloud
    rate = BATCH_BENCH_LOAD * 1000.0 / cloud_ms * f.sites["cloud"].count / n_devices
    rows = []
    for label, batching, sharing, fast in (("no batching, fifo links (SimPy)", "off", "fifo", False),
                                           ("batch 8:2, fifo links (SimPy)", "8:2", "fifo", False),
                                           ("batch 8:2, fifo links (fast path)", "8:2", "fifo", True),
                                           ("batch 8:2, fair links (SimPy)", "8:2", "fair", False)):
        t0 = time.perf_counter()
        rep = simulate(plan(rate), f, strategies=["optimal"], duration_s=duration_s, seed=4, fast=fast,
                       replicas={"cloud": 1}, batching=batching, link_sharing=sharing)
        wall = time.perf_counter() - t0
        r = rep.strategies["optimal"]
        rows.append({"mode": label, "requests": r.requests, "p50_ms": r.sinks["out"].p50_ms,
                     "p95_ms": r.sinks["out"].p95_ms, "batch_mean": r.batch_mean.get("cloud", 1.0),
                     "cloud_utilisation": r.utilisation.get("cloud", 0.0), "wall_s": wall,
                     "requests_per_s": r.requests / wall})
    return rows


def _stage_latencies(traces: list) -> dict[tuple[str, str], tuple[float, float]]:
    """(node, site) -> (p50_ms, p95_ms) of the compute steps in the traces ("node@site")."""
    steps: dict[tuple[str, str], list[float]] = {}
    for tr in traces:
        for kind, name, ms in tr.steps:
            if kind == "compute" and "@" in name:
                node, _, site = name.rpartition("@")
                steps.setdefault((node, site), []).append(ms)
    return {k: (float(np.percentile(v, 50)), float(np.percentile(v, 95))) for k, v in steps.items()}


def _local_fleet(fleet_spec: FleetSpec, edge_class: str) -> FleetSpec:
    """The fleet as `tierplan run` emulates it: one site per class and the edge class it drives
    (links as declared: the emulator draws their jitter too)."""
    sites = {n: s.model_copy(update={"count": 1}) for n, s in fleet_spec.sites.items()
             if s.tier != "edge" or n == edge_class}
    return FleetSpec(name=fleet_spec.name, sites=sites, links=dict(fleet_spec.links))


def _sim_e2e(p: Plan, fleet_spec: FleetSpec, **kw) -> tuple[float, float]:
    """p50 and p95 of the slowest sink at negligible load (the runtime sends one request at a time),
    every site one worker (as deployed locally) on one host with this machine's cores."""
    sources = [x.id for x in p.pieces if x.kind == "source"]
    rep = simulate(p, fleet_spec, strategies=["optimal"], duration_s=FIDELITY_SIM_S, seed=0,
                   rates={s: FIDELITY_RATE_HZ for s in sources}, replicas={s: 1 for s in fleet_spec.sites},
                   colocate=os.cpu_count() or 1, **kw)
    sinks = rep.strategies["optimal"].sinks.values()
    return (max(s.p50_ms for s in sinks if s.p50_ms is not None), max(s.p95_ms for s in sinks if s.p95_ms is not None))


def bench_fidelity(duration_s: float) -> dict:
    """The local runtime vs the simulator on each example; skipped (with the reason) without a runtime.

    Requests go through the runtime's Python API exactly as `tierplan run` sends them (one after
    another, emulated links, every site on this machine), keeping each request's steps. The
    requests are split alternately: the even ones calibrate the simulator (a ServiceProfile: each
    compute step's measured times and the within-request correlation fitted to the spread of the
    requests' total compute time), the odd ones are the measurement it is compared with. The
    simulator replays the run's conditions: one site per class, the edge class the runtime drives,
    one worker per site on one host with this machine's cores, negligible load, sinks delivered
    where the runtime delivers them.
    Four rows per example: the plan's predicted piece times (fleet devices, not this machine),
    each step's measured p50/p95 as an independent log-normal (last session's method), the steps'
    measured times drawn independently (empirical marginals alone), and the calibrated profile
    (plus the fitted within-request correlation and the overhead outside the steps: the goal).
    """
    try:
        import tierplan.run  # noqa: F401
        import tierplan.runtime.deploy  # noqa: F401
    except Exception as e:  # any import failure means no runtime to compare against
        return {"skipped": f"runtime not importable ({e.__class__.__name__}: {e})"}
    examples = [d for d in sorted((ROOT / "examples").iterdir())
                if (d / "app.yaml").exists() and (d / "fleet.yaml").exists()] if (ROOT / "examples").exists() else []
    if not examples:
        return {"skipped": "no examples/<name>/ with app.yaml and fleet.yaml"}
    from tierplan.simulations.calibration import OVERHEAD_KEY, ServiceProfile, profile_from_traces
    from runtime_traces import collect_runtime_traces   # benchmarks/runtime_traces.py (it deploys: not in simulations/)
    from tierplan.loader import load_app, load_fleet
    rows = []
    for ex in examples:
        load = os.getloadavg()[0]
        try:
            traces, p = collect_runtime_traces(ex.name, duration_s)
        except Exception as e:  # a runtime failure is reported in the table, not a crash of the benchmark
            rows.append({"example": ex.name, "error": f"{e.__class__.__name__}: {e}".splitlines()[0]})
            continue
        traces = traces[FIDELITY_WARMUP:]
        calib, valid = traces[0::2], traces[1::2]
        if len(valid) < FIDELITY_MIN_REQUESTS:
            rows.append({"example": ex.name, "error": f"only {len(traces)} requests in {duration_s:g} s"})
            continue
        lat = np.array([t.latency_ms for t in valid])
        m50, m95 = float(np.percentile(lat, 50)), float(np.percentile(lat, 95))
        prof = profile_from_traces(calib, source=f"{ex.name} (even requests)")
        fleet_spec = load_fleet(ex / "fleet.yaml")
        edge = next(iter(p.per_class), None) or next(n for n, s in fleet_spec.sites.items() if s.tier == "edge")
        local = _local_fleet(fleet_spec, edge)
        app = load_app(ex / "app.yaml")  # the runtime delivers each sink where the app says, as the simulator does
        row = {"example": ex.name, "requests_calibration": len(calib), "requests_measured": len(valid),
               "load_1min": load, "measured_p50_ms": m50, "measured_p95_ms": m95,
               "correlation_fitted": prof.correlation,
               "correlation_pairwise_mean": float(np.mean(list(prof.pairs.values()))) if prof.pairs else 0.0}
        steps_only = ServiceProfile({k: v for k, v in prof.samples_ms.items() if k != OVERHEAD_KEY}, 0.0)
        variants = (("plan", {}), ("independent", {"latency_ms": _stage_latencies(calib)}),
                    ("empirical", {"profile": steps_only}), ("profile", {"profile": prof}))
        for tag, kw in variants:
            s50, s95 = _sim_e2e(p, local, app=app, **kw)
            row[f"sim_{tag}_p50_ms"], row[f"sim_{tag}_p95_ms"] = s50, s95
            row[f"{tag}_p50_ratio"], row[f"{tag}_p95_ratio"] = s50 / m50, s95 / m95
            row[f"{tag}_met"] = abs(s50 / m50 - 1) <= FIDELITY_TOLERANCE and abs(s95 / m95 - 1) <= FIDELITY_TOLERANCE
        rows.append(row)
    return {"examples": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (1 M requests, 2,000 devices)")
    ap.add_argument("--fidelity-duration", type=float, default=60.0,
                    help="seconds of requests per example through the local runtime")
    ap.add_argument("--only-fidelity", action="store_true", help="only the fidelity part (keeps the other results)")
    ap.add_argument("--only-batching", action="store_true", help="only the batching part (keeps the other results)")
    ap.add_argument("--only-examples", action="store_true",
                    help="only the example-on-both-engines part (keeps the other results)")
    args = ap.parse_args()
    out = ROOT / "benchmarks" / "results"
    only = args.only_fidelity or args.only_batching or args.only_examples
    if only and (out / "simulate.json").exists():
        results = json.loads((out / "simulate.json").read_text())
    else:
        results = {"quick": args.quick}
    if not only:
        _speed(args, results)
    if args.only_batching or not only:
        _batching(args, results)
    if args.only_examples or not only:
        _examples(args, results)
    if args.only_fidelity or not only:
        _fidelity(args, results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulate.json").write_text(json.dumps(results, indent=2))
    con.print(f"wrote {out / 'simulate.json'}")


def _speed(args, results: dict) -> None:
    """Parts 1-3: the goal run, both paths' speed and scaling, the cross-check."""
    n_goal, n_dev = (1_000_000, 2_000) if args.quick else (GOAL_REQUESTS, GOAL_DEVICES)
    sizes = [1_000, 2_000] if args.quick else [1_000, 10_000]

    con.print(f"[bold]fast-path goal[/bold]: {n_goal:,} requests, {n_dev:,} devices, 60 simulated s")
    g = results["goal"] = bench_goal(n_goal, n_dev)
    t = Table(title=f"Fast path: {n_goal:,} requests across {n_dev:,} devices (goal < {GOAL_WALL_S:.0f} s)")
    for h in ("requests", "devices", "wall s", "engine s", "simulated req/s", "p95 ms", "goal met"):
        t.add_column(h, justify="right")
    t.add_row(f"{g['requests']:,}", f"{g['devices']:,}", f"{g['wall_s']:.1f}", f"{g['engine_s']:.1f}",
              f"{g['requests_per_s']:,.0f}", f"{g['p95_ms']:.1f}", "yes" if g["met"] else "NO")
    con.print(t)

    rows = results["paths"] = bench_paths(sizes, 20_000 if args.quick else 40_000)
    t = Table(title=f"Both paths, 3-stage app, N devices at {PEER_RATE_HZ:g} req/s (peers: 1,000-4,000 req/s)")
    for h in ("engine", "devices", "simulated s", "requests", "wall s", "simulated req/s", "p50 ms"):
        t.add_column(h, justify="right")
    for r in rows:
        t.add_row(r["engine"], f"{r['devices']:,}", f"{r['sim_s']:.2f}", f"{r['requests']:,}", f"{r['wall_s']:.2f}",
                  f"{r['requests_per_s']:,.0f}", f"{r['p50_ms']:.1f}")
    con.print(t)
    rows = results["scaling"] = bench_scaling([100, 1_000] if args.quick else [100, 1_000, 10_000],
                                              20_000 if args.quick else 40_000, 500_000 if args.quick else 2_000_000)
    t = Table(title="Cost per request against fleet size (same requests, same load per device and base station)")
    for h in ("engine", "devices", "simulated s", "requests", "wall s", "simulated req/s", "p50 ms"):
        t.add_column(h, justify="right")
    for r in rows:
        t.add_row(r["engine"], f"{r['devices']:,}", f"{r['sim_s']:.1f}", f"{r['requests']:,}", f"{r['wall_s']:.2f}",
                  f"{r['requests_per_s']:,.0f}", f"{r['p50_ms']:.1f}")
    con.print(t)
    for engine in ("simpy", "fast"):
        per = [r["requests_per_s"] for r in rows if r["engine"] == engine]
        results.setdefault("per_request_cost_growth", {})[engine] = per[0] / per[-1]
    con.print("wall time per request, largest fleet / smallest: "
              + ", ".join(f"{k} x{v:.2f}" for k, v in results["per_request_cost_growth"].items()))

    c = results["crosscheck"] = bench_crosscheck(10.0 if args.quick else 30.0)
    t = Table(title="SimPy vs fast path, same scenario (goal: within 1%)")
    for h in ("", "SimPy", "fast", "fast / SimPy"):
        t.add_column(h, justify="right")
    t.add_row("mean ms", f"{c['simpy']['mean_ms']:.3f}", f"{c['fast']['mean_ms']:.3f}", f"{c['mean_ratio']:.5f}")
    t.add_row("p95 ms", f"{c['simpy']['p95_ms']:.3f}", f"{c['fast']['p95_ms']:.3f}", f"{c['p95_ratio']:.5f}")
    con.print(t)



def _batching(args, results: dict) -> None:
    """Part 5: dynamic batching (both engines) and fair link sharing (SimPy) on an overloaded cloud."""
    rows = results["batching"] = bench_batching(1_000, 5.0 if args.quick else 10.0)
    t = Table(title=f"Cloud at {BATCH_BENCH_LOAD:g}x its one-at-a-time capacity, 1,000 devices")
    for h in ("mode", "requests", "p50 ms", "p95 ms", "mean batch", "cloud busy", "wall s", "simulated req/s"):
        t.add_column(h, justify="right")
    for r in rows:
        t.add_row(r["mode"], f"{r['requests']:,}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['batch_mean']:.2f}",
                  f"{100 * r['cloud_utilisation']:.0f}%", f"{r['wall_s']:.1f}", f"{r['requests_per_s']:,.0f}")
    con.print(t)


def bench_example_engines(name: str, duration_s: float) -> dict:
    """An example's optimal plan on both engines: smart-city's requests come back to the device
    (a cycle the fast path scans in arrival order); the same draws give the same figures."""
    from tierplan.planner.api import plan_app
    from tierplan.loader import load_app, load_fleet
    ex = ROOT / "examples" / name
    fleet_spec = load_fleet(ex / "fleet.yaml")
    app = load_app(ex / "app.yaml")
    p = plan_app(app, fleet_spec)
    out = {"example": name, "duration_s": duration_s}
    for engine, fast in (("simpy", False), ("fast", True)):
        t0 = time.perf_counter()
        r = simulate(p, fleet_spec, strategies=["optimal"], duration_s=duration_s, seed=1, fast=fast,
                     app=app).strategies["optimal"]
        wall = time.perf_counter() - t0
        sink = max(r.sinks.values(), key=lambda x: x.p95_ms or 0.0)
        out[engine] = {"requests": r.requests, "wall_s": wall, "requests_per_s": r.requests / wall,
                       "mean_ms": sink.mean_ms, "p95_ms": sink.p95_ms, "engine": r.engine}
    out["speedup"] = out["simpy"]["wall_s"] / out["fast"]["wall_s"]
    out["mean_ratio"] = out["fast"]["mean_ms"] / out["simpy"]["mean_ms"]
    out["p95_ratio"] = out["fast"]["p95_ms"] / out["simpy"]["p95_ms"]
    return out


def _examples(args, results: dict) -> None:
    """Part 6: an example app with requests that come back to the device, on both engines."""
    e = results["example_engines"] = bench_example_engines("smart-city", 1.0 if args.quick else 2.0)
    t = Table(title=f"smart-city, optimal plan, {e['duration_s']:g} simulated s (requests return to the device)")
    for h in ("engine", "requests", "wall s", "simulated req/s", "mean ms", "p95 ms"):
        t.add_column(h, justify="right")
    for k in ("simpy", "fast"):
        r = e[k]
        t.add_row(k, f"{r['requests']:,}", f"{r['wall_s']:.2f}", f"{r['requests_per_s']:,.0f}", f"{r['mean_ms']:.3f}",
                  f"{r['p95_ms']:.3f}")
    con.print(t)
    con.print(f"fast path x{e['speedup']:.0f} faster; fast / SimPy mean {e['mean_ratio']:.5f}, p95 {e['p95_ratio']:.5f}")


def _fidelity(args, results: dict) -> None:
    """Part 4: the simulator against the local runtime."""
    f = results["fidelity"] = bench_fidelity(args.fidelity_duration)
    if "skipped" in f:
        con.print(f"[yellow]fidelity skipped[/yellow]: {f['skipped']}")
    else:
        t = Table(title=f"Fidelity: simulator vs the local runtime (`tierplan run`'s request loop; goal: within "
                        f"{FIDELITY_TOLERANCE:.0%})")
        for h in ("example", "piece times", "run p50", "sim p50", "ratio", "run p95", "sim p95", "ratio", "met"):
            t.add_column(h, justify="right")
        labels = (("plan", "plan (fleet devices)"), ("independent", "per-step log-normal, independent"),
                  ("empirical", "measured step times, independent"),
                  ("profile", "+ correlation + overhead (goal)"))
        for r in f["examples"]:
            if "error" in r:
                t.add_row(r["example"], "error: " + r["error"], "", "", "", "", "", "", "NO")
                continue
            for tag, label in labels:
                t.add_row(r["example"], label, f"{r['measured_p50_ms']:.1f}", f"{r[f'sim_{tag}_p50_ms']:.1f}",
                          f"{r[f'{tag}_p50_ratio']:.2f}", f"{r['measured_p95_ms']:.1f}", f"{r[f'sim_{tag}_p95_ms']:.1f}",
                          f"{r[f'{tag}_p95_ratio']:.2f}", "yes" if r[f"{tag}_met"] else "NO")
        con.print(t)
        for r in f["examples"]:
            if "error" not in r:
                con.print(f"{r['example']}: {r['requests_calibration']} requests calibrate, {r['requests_measured']} "
                          f"measured; correlation fitted {r['correlation_fitted']:.3f} (mean pairwise "
                          f"{r['correlation_pairwise_mean']:.3f}); load average {r['load_1min']:.2f} at the start")


if __name__ == "__main__":
    main()
