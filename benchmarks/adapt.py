"""Adapting to a link step live (issue #19): read-text with the mid-range phones' LTE uplink stepped 12 -> 2 Mbit/s.

    python benchmarks/adapt.py [--seconds 45] [--step-at 15] [--rate-scale 2] [--bin 2]

1. Plan read-text on its fleet with the LTE uplink at 12 Mbit/s (the planner sends the tail of the
   orientation classifier from the mid-range phones to the base station; the flagship phones keep
   everything on the device). Deploy it on this machine for the mid-range class (one phone agent,
   the base-station site as a Ray node; the flagship class does not use the stepped link), send
   its sources' requests (Poisson, rates x --rate-scale) for --seconds, and at --step-at set the
   emulated uplink to 2 Mbit/s (runtime.livemove.set_link: the workers' link emulators change live).
2. Twice with the same seed and arrivals: without adaptation, and with `--adapt` (tierplan.adapt.Adapter,
   the default policy: a run of 2 requests whose transfer is 30% (and 2 jitters) off, sustained
   0.5 s; re-plan limit 1.5 s). The plan is compiled first (onnxruntime, as `tierplan run` does) and
   the controller compiles the pieces that move the same way before the switch.
3. Per run: p95 of each sink in --bin bins by send time; time to recover: from the step until the
   p95 of the `text` requests sent in every 2 s window that starts then or later (by send time, a
   0.25 s grid: no window reaches back before that moment, so no rolling-window lag) is within its
   SLO, and within 25% of its level before the step; requests lost (failed or unanswered); moves and
   the switch (time after the step: flag, re-plan, compile of the moved pieces, load; requests in
   flight at the switch).
4. The simulator rehearses both runs (simulations.adapt.rehearse: the same policy, the flag time
   from the observer's window, the live run's re-plan and load times, the adopted plan; compute
   times from the live runs' traces at their CPU time, since other agents share this machine's
   cores; each segment's requests at the live run's send times, the camera's for both sources):
   simulated p95 per segment (before the step, step -> switch, after the switch) against the
   measured p95 of the requests sent in that segment, and each one's change from the first.

Prints tables, writes benchmarks/results/adapt.json and benchmarks/results/adapt.png (p95 over
time, step and switch marked, measured and simulated). The machine is shared: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "adapt.json"
PLOT = ROOT / "benchmarks" / "results" / "adapt.png"
CLASS = "midrange_phones"
SINK_OF = {"camera": "text", "microphone": "speech"}


def _fleet_at(fleet, up_mbps: float):
    links = dict(fleet.links)
    links["lte"] = links["lte"].model_copy(update={"uplink_mbps": up_mbps})
    return fleet.model_copy(update={"links": links})


WINDOW_S = 2.0      # recovery: p95 of the requests sent in each window of this length (by send time)
HOLD_S = 5.0        # "settled": every window starting in the next HOLD_S seconds is within the limit


def _window_p95(records, sink: str, t: float, span: float) -> float | None:
    """p95 of the `sink` requests sent in [t, t + span) (None: fewer than 2)."""
    xs = [r.latency_ms for r in records if r.latency_ms is not None and SINK_OF.get(r.sources[0]) == sink
          and t <= r.sent_s < t + span]
    return float(np.percentile(xs, 95)) if len(xs) >= 2 else None


def _recovery(records, sink: str, step_at: float, duration: float, slo_ms: float, span: float = WINDOW_S) -> dict:
    """Seconds from the step until the p95 of the requests sent in every `span` window starting then
    or later (0.25 s grid, by send time: no window reaches back before that moment, so the figure
    has no rolling-window lag) stays within the SLO, and within 25% of its level before the step
    (0: it never left; None: never back): for good (to the end of the run) and first settled after
    it first left (for the next HOLD_S seconds; a later excursion, e.g. another process's burst on this machine's
    cores, is then in the for-good figure only)."""
    def windows(lo: float, hi: float) -> list[tuple[float, float]]:
        out = []
        for t in np.arange(lo, hi - span + 1e-9, 0.25):
            v = _window_p95(records, sink, float(t), span)
            if v is not None:
                out.append((float(t), v))
        return out
    before = windows(min(5.0, step_at), step_at)
    before = [(t, v) for t, v in before if t + span <= step_at]
    level = float(np.median([v for _, v in before])) if before else None
    after = windows(step_at, duration)
    if not after:
        return {"within_slo_after_s": None, "back_to_level_after_s": None}

    def settled(limit: float) -> float | None:
        bad = [t for t, v in after if v > limit]
        if not bad:
            return 0.0
        nxt = [t for t, _ in after if t > max(bad)]
        return round(nxt[0] - step_at, 2) if nxt else None

    def first(limit: float) -> float | None:
        bad = [t for t, v in after if v > limit]
        if not bad:
            return 0.0
        for t, _ in after:
            if t <= bad[0]:
                continue
            if t + HOLD_S > after[-1][0]:     # less than HOLD_S left: as for good
                return settled(limit)
            if all(v <= limit for u, v in after if t <= u <= t + HOLD_S):
                return round(t - step_at, 2)
        return None
    return {"within_slo_after_s": settled(slo_ms), "within_slo_first_s": first(slo_ms),
            "back_to_level_after_s": settled(1.25 * level) if level is not None else None,
            "back_to_level_first_s": first(1.25 * level) if level is not None else None,
            "level_before_p95_ms": level, "peak_p95_ms": max(v for _, v in after),
            "end_p95_ms": after[-1][1], "window_s": span}


def _segments_measured(records, sink: str, bounds: list[tuple[float, float]]) -> list[float | None]:
    out = []
    for a, b in bounds:
        xs = [r.latency_ms for r in records if r.latency_ms is not None and SINK_OF.get(r.sources[0]) == sink
              and a <= r.sent_s < b]
        out.append(float(np.percentile(xs, 95)) if len(xs) >= 3 else None)
    return out


def _strip(name: str) -> str:
    head, sep, rest = name.partition("~")
    return rest if sep and head.startswith("g") and head[1:].isdigit() else name


def _cpu_steps(steps: list) -> list:
    """The trace's compute steps with their CPU time (the `cpu` step beside each) where measured: on a
    machine other agents share, a step's wall time counts the time it waited for a core."""
    cpu = {n: ms for k, n, ms in steps if k == "cpu"}
    return [[k, _strip(n), cpu.get(n, ms) if k == "compute" else ms] for k, n, ms in steps if k != "cpu"]


def _run_doc(records, workers: dict, rate_scale: float) -> dict:
    """A `tierplan run --json`-shaped report of a run (what simulations.calibration reads), compute
    steps at their CPU time."""
    traces = [{"device_class": r.device_class, "latency_ms": r.latency_ms, "steps": _cpu_steps(r.steps)}
              for r in records if r.latency_ms is not None and r.steps and r.sent_s > 3.0]
    return {"traces": traces, "requests_ok": len(traces), "classes_run": [CLASS], "devices_per_class": 1,
            "site_rows": [{"site": s, "workers": n} for s, n in workers.items()], "rate_scale": rate_scale}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--step-at", type=float, default=15.0)
    ap.add_argument("--before", type=float, default=12.0, help="uplink Mbit/s planned and before the step")
    ap.add_argument("--after", type=float, default=2.0, help="uplink Mbit/s after the step")
    ap.add_argument("--rate-scale", type=float, default=2.0)
    ap.add_argument("--bin", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sim", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    from rich.console import Console

    from tierplan.adapt import LinkStep, p95_series, run_adaptive
    from tierplan.loader import load_app, load_fleet
    from tierplan.planner.adaptpolicy import AdaptPolicy, Replanner
    from tierplan.planner.api import plan_app
    from tierplan.run import example_inputs, find_example, request_streams
    from tierplan.runtime.cluster import LocalCluster
    from tierplan.runtime.compile import compile_plan
    from tierplan.runtime.deploy import deploy

    con = Console(stderr=False, width=200)
    ex = find_example("read-text")
    app, fleet = load_app(ex / "app.yaml"), load_fleet(ex / "fleet.yaml")
    tmp = Path(tempfile.mkdtemp(prefix="tierplan-adapt-bench-"))
    t = time.perf_counter()
    plan = plan_app(app, _fleet_at(fleet, args.before), time_limit_s=10.0, pieces_dir=tmp / "pieces")
    plan_s = time.perf_counter() - t
    con.print(f"plan at {args.before:g} Mbit/s ({plan_s:.1f} s): {CLASS} {plan.per_class[CLASS]}", highlight=False)
    slo = {s.sink: s.latency_ms for s in app.slo}
    streams = request_streams(app, plan, (CLASS,), 1, args.rate_scale)
    make_inputs = example_inputs(ex, app)
    policy = AdaptPolicy()
    replanner = Replanner(plan, tmp / "replan").prepare()      # the app graph once, as the controller does at start
    step = LinkStep(CLASS, args.step_at, up_mbps=args.after)
    comp = compile_plan(plan, tmp / "artifacts", backends=["onnxruntime"], progress=False)
    camera_hz = sum(st.rate_hz for st in streams if "camera" in st.sources)
    runs: dict[str, dict] = {}
    cluster = LocalCluster(["cells"])
    try:
        for name, pol in (("static", None), ("adapt", policy)):
            with deploy(plan, local=True, cluster=cluster, classes=[CLASS], manifest=comp.manifest,
                        manifest_root=comp.out_dir) as svc:
                for st in streams:                                   # warm the sessions up, outside the timeline
                    svc.predict({s: v for s, v in make_inputs(10_000).items() if s in st.sources},
                                device_class=CLASS)
                workers = dict(svc.fleet_run.workers) if svc.fleet_run is not None else {}
                run = run_adaptive(svc, plan, streams, make_inputs, args.seconds, seed=args.seed, policy=pol,
                                   link_steps=[step], replanner=replanner, manifest=comp.manifest,
                                   artifacts=tmp / f"adapt-artifacts-{name}")
            lost = [r for r in run.records if r.latency_ms is None]
            runs[name] = {"run": run, "lost": len(lost), "errors": sorted({r.error[:160] for r in lost})[:3],
                          "workers": workers}
            con.print(f"{name}: {len(run.records)} requests, {len(lost)} lost", highlight=False)
    finally:
        cluster.shutdown()

    # ------------------------------------------------------------------ figures
    out: dict = {"example": "read-text", "class": CLASS, "seconds": args.seconds, "step_at_s": args.step_at,
                 "uplink_mbps": [args.before, args.after], "rate_scale": args.rate_scale, "seed": args.seed,
                 "slo_ms": slo, "plan_s": round(plan_s, 2), "policy": policy.to_json(), "runs": {},
                 "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]}
    for name, r in runs.items():
        run = r["run"]
        step_t = run.steps[0]["at_s"] if run.steps else args.step_at
        series = p95_series(run.records, args.bin, args.seconds,
                            key=lambda rec: SINK_OF.get(rec.sources[0], rec.sources[0]))
        adapt = run.adapt or {}
        adopted = [d for d in adapt.get("decisions", []) if (d.get("switch") or {}).get("switched")]
        first = adopted[0] if adopted else None
        entry = {"records": [[round(x.sent_s, 3), SINK_OF.get(x.sources[0], x.sources[0]),
                              None if x.latency_ms is None else round(x.latency_ms, 2), x.prefix or "g1"]
                             for x in run.records],
                 "requests": len(run.records), "lost": r["lost"], "errors": r["errors"], "step_applied_at_s": step_t,
                 "p95_series_ms": series, "bin_s": args.bin,
                 "recovery": {s: _recovery(run.records, s, step_t, args.seconds, slo[s]) for s in slo},
                 "moves": sum(len(d.get("moves") or []) for d in adopted), "switches": len(adopted),
                 "decisions": adapt.get("decisions", []), "switch_after_step_s": None}
        if first is not None:
            entry["switch_after_step_s"] = round(first["switch_t_s"] - step_t, 3)
            entry["flag_after_step_s"] = round(first["t_s"] - step_t, 3)
            entry["replan_s"] = first.get("replan_s")
            entry["load_s"] = first["switch"]["load_s"]
            entry["compile_s"] = (first.get("compile") or {}).get("compile_s")
            entry["compiled"] = (first.get("compile") or {}).get("pieces")
            entry["in_flight_at_switch"] = first["switch"]["in_flight_at_switch"]
            entry["adopted_plan"] = run.final_plan.per_class.get(CLASS) if run.final_plan is not None else None
        out["runs"][name] = entry

    # ------------------------------------------------------------------ the simulator rehearses both runs
    if not args.no_sim:
        from tierplan.simulations.adapt import Step, rehearse
        doc = _run_doc([x for r in runs.values() for x in r["run"].records], runs["adapt"]["workers"], args.rate_scale)
        (tmp / "runs.json").write_text(json.dumps(doc))
        con.print(f"the runs' traces (the simulator's profile): {tmp / 'runs.json'}", highlight=False)
        for name, r in runs.items():
            e = out["runs"][name]
            t = time.perf_counter()
            reh = rehearse(plan, Step(CLASS, e["step_applied_at_s"], args.after), policy, args.seconds,
                           adapt=(name == "adapt"), new_plan=r["run"].final_plan if name == "adapt" else None,
                           replan_s=e.get("replan_s"), load_s=(e.get("load_s") or 0.5) + (e.get("compile_s") or 0.0),
                           classes=[CLASS],
                           run_report=doc, seed=args.seed, colocate=os.cpu_count(), rate_hz=camera_hz,
                           arrivals_s=[x.sent_s for x in r["run"].records if x.sources and x.sources[0] == "camera"])
            bounds = [(s.start_s, s.end_s) for s in reh.segments]
            e["sim"] = reh.to_json()
            e["sim"]["wall_s"] = round(time.perf_counter() - t, 2)
            e["sim"]["measured_p95_per_segment"] = {s: _segments_measured(r["run"].records, s, bounds) for s in slo}
            # the measured switch (if any) against the rehearsal's
            e["sim"]["measured_switch_s"] = (e["switch_after_step_s"] + e["step_applied_at_s"]
                                             if e.get("switch_after_step_s") is not None else None)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=str))
    _print(con, out)
    _plot(out)
    con.print(f"wrote {RESULTS.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}", highlight=False)


def _ms(x) -> str:
    return "-" if x is None else f"{x:.0f}"


def _print(con, out: dict) -> None:
    from rich.table import Table
    slo = out["slo_ms"]
    t = Table(title=f"read-text, {out['class']}: LTE uplink {out['uplink_mbps'][0]:g} -> {out['uplink_mbps'][1]:g} Mbit/s "
                    f"at {out['step_at_s']:g} s of {out['seconds']:g} s (rate x{out['rate_scale']:g}); SLO "
                    + ", ".join(f"{k} {v:g} ms" for k, v in slo.items()), title_justify="left")
    for col in ("run", "requests", "lost", "text p95 before", "text p95 peak", "text p95 end",
                "within SLO after (s): first / for good", "back to level after (s): first / for good",
                "speech p95 end", "switch after step (s)",
                "flag / replan / compile / load (s)", "moves"):
        t.add_column(col)
    for name, e in out["runs"].items():
        rec = e["recovery"]["text"]
        sp = e["recovery"]["speech"]
        t.add_row(name, str(e["requests"]), str(e["lost"]), _ms(rec.get("level_before_p95_ms")),
                  _ms(rec.get("peak_p95_ms")), _ms(rec.get("end_p95_ms")),
                  f"{_s(rec.get('within_slo_first_s'))} / {_s(rec.get('within_slo_after_s'))}",
                  f"{_s(rec.get('back_to_level_first_s'))} / {_s(rec.get('back_to_level_after_s'))}",
                  _ms(sp.get("end_p95_ms")),
                  "-" if e.get("switch_after_step_s") is None else f"{e['switch_after_step_s']:.1f}",
                  "-" if e.get("flag_after_step_s") is None else
                  f"{e['flag_after_step_s']:.1f} / {e.get('replan_s') or 0:.1f} / {e.get('compile_s') or 0:.2f} / "
                  f"{e.get('load_s') or 0:.2f}",
                  str(e["moves"]))
    con.print(t)
    con.print(f"  p95 columns: requests sent in {WINDOW_S:g} s windows (by send time, on a 0.25 s grid; no window "
              "reaches back before its start, so no rolling-window lag). 'within SLO after' / 'back to level after': "
              "seconds from the step until the windows are within the SLO / within 25% of the level before the step: "
              f"first = after the first window over the limit, every window starting in the next {HOLD_S:g} s, for good = every window to the end of the run",
              highlight=False)
    for name, e in out["runs"].items():
        sim = e.get("sim")
        if not sim:
            continue
        t = Table(title=f"{name}: simulated vs measured p95 per segment (ms)", title_justify="left")
        for col in ("segment", "plan", "uplink", "text sim", "text measured", "text sim change", "text measured change",
                    "speech sim", "speech measured"):
            t.add_column(col)
        meas = sim["measured_p95_per_segment"]
        base_sim = sim["segments"][0]["sinks"].get("text", {}).get("p95_ms") if sim["segments"] else None
        base_meas = meas["text"][0] if meas["text"] else None
        for k, seg in enumerate(sim["segments"]):
            ts, tm = seg["sinks"].get("text", {}).get("p95_ms"), meas["text"][k]
            t.add_row(f"{seg['start_s']:.1f}-{seg['end_s']:.1f} s", seg["plan"], f"{seg['up_mbps']:g}", _ms(ts), _ms(tm),
                      _signed(ts, base_sim), _signed(tm, base_meas),
                      _ms(seg["sinks"].get("speech", {}).get("p95_ms")), _ms(meas["speech"][k]))
        con.print(t)
        if sim.get("switch_s") is not None or sim.get("measured_switch_s") is not None:
            con.print(f"  switch: simulated at {_ms_s(sim.get('switch_s'))}, measured at {_ms_s(sim.get('measured_switch_s'))}",
                      highlight=False)


def _s(x) -> str:
    return "never" if x is None else f"{x:.1f}"


def _signed(x, base) -> str:
    return "-" if x is None or base is None else f"{x - base:+.0f}"


def _ms_s(x) -> str:
    return "-" if x is None else f"{x:.1f} s"


def _plot(out: dict) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:   # the figure is optional; the JSON has every number
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=False)
    for ax, sink in zip(axes, ("text", "speech")):
        for name, e in out["runs"].items():
            s = e["p95_series_ms"].get(sink, [])
            xs = [(k + 0.5) * e["bin_s"] for k, v in enumerate(s) if v is not None]
            ys = [v for v in s if v is not None]
            line, = ax.plot(xs, ys, marker="o", ms=3, label=f"{name} measured")
            sim = e.get("sim")
            if sim:
                for k, seg in enumerate(sim["segments"]):
                    v = seg["sinks"].get(sink, {}).get("p95_ms")
                    if v is not None:
                        ax.hlines(v, seg["start_s"], seg["end_s"], colors=line.get_color(), linestyles="dashed",
                                  label=f"{name} simulated" if k == 0 else None)
            if e.get("switch_after_step_s") is not None:
                ax.axvline(e["step_applied_at_s"] + e["switch_after_step_s"], color=line.get_color(), ls=":",
                           label=f"{name}: switch")
        ax.axvline(out["step_at_s"], color="k", ls="--", label=f"uplink {out['uplink_mbps'][0]:g} -> {out['uplink_mbps'][1]:g}")
        ax.axhline(out["slo_ms"][sink], color="r", lw=0.8, label="SLO")
        ax.set_title(f"{sink}: p95 per {out['runs']['static']['bin_s']:g} s (by send time)")
        ax.set_xlabel("s")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


if __name__ == "__main__":
    main()
