"""Simulator benchmark: the peers' scenario on both engines (speed, peak RSS), 100 M requests, sweeps, fidelity.

    python benchmarks/simulate.py            # everything
    python benchmarks/simulate.py --quick    # smaller runs (CI smoke)
    python benchmarks/simulate.py --only-speed

The peers' scenario (DESIGN.md, "Fog simulators, same scenario"): a 3-stage app, every device at
5 requests/s; a detector on the device, a classifier on its base station, an aggregator in the
cloud; 100 devices per base station; payloads and links as stated below (PEER_*), the same piece
times on every engine (the plan's means times a log-normal with cv 0.1, drawn once per request
and replayed by both engines).

1. Speed and peak RSS: requests per wall second of the fast path (FIFO links) and of the detailed
   engine (fair, processor-sharing links, also vectorised) at 1,000, 10,000 and 100,000 devices,
   and SimPy (fair links) at 1,000 and 10,000 devices on fewer requests. Each run is its own
   process, so its peak RSS (ru_maxrss) is its own. Cost per request must not grow with N.
   The peers were not run here (not installable in this environment): DESIGN.md's figures for
   YAFS and EdgeSimPy on this scenario (1,000-4,000 requests/s; about 1.2k and 3k at 10,000
   devices) are quoted for the ratio, from another session and CPU.
2. Bounded memory at scale: 100 M requests from 100,000 devices (200 simulated seconds) through
   the streaming fast path: wall time and peak RSS (goal < 1.5 GB).
3. Quantile sketch: p50/p95/p99 of a 3 M-request run from the sketch against the exact run (goal
   p95 within 0.5%).
4. Cross-check: SimPy and the fast path on the same draws, FIFO and fair links (mean and p95 ratios).
5. Sweep speed-up: a sweep (strategies x seeds) serially against a 3-node local Ray cluster.
6. Batching and link sharing on an overloaded cloud; 7. smart-city on both engines;
8. fidelity against the local runtime (as before).
Writes benchmarks/results/simulate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
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

# ---- the peers' scenario, stated ----
PEER_RATE_HZ = 5.0                 # requests per second per device
PEER_DEVICES_PER_BS = 100
PEER_MS = {"detector": 30.0, "classifier": 4.0, "aggregator": 1.0}   # on device, base station, cloud (ms)
PEER_BYTES = {"frame": 150_000, "detections": 20_000, "labels": 2_000, "result": 200}   # frame stays on the device
PEER_RADIO = LinkSpec(uplink_mbps=20, downlink_mbps=60, rtt_ms=30, jitter_ms=4)        # device <-> base station
PEER_BACKHAUL = LinkSpec(uplink_mbps=1000, downlink_mbps=1000, rtt_ms=10, egress_usd_per_gb=0.09)  # bs <-> cloud
PEER_BS_SERVERS = 4                # classifier servers per base station at most (3 needed at 5 req/s x 100 x 4 ms)
PEER_CLOUD_SITES = 2
CONTENDED_RADIO_MBPS = 2.0         # the fair-sharing rows' radio: uploads overlap, so sharing changes latency
PEERS_REQ_PER_S = {"YAFS": 1_200, "EdgeSimPy": 3_000}   # DESIGN.md, 10,000 devices, another session's CPU

GOAL_REQUESTS = 100_000_000
GOAL_DEVICES = 100_000
GOAL_RSS_GB = 1.5
SKETCH_P95_TOLERANCE = 0.005
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


def fleet(n_devices: int, n_bs: int | None = None, bs_servers: int = PEER_BS_SERVERS,
          radio_mbps: float | None = None) -> FleetSpec:
    """n_devices cameras, 100 per base station (each up to bs_servers classifier servers), 2 cloud regions;
    `radio_mbps` replaces the radio's rates (a contended radio for the fair-sharing rows)."""
    n_bs = n_bs if n_bs is not None else max(1, n_devices // PEER_DEVICES_PER_BS)
    radio = PEER_RADIO if radio_mbps is None else PEER_RADIO.model_copy(
        update={"uplink_mbps": radio_mbps, "downlink_mbps": 3 * radio_mbps})
    return FleetSpec(name=f"bench-{n_devices}", sites={
        "cams": SiteClassSpec(tier="edge", device=_device("cam", "edge", 0.0), count=n_devices, attach="bs", link="radio"),
        "bs": SiteClassSpec(tier="base_station", device=_device("mec", "base_station", 0.4), count=n_bs,
                            attach="cloud", link="backhaul", max_instances=bs_servers),
        "cloud": SiteClassSpec(tier="cloud", device=_device("vm", "cloud", 1.5), count=PEER_CLOUD_SITES),
    }, links={"radio": radio, "backhaul": PEER_BACKHAUL})


def plan(rate_hz: float = PEER_RATE_HZ, fleet_spec: FleetSpec | None = None) -> Plan:
    """The 3-stage app: detector on the device, classifier on the base station, aggregator in the cloud;
    the result goes back to the device. Every site class has the same time for a piece (the fleet's
    devices differ only in price), so the engines see the same stage times."""
    ms = {k: {"cams": v, "bs": v, "cloud": v} for k, v in PEER_MS.items()}
    pieces = [PlanPiece(id="camera", kind="source", rate_hz=rate_hz),
              *[PlanPiece(id=f"app/{k}", model="app", latency_ms=v) for k, v in ms.items()],
              PlanPiece(id="sink:out", kind="sink")]
    b = PEER_BYTES
    edges = [PlanEdge(src="camera", dst="app/detector", nbytes=b["frame"]),
             PlanEdge(src="app/detector", dst="app/classifier", nbytes=b["detections"]),
             PlanEdge(src="app/classifier", dst="app/aggregator", nbytes=b["labels"]),
             PlanEdge(src="app/aggregator", dst="sink:out", nbytes=b["result"])]
    p = Plan(status="optimal", assignment={"app/detector": "cams", "app/classifier": "bs", "app/aggregator": "cloud"},
             pieces=pieces, edges=edges, sinks={"out": SinkLatency(latency_ms=90, slo_ms=150)})
    if fleet_spec is not None:
        p = p.model_copy(update={"fleet": fleet_spec.model_dump(mode="json", by_alias=True, exclude_none=True)})
    return p


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(engine: str, devices: int, duration_s: float, extra: dict | None = None) -> dict:
    """One run of the peers' scenario in this process: wall time, requests, p95, peak RSS."""
    extra = dict(extra or {})
    radio = extra.pop("radio_mbps", None)
    kw = dict(fast=engine != "simpy", link_sharing="fifo" if engine == "fast" else "fair", **extra)
    t0, c0 = time.perf_counter(), time.process_time()
    rep = simulate(plan(), fleet(devices, radio_mbps=radio), strategies=["optimal"], duration_s=duration_s, seed=2, **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    r = rep.strategies["optimal"]
    s = r.sinks["out"]
    label = {"fast": "fast (FIFO links)", "fair": "fast (fair links)", "simpy": "SimPy (fair links)"}[engine]
    return {"engine": label + (f", radio {radio:g} Mbit/s" if radio is not None else ""),
            "devices": devices, "sim_s": duration_s, "requests": r.requests, "wall_s": wall, "cpu_s": cpu,
            "requests_per_s": r.requests / wall, "requests_per_cpu_s": r.requests / cpu, "p50_ms": s.p50_ms, "p95_ms": s.p95_ms, "p99_ms": s.p99_ms,
            "exact_quantiles": s.exact_quantiles, "peak_rss_mb": _peak_rss_mb(), "ran_on": r.engine}


def _in_child(engine: str, devices: int, duration_s: float, extra: dict | None = None) -> dict:
    """run_one in a fresh process (its peak RSS is its own)."""
    cmd = [sys.executable, __file__, "--child", json.dumps([engine, devices, duration_s, extra or {}])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_speed(quick: bool) -> list[dict]:
    """Part 1: both engines at 1k/10k/100k devices (SimPy at 1k/10k on fewer requests)."""
    rows = []
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    for n in sizes:
        rate = n * PEER_RATE_HZ
        target = (300_000 if quick else 3_000_000) if n <= 10_000 else (1_000_000 if quick else 10_000_000)
        for engine in ("fast", "fair"):
            rows.append(_in_child(engine, n, min(60.0, target / rate)))
        if n <= 10_000:
            rows.append(_in_child("simpy", n, (20_000 if quick else 60_000) / rate))
    # fair sharing where it matters: a 2 Mbit/s radio (80 ms per upload at 5 req/s: transfers overlap)
    for n in sizes[:2]:
        rate = n * PEER_RATE_HZ
        rows.append(_in_child("fair", n, (300_000 if quick else 1_000_000) / rate, {"radio_mbps": CONTENDED_RADIO_MBPS}))
        rows.append(_in_child("simpy", n, (20_000 if quick else 40_000) / rate, {"radio_mbps": CONTENDED_RADIO_MBPS}))
    return rows


def run_plan_window(plan_path: str, duration_s: float, window: int) -> dict:
    """The optimal strategy of a saved plan on the fast path with `window` requests at a time (its own process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    r = simulate(Plan.load(plan_path), strategies=["optimal"], duration_s=duration_s, seed=1, fast=True,
                 window_requests=window).strategies["optimal"]
    return {"duration_s": duration_s, "window_requests": window, "requests": r.requests,
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "peak_rss_mb": _peak_rss_mb(),
            "p95_ms": {k: s.p95_ms for k, s in r.sinks.items()}}


def bench_memory_example(name: str, quick: bool) -> dict:
    """smart-city's optimal plan (30 stages, requests come back to the device: the cycle scan) held
    in windows of 50,000 requests at 1x and 4x the run length, and at once: peak RSS of each."""
    import tempfile

    from tierplan.loader import load_app, load_fleet
    from tierplan.planner.api import plan_app
    ex = ROOT / "examples" / name
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "plan.json")
        plan_app(load_app(ex / "app.yaml"), load_fleet(ex / "fleet.yaml")).save(path)
        short = 1.0 if quick else 5.0
        rows = []
        for dur, window in ((short, 50_000), (4 * short, 50_000), (4 * short, 10 ** 9)):
            cmd = [sys.executable, __file__, "--child-plan", json.dumps([path, dur, window])]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"example": name, "rows": rows}


def bench_goal(quick: bool) -> dict:
    """Part 2: 100 M requests over 100,000 devices through the streaming fast path."""
    n_dev = 10_000 if quick else GOAL_DEVICES
    n_req = 5_000_000 if quick else GOAL_REQUESTS
    row = _in_child("fast", n_dev, n_req / (n_dev * PEER_RATE_HZ))
    row["goal_rss_gb"] = GOAL_RSS_GB
    row["met"] = row["peak_rss_mb"] / 1024.0 < GOAL_RSS_GB and row["requests"] >= 0.99 * n_req
    return row


def bench_sketch(quick: bool) -> dict:
    """Part 3: the sketch's quantiles against the exact ones on the same run (held in memory)."""
    n = 2_000 if quick else 10_000
    dur = (300_000 if quick else 3_000_000) / (n * PEER_RATE_HZ)
    out = {}
    for tag, limit in (("exact", 10 ** 9), ("sketch", 0)):
        r = simulate(plan(), fleet(n), strategies=["optimal"], duration_s=dur, seed=5, fast=True,
                     exact_quantiles=limit).strategies["optimal"]
        s = r.sinks["out"]
        out[tag] = {"p50_ms": s.p50_ms, "p95_ms": s.p95_ms, "p99_ms": s.p99_ms, "exact": s.exact_quantiles}
        out["requests"] = r.requests
    out["p95_rel_error"] = abs(out["sketch"]["p95_ms"] / out["exact"]["p95_ms"] - 1)
    out["met"] = out["p95_rel_error"] <= SKETCH_P95_TOLERANCE and not out["sketch"]["exact"]
    return out


def bench_crosscheck(duration_s: float) -> dict:
    """Part 4: SimPy vs fast path on one scenario (1,000 devices, jitter, replicas), FIFO and fair links."""
    f, p = fleet(1000), plan()
    out: dict = {}
    for sharing in ("fifo", "fair"):
        row: dict = {}
        for name, fast in (("simpy", False), ("fast", True)):
            s = simulate(p, f, strategies=["optimal"], duration_s=duration_s, seed=3, fast=fast,
                         link_sharing=sharing).strategies["optimal"].sinks["out"]
            row[name] = {"mean_ms": s.mean_ms, "p95_ms": s.p95_ms}
        row["mean_ratio"] = row["fast"]["mean_ms"] / row["simpy"]["mean_ms"]
        row["p95_ratio"] = row["fast"]["p95_ms"] / row["simpy"]["p95_ms"]
        row["met"] = abs(row["mean_ratio"] - 1) <= 0.01 and abs(row["p95_ratio"] - 1) <= 0.01
        out[sharing] = row
    return out


def bench_sweep(quick: bool) -> dict:
    """Part 5: one sweep serially and on a 3-node local Ray cluster (3 one-CPU nodes on this machine)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    from tierplan.simulations.config import Scenario
    from tierplan.simulations.sweep import run_sweep
    f = fleet(1_000 if quick else 5_000)
    p = plan(fleet_spec=f)
    grid = {"seed": tuple(range(3 if quick else 6)), "slo": (100.0, 150.0)}
    base = Scenario(duration_s=4.0 if quick else 20.0, engine="fast")   # 500k requests a cell (not quick)
    serial = run_sweep(p, base, ["optimal", "all-cloud"], grid, ray_address=None)
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False,
                                                                 node_ip_address="127.0.0.1"))
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        spread = run_sweep(p, base, ["optimal", "all-cloud"], grid, ray_address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    same = [c.model_dump(exclude={"wall_s", "node"}) for c in serial.cells] == \
        [c.model_dump(exclude={"wall_s", "node"}) for c in spread.cells]
    return {"cells": len(serial.cells), "serial_s": serial.wall_s, "cluster_s": spread.wall_s,
            "speedup": serial.wall_s / spread.wall_s, "runner": spread.runner, "same_results": same,
            "nodes_used": len({c.node for c in spread.cells}), "cpu_count": os.cpu_count(),
            "load_1min": os.getloadavg()[0]}


def bench_batching(n_devices: int, duration_s: float) -> list[dict]:
    """Cloud offered 1.2x its one-at-a-time capacity: FIFO, batching 8:2 on both engines, batching 8:2 + fair links."""
    f = fleet(n_devices, bs_servers=8)
    cloud_ms = PEER_MS["aggregator"]   # plan()'s piece on the cloud
    rate = BATCH_BENCH_LOAD * 1000.0 / cloud_ms * f.sites["cloud"].count / n_devices
    rows = []
    for label, batching, sharing, fast in (("no batching, fifo links (SimPy)", "off", "fifo", False),
                                           ("batch 8:2, fifo links (SimPy)", "8:2", "fifo", False),
                                           ("batch 8:2, fifo links (fast path)", "8:2", "fifo", True),
                                           ("batch 8:2, fair links (SimPy)", "8:2", "fair", False),
                                           ("batch 8:2, fair links (fast path)", "8:2", "fair", True)):
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
    from tierplan.loader import load_fleet
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
        row = {"example": ex.name, "requests_calibration": len(calib), "requests_measured": len(valid),
               "load_1min": load, "measured_p50_ms": m50, "measured_p95_ms": m95,
               "correlation_fitted": prof.correlation,
               "correlation_pairwise_mean": float(np.mean(list(prof.pairs.values()))) if prof.pairs else 0.0}
        steps_only = ServiceProfile({k: v for k, v in prof.samples_ms.items() if k != OVERHEAD_KEY}, 0.0)
        variants = (("plan", {}), ("independent", {"latency_ms": _stage_latencies(calib)}),
                    ("empirical", {"profile": steps_only}), ("profile", {"profile": prof}))
        for tag, kw in variants:
            s50, s95 = _sim_e2e(p, local, **kw)   # the plan carries the app: sinks delivered where it says
            row[f"sim_{tag}_p50_ms"], row[f"sim_{tag}_p95_ms"] = s50, s95
            row[f"{tag}_p50_ratio"], row[f"{tag}_p95_ratio"] = s50 / m50, s95 / m95
            row[f"{tag}_met"] = abs(s50 / m50 - 1) <= FIDELITY_TOLERANCE and abs(s95 / m95 - 1) <= FIDELITY_TOLERANCE
        rows.append(row)
    return {"examples": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (CI smoke)")
    ap.add_argument("--fidelity-duration", type=float, default=60.0,
                    help="seconds of requests per example through the local runtime")
    ap.add_argument("--only-speed", action="store_true",
                    help="only parts 1-5: speed, 100 M requests, sketch, cross-check, sweep (keeps the other results)")
    ap.add_argument("--only-fidelity", action="store_true", help="only the fidelity part (keeps the other results)")
    ap.add_argument("--only-batching", action="store_true", help="only the batching part (keeps the other results)")
    ap.add_argument("--only-examples", action="store_true",
                    help="only the example-on-both-engines part (keeps the other results)")
    ap.add_argument("--only-memory", action="store_true",
                    help="only smart-city's peak RSS in windows and at once (keeps the other results)")
    ap.add_argument("--child", help=argparse.SUPPRESS)   # run_one's arguments as JSON, in a fresh process
    ap.add_argument("--child-plan", help=argparse.SUPPRESS)   # run_plan_window's arguments as JSON
    args = ap.parse_args()
    if args.child:
        engine, devices, duration_s, extra = json.loads(args.child)
        print(json.dumps(run_one(engine, devices, duration_s, extra)))
        return
    if args.child_plan:
        print(json.dumps(run_plan_window(*json.loads(args.child_plan))))
        return
    out = ROOT / "benchmarks" / "results"
    only = args.only_fidelity or args.only_batching or args.only_examples or args.only_speed or args.only_memory
    if only and (out / "simulate.json").exists():
        results = json.loads((out / "simulate.json").read_text())
    else:
        results = {"quick": args.quick}
    if args.only_speed or not only:
        _speed(args, results)
    if args.only_memory or not only:
        _memory(args, results)
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
    """Parts 1-5: speed and peak RSS of both engines, 100 M requests, the sketch, the cross-check, the sweep."""
    results["quick"] = args.quick
    for old in ("paths", "scaling"):   # an earlier version's rows (another scenario)
        results.pop(old, None)
    results["load_1min_start"] = os.getloadavg()[0]
    rows = results["speed"] = bench_speed(args.quick)
    t = Table(title=f"Peers' scenario: 3-stage app, devices at {PEER_RATE_HZ:g} req/s, {PEER_DEVICES_PER_BS} per base "
                    f"station ({os.cpu_count()} cores, load average {results['load_1min_start']:.1f} at the start)")
    for h in ("engine", "devices", "simulated s", "requests", "wall s", "req / wall s", "req / CPU s", "peak RSS MB",
              "p95 ms", "x YAFS", "x EdgeSimPy"):
        t.add_column(h, justify="right")
    for r in rows:
        t.add_row(r["engine"], f"{r['devices']:,}", f"{r['sim_s']:.2f}", f"{r['requests']:,}", f"{r['wall_s']:.1f}",
                  f"{r['requests_per_s']:,.0f}", f"{r['requests_per_cpu_s']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
                  f"{r['p95_ms']:.1f}",
                  f"{r['requests_per_s'] / PEERS_REQ_PER_S['YAFS']:.0f}",
                  f"{r['requests_per_s'] / PEERS_REQ_PER_S['EdgeSimPy']:.0f}")
    con.print(t)
    con.print("x YAFS / x EdgeSimPy: against DESIGN.md's figures for the peers on this scenario at 10,000 devices "
              f"({PEERS_REQ_PER_S['YAFS']:,} and {PEERS_REQ_PER_S['EdgeSimPy']:,} req/s, another session's CPU; "
              "the peers are not installable here)")
    growth = {}
    for engine in dict.fromkeys(r["engine"] for r in rows):
        per = [r["requests_per_cpu_s"] for r in rows if r["engine"] == engine]
        growth[engine] = per[0] / per[-1] if len(per) > 1 else 1.0
    results["per_request_cost_growth"] = growth
    con.print("CPU time per request, largest fleet / smallest: " + ", ".join(f"{k} x{v:.2f}" for k, v in growth.items())
              + " (CPU time: the machine is shared, wall time is noisy)")

    g = results["goal"] = bench_goal(args.quick)
    t = Table(title=f"Streaming fast path at scale (goal: peak RSS < {GOAL_RSS_GB:g} GB)")
    for h in ("requests", "devices", "simulated s", "wall s", "CPU s", "req / wall s", "peak RSS MB", "p95 ms",
              "goal met"):
        t.add_column(h, justify="right")
    t.add_row(f"{g['requests']:,}", f"{g['devices']:,}", f"{g['sim_s']:.0f}", f"{g['wall_s']:.0f}", f"{g['cpu_s']:.0f}",
              f"{g['requests_per_s']:,.0f}", f"{g['peak_rss_mb']:,.0f}", f"{g['p95_ms']:.2f}", "yes" if g["met"] else "NO")
    con.print(t)

    k = results["sketch"] = bench_sketch(args.quick)
    t = Table(title=f"Quantiles from the sketch vs exact, same {k['requests']:,} requests (goal: p95 within "
                    f"{SKETCH_P95_TOLERANCE:.1%})")
    for h in ("", "exact", "sketch", "sketch / exact"):
        t.add_column(h, justify="right")
    for m in ("p50_ms", "p95_ms", "p99_ms"):
        t.add_row(m, f"{k['exact'][m]:.3f}", f"{k['sketch'][m]:.3f}", f"{k['sketch'][m] / k['exact'][m]:.5f}")
    con.print(t)

    c = results["crosscheck"] = bench_crosscheck(10.0 if args.quick else 30.0)
    t = Table(title="SimPy vs fast path, same draws (goal: within 1%)")
    for h in ("links", "SimPy mean", "fast mean", "ratio", "SimPy p95", "fast p95", "ratio"):
        t.add_column(h, justify="right")
    for sharing, r in c.items():
        t.add_row(sharing, f"{r['simpy']['mean_ms']:.3f}", f"{r['fast']['mean_ms']:.3f}", f"{r['mean_ratio']:.6f}",
                  f"{r['simpy']['p95_ms']:.3f}", f"{r['fast']['p95_ms']:.3f}", f"{r['p95_ratio']:.6f}")
    con.print(t)

    w = results["sweep"] = bench_sweep(args.quick)
    con.print(f"sweep of {w['cells']} cells: serial {w['serial_s']:.1f} s, 3-node local Ray cluster {w['cluster_s']:.1f} s "
              f"(x{w['speedup']:.2f}; {w['nodes_used']} nodes used, {w['cpu_count']} cores on this machine, load average "
              f"{w['load_1min']:.1f}); same results: {w['same_results']}")


def _memory(args, results: dict) -> None:
    """smart-city's peak RSS: windows of 50,000 requests at two run lengths, and the run held at once."""
    m = results["memory_example"] = bench_memory_example("smart-city", args.quick)
    t = Table(title="smart-city, optimal plan, fast path (cycle scan): peak RSS by window")
    for h in ("simulated s", "window (requests)", "requests", "wall s", "CPU s", "peak RSS MB", "p95 ms"):
        t.add_column(h, justify="right")
    for r in m["rows"]:
        t.add_row(f"{r['duration_s']:g}", "all" if r["window_requests"] >= 10 ** 9 else f"{r['window_requests']:,}",
                  f"{r['requests']:,}", f"{r['wall_s']:.0f}", f"{r['cpu_s']:.0f}", f"{r['peak_rss_mb']:,.0f}",
                  ", ".join(f"{v:.2f}" for v in r["p95_ms"].values()))
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
        r = simulate(p, strategies=["optimal"], duration_s=duration_s, seed=1, fast=fast).strategies["optimal"]
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
