"""Simulator against `tierplan run`, every device class at once, as a user checks it (#17 items 2 and 4).

    python benchmarks/fidelity.py [--examples smart-city,read-text] [--batched 8:10] [--duration 180]
                                  [--sim-duration 3600] [--keep DIR [--reuse]]

For each example: `tierplan run EXAMPLE --duration D --json --plan-out DIR/plan.json > DIR/run.json`
(every class at its sources' rates, Poisson arrivals), then `tierplan simulate DIR/plan.json
--profile DIR/run.json --strategies optimal --duration S --json` (the simulator calibrated from
that run, on the fleet as the run ran it), the README's commands. `--batched 8:10` runs smart-city
once more with `tierplan run --batch 8:10`: the default 2 ms wait sees smart-city's crops reach
region_east one at a time (each 4.8 ms apart on its 1 Gbit/s backhaul), so batches of one are right
there; a 10 ms wait makes batching engage, and the run and the simulator must agree on how much.

Per class and sink it prints the run's and the simulator's p50 and p95, their ratios (goal: within
15%), and per batching site the mean batch size (goal: within 15%). Two more columns say how far a
run this long can pin its p95 at all:
- `sim p95, runs this long`: the simulator's own p95 over 20 windows as long as the run, each with
  its own arrivals and service draws (5th-95th percentile). Where that spread is wider than +-15%,
  no run of this length can meet the plain ratio reliably, whatever the model.
- `sim p95 on the run's sends`: the simulator replaying the run's own send times (an arrival trace
  of `t,CLASS/SOURCE` rows; median of 5 service draws): the same arrivals, so what is left between it
  and the run is the model and service noise, not the arrival draw. `tierplan run` draws its
  arrivals from seed 0, so every run of an example repeats one draw.
A p95 row is `yes` within 15%; `spread` when it is not but the run's p95 lies inside the simulator's
own spread for runs this long; `sends` when it is in neither but the simulator on the run's own send
times is within 15% (the model holds on the same arrivals: this run's arrival draw is an unusual
one; every run of an example repeats it until `--seed`); `NO` otherwise. The goal line counts `yes`
only. Writes benchmarks/results/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "fidelity.json"
GOAL = 0.15
WINDOWS = 20    # simulated runs as long as the real one: the spread of their p95
REPLAYS = 5     # service draws on the run's own send times


def _tierplan(args: list[str], out: Path, timeout_s: float) -> None:
    """Run the CLI as a user would, stdout into `out`; a failure stops the benchmark with its stderr."""
    with out.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "tierplan.cli", *args], stdout=f, stderr=subprocess.PIPE,
                              text=True, timeout=timeout_s, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"tierplan {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def _row_p(sim: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """(class, sink) -> (p50, p95) of one simulated report's `optimal` strategy."""
    s = sim["strategies"]["optimal"] if "strategies" in sim else sim
    return {(c, sink): (float(x["p50_ms"]), float(x["p95_ms"]))
            for sink, v in s["sinks"].items() for c, x in (v.get("classes") or {}).items()}


def write_sends(run: dict, path: Path) -> float:
    """The run's send times as an arrival trace, one `t,CLASS/SOURCE` row per source of each request that
    finished (simulations.scenario); returns the last send time."""
    rows = []
    for t in run.get("traces") or []:
        c = run["classes"][int(t["stream"])]
        rows += [(float(t["t_s"]), f"{c['device_class']}/{src}") for src in c.get("sources") or []]
    rows.sort()
    path.write_text("t_s,source\n" + "".join(f"{t:.6f},{who}\n" for t, who in rows))
    return rows[-1][0] if rows else 0.0


def sampling(d: Path, run: dict) -> tuple[dict, dict]:
    """The simulator's p95 spread over WINDOWS runs as long as this one, and its p50/p95 on this run's own
    sends (median of REPLAYS service draws): {(class, sink): [p95, ...]}, {(class, sink): (p50, p95)}."""
    from tierplan.planner.plan import Plan
    from tierplan.simulations.api import simulate
    from tierplan.simulations.calibration import as_run, load_profile
    from tierplan.simulations.config import Scenario
    profile = load_profile(d / "run.json")
    plan = as_run(Plan.load(d / "plan.json"), d / "run.json")
    last = write_sends(run, d / "sends.csv")
    length = max(last, 1.0)

    def p(seed: int, **kw) -> dict:
        sc = Scenario.of(strategies="optimal", profile=profile, seed=seed, **kw)
        return _row_p(simulate(plan, None, sc).to_json())
    windows = [p(1000 + k, duration_s=length) for k in range(WINDOWS)]
    replays = [p(k, duration_s=last + 1e-3, arrivals=f"trace:{d / 'sends.csv'}") for k in range(REPLAYS)]
    spread = {key: [w[key][1] for w in windows if key in w] for key in windows[0]}
    replay = {key: (float(np.median([r[key][0] for r in replays])), float(np.median([r[key][1] for r in replays])))
              for key in replays[0]}
    return spread, replay


def _interval(latencies: list[float], pct: float, draws: int = 2000) -> tuple[float, float] | None:
    """90% bootstrap interval of a sample's percentile `pct` (resampling its requests); kept in the JSON."""
    if len(latencies) < 20:
        return None
    x = np.asarray(latencies)
    idx = np.random.default_rng(0).integers(0, len(x), (draws, len(x)))
    q = np.percentile(x[idx], pct, axis=1)
    return float(np.percentile(q, 5)), float(np.percentile(q, 95))


def compare(run: dict, sim: dict, spread: dict | None = None, replay: dict | None = None) -> dict:
    """Per class and sink: run and sim p50/p95, ratios, verdicts (and the sampling columns when given); per
    batching site: run and sim mean batch."""
    s = sim["strategies"]["optimal"]
    lat: dict[int, list[float]] = {}
    for t in run.get("traces") or []:
        if "stream" in t:
            lat.setdefault(int(t["stream"]), []).append(float(t["latency_ms"]))
    rows = []
    for k, c in enumerate(run["classes"]):
        for sink in c["sinks"]:
            x = s["sinks"].get(sink, {}).get("classes", {}).get(c["device_class"])
            if x is None or not c.get("measured_p50_ms"):
                continue
            key = (c["device_class"], sink)
            run95 = c["measured_p95_ms"]
            band = spread.get(key) if spread else None
            lo_hi = (float(np.percentile(band, 5)), float(np.percentile(band, 95))) if band else None
            rp = replay.get(key) if replay else None
            p95_ok = abs(x["p95_ms"] / run95 - 1) <= GOAL
            row = {"class": c["device_class"], "sink": sink, "requests": c["requests"],
                   "run_p50_ms": c["measured_p50_ms"], "sim_p50_ms": x["p50_ms"],
                   "p50_ratio": x["p50_ms"] / c["measured_p50_ms"],
                   "run_p95_ms": run95, "sim_p95_ms": x["p95_ms"], "p95_ratio": x["p95_ms"] / run95,
                   "p50_ok": abs(x["p50_ms"] / c["measured_p50_ms"] - 1) <= GOAL, "p95_ok": p95_ok,
                   "p95_verdict": "yes" if p95_ok else
                   "spread" if lo_hi is not None and lo_hi[0] <= run95 <= lo_hi[1] else
                   "sends" if rp is not None and abs(rp[1] / run95 - 1) <= GOAL else "NO",
                   "sim_p95_spread_ms": lo_hi,
                   "sim_p95_spread_relative": None if lo_hi is None else (lo_hi[0] / x["p95_ms"], lo_hi[1] / x["p95_ms"]),
                   "replay_p50_ms": None if rp is None else rp[0], "replay_p95_ms": None if rp is None else rp[1],
                   "replay_p95_ratio": None if rp is None else rp[1] / run95,
                   "run_p95_interval_ms": _interval(lat.get(k, []), 95)}
            rows.append(row)
    batches = []
    for r in run["site_rows"]:
        if r.get("mean_batch") and r["site"] in s.get("batch_mean", {}):
            sim_b = s["batch_mean"][r["site"]]
            batches.append({"site": r["site"], "run_mean_batch": r["mean_batch"], "sim_mean_batch": sim_b,
                            "ratio": sim_b / r["mean_batch"], "run_batch_wait_ms": r.get("batch_wait_ms")})
    batches_ok = all(abs(b["ratio"] - 1) <= GOAL for b in batches)
    strict = all(r["p50_ok"] and r["p95_ok"] for r in rows) and batches_ok
    explained = all(r["p50_ok"] and r["p95_verdict"] != "NO" for r in rows) and batches_ok
    return {"rows": rows, "batches": batches, "strict_within_goal": strict, "within_goal_or_explained": explained,
            "batch": run.get("batch")}


def bench(example: str, duration_s: float, sim_s: float, workdir: Path, batch: str | None = None,
          reuse: bool = False, seed: int = 0) -> dict:
    name = example + (f"-batch-{batch.replace(':', '-')}" if batch else "") + (f"-seed-{seed}" if seed else "")
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    reused = reuse and (d / "plan.json").is_file() and (d / "run.json").is_file() and (d / "run.json").stat().st_size > 0
    if not reused:
        _tierplan(["run", example, "--duration", f"{duration_s:g}", "--json", "--plan-out", str(d / "plan.json"),
                   *(["--batch", batch] if batch else []), *(["--seed", str(seed)] if seed else [])],
                  d / "run.json", timeout_s=duration_s * 10 + 600)
    run_s = time.time() - t0
    load1 = os.getloadavg()[0]
    if not (reused and (d / "sim.json").is_file() and (d / "sim.json").stat().st_size > 0):
        _tierplan(["simulate", str(d / "plan.json"), "--profile", str(d / "run.json"), "--strategies", "optimal",
                   "--duration", f"{sim_s:g}", "--json", "--no-progress"], d / "sim.json", timeout_s=1200)
    run = json.loads((d / "run.json").read_text())
    sim = json.loads((d / "sim.json").read_text())
    if reused:   # the machine's load when that run ran: its report's
        load0 = load1 = float(run.get("load_average_1m") or float("nan"))
    out = compare(run, sim, *sampling(d, run))
    flags = " ".join([f"--batch {batch}"] * bool(batch) + [f"--seed {seed}"] * bool(seed))
    out.update({"example": example, "run_flags": flags, "duration_s": duration_s,
                "sim_duration_s": sim_s, "run_wall_s": run_s,
                "load_average_1m": {"start": load0, "end": load1, "report": run.get("load_average_1m")},
                "requests_ok": run.get("requests_ok"), "requests_failed": run.get("requests_failed")})
    return out


def _print(res: dict) -> None:
    for ex in res["examples"]:
        la = ex["load_average_1m"]
        flags = f" {ex['run_flags']}" if ex.get("run_flags") else ""
        print(f"\n{ex['example']}{flags}: {ex['requests_ok']} requests ok, {ex['requests_failed']} failed in "
              f"{ex['duration_s']:g} s; load average (1 min) {la['start']:.2f} at start, {la['end']:.2f} at end "
              f"on {os.cpu_count()} cores; simulated {ex['sim_duration_s']:g} s")
        print(f"{'class':16} {'sink':10} {'n':>4} {'run p50':>8} {'sim p50':>8} {'ratio':>6} {'ok':>3} "
              f"{'run p95':>8} {'sim p95':>8} {'ratio':>6} {'ok':>6}  {'sim p95, runs this long':>23}  "
              f"sim p95 on the run's sends")
        for r in ex["rows"]:
            band = r.get("sim_p95_spread_ms")
            rel = r.get("sim_p95_spread_relative")
            spread = "-" if band is None else f"{band[0]:.1f}-{band[1]:.1f} ({rel[0]:.2f}-{rel[1]:.2f}x)"
            replay = "-" if r.get("replay_p95_ms") is None else f"{r['replay_p95_ms']:.1f} ({r['replay_p95_ratio']:.2f})"
            print(f"{r['class']:16} {r['sink']:10} {r['requests']:4d} {r['run_p50_ms']:8.1f} {r['sim_p50_ms']:8.1f} "
                  f"{r['p50_ratio']:6.2f} {'yes' if r['p50_ok'] else 'NO':>3} {r['run_p95_ms']:8.1f} "
                  f"{r['sim_p95_ms']:8.1f} {r['p95_ratio']:6.2f} {r['p95_verdict']:>6}  {spread:>23}  {replay}")
        caps = ex.get("batch") or {}
        for b in ex["batches"]:
            wait = "-" if b["run_batch_wait_ms"] is None else f"{b['run_batch_wait_ms']:.2f} ms"
            print(f"mean batch at {b['site']}: run {b['run_mean_batch']:.2f}, sim {b['sim_mean_batch']:.2f} "
                  f"(ratio {b['ratio']:.2f}, {'yes' if abs(b['ratio'] - 1) <= GOAL else 'NO'}); partial batches waited "
                  f"{wait} in the run (max_wait {caps.get('max_wait_ms', 2.0):g} ms)")
        print(f"goal, every p50, p95 and mean batch within {GOAL:.0%}: {'yes' if ex['strict_within_goal'] else 'no'}; "
              f"where a p95 is not, the run's p95 is inside the simulator's own spread for runs this long, or "
              f"the simulator on the run's own sends is within {GOAL:.0%}: "
              f"{'yes' if ex['within_goal_or_explained'] else 'NO'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default="smart-city,read-text")
    ap.add_argument("--batched", default="8:10", help="Run smart-city once more with `tierplan run --batch` "
                    "this (MAX:WAIT_MS; '' for none): dynamic batching that engages.")
    # 180 s: a p95 of a few hundred requests per class (60 s runs' p95s move by up to 0.3-1.3x with the
    # arrival draw); 3600 s simulated: the simulator's own p95 settles (600 s ones moved by 10%), ~3 s each
    ap.add_argument("--duration", type=float, default=180.0, help="Seconds of `tierplan run` per example.")
    ap.add_argument("--sim-duration", type=float, default=3600.0, help="Simulated seconds per example.")
    ap.add_argument("--keep", type=Path, default=None, help="Keep each run's plan, run.json and sim.json here.")
    ap.add_argument("--reuse", action="store_true", help="With --keep: take the run.json and sim.json found "
                    "there instead of running again (the tables from kept runs).")
    ap.add_argument("--seed", type=int, default=0, help="`tierplan run --seed`: the runs' arrival draw (every run "
                    "with one seed sends the same requests at the same times).")
    ap.add_argument("--out", type=Path, default=RESULTS, help="Where to write the JSON.")
    a = ap.parse_args(argv)
    jobs = [(e, None) for e in a.examples.split(",") if e]
    if a.batched:
        jobs.append(("smart-city", a.batched))
    with tempfile.TemporaryDirectory(prefix="tierplan-fidelity-") as tmp:
        work = a.keep or Path(tmp)
        res = {"examples": [bench(e, a.duration, a.sim_duration, work, b, a.reuse and a.keep is not None, a.seed)
                            for e, b in jobs], "cores": os.cpu_count(), "goal": GOAL,
               "windows": WINDOWS, "replays": REPLAYS}
    _print(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {a.out} ({a.out.write_text(json.dumps(res, indent=2))} bytes)")


if __name__ == "__main__":
    main()
