"""`--adapt`: the control loop that measures a running deployment, re-plans on drift and moves it live.

`Adapter(svc, plan, policy).start()` watches every finished request (runtime.observe.Observer on
the service's trace observers), asks the shared policy (planner.adaptpolicy) every `tick_s`
whether a figure has drifted past the threshold for the sustain time, and then:

1. re-plans from the current plan with the observed link figures (warm-started from it, within
   `replan_time_limit_s`; the app graph is built once, when the loop starts);
2. re-costs the current plan on the same figures and decides (`adaptpolicy.decide`: the old plan
   misses an SLO and the new one does better, or the new one is better by the margin after a cost
   per moved piece);
3. moves the deployment live when adopted: the moved pieces compiled as `tierplan compile` does
   (runtime.livemove.compile_moved), then runtime.livemove.move (pieces loaded before the switch,
   no request lost), and some seconds later records the latency measured after.

Every decision goes to `Adapter.log` (and `on_event`): what drifted, what the re-plan predicted
for both plans, the moves, the compile of the moved pieces, the switch and the p95 measured before
and after. Compute-time drift scales the re-plan's compute times on that site by the observed ratio
(adaptpolicy.scaled_cost_model) and its reference moves to the new level. A figure acted on waits
`cooldown_s` before it is acted on again; after a move, every figure does (the new plan settles).

`run_adaptive` drives a deployment with Poisson requests per device class, optional live link
steps and an optional Adapter, and returns every request's timeline (benchmarks/adapt.py, tests).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from tierplan.devices.fleet import resolve_fleet
from tierplan.errors import InfeasibleError, InputError, RuntimeFault
from tierplan.planner.adaptpolicy import (AdaptPolicy, DriftDetector, Figure, Replanner, class_weights, decide, moves_of,
                                          observed_fleet, predicted, recost, replan_scope, site_ratios, slo_of)
from tierplan.planner.movecost import charged
from tierplan.planner.plan import Plan
from tierplan.runtime.livemove import compile_moved, move, set_link
from tierplan.runtime.observe import Observer
from tierplan.runtime.service import Service, Trace

__all__ = ["Adapter", "LinkStep", "RequestRecord", "run_adaptive", "parse_link_step"]


class Adapter:
    """The `--adapt` control loop over one running Service (see the module doc)."""

    def __init__(self, svc: Service, plan: Plan, policy: AdaptPolicy | None = None, *,
                 pieces_dir: str | Path | None = None, replanner: Replanner | None = None,
                 on_event: Callable[[dict], None] | None = None, artifacts: str | Path | None = None,
                 manifest: Mapping | None = None, backends: Sequence[str] | None = None) -> None:
        """`plan`: the planner's plan the service runs (with its app and fleet embedded); `manifest`:
        the compile manifest it was deployed with (`tierplan compile`), if any; `artifacts`: where
        moved pieces are compiled (default: a temporary folder); `backends`: for them (default: the
        backends `manifest` used, else onnxruntime, as a deployment without a manifest runs)."""
        if plan.fleet is None or plan.app is None:
            raise InputError("--adapt needs a plan with its app and fleet embedded. To fix: re-run `tierplan plan`")
        self.svc = svc
        self.plan = plan
        self.policy = policy or AdaptPolicy()
        run = svc.fleet_run
        self.classes: list[str] | None = list(run.classes) if run is not None and run.classes else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        if replanner is None:
            if pieces_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="tierplan-adapt-")
                pieces_dir = self._tmp.name
            replanner = Replanner(plan, Path(pieces_dir))
        self.replanner = replanner
        self.observer = Observer(plan, svc.plan, self.policy.window_s, threshold=self.policy.threshold,
                                 min_effect_ms=self.policy.min_effect_ms, compute_window_s=self.policy.compute_window_s)
        self.detector = DriftDetector(self.policy)
        self.on_event = on_event
        self.log: list[dict] = []
        self.t0 = time.monotonic()
        self.t0_unix = time.time()
        self._accepted: dict[str, float] = {}   # link figures taken as the current truth (kept plan)
        self._compute_scale: dict[str, float] = {}   # site -> observed / planned compute time (kept plan)
        self._cool: dict[str, float] = {}       # figure key -> no decision on it before then
        self.artifacts = artifacts
        self.manifest: Mapping | None = manifest
        used = sorted({str(a.get("backend")) for a in (manifest or {}).get("artifacts", []) if a.get("backend")})
        self.backends: tuple[str, ...] = tuple(backends) if backends else tuple(used) or ("onnxruntime",)
        # no decision in the first two windows: the estimates start from cold pieces and caches
        self._quiet_until = self.t0 + 2 * self.policy.window_s
        self._after: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prepared = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Adapter":
        self.svc.observers.append(self._on_trace)
        threading.Thread(target=self._prepare, name="adapt-prepare", daemon=True).start()
        self._thread = threading.Thread(target=self._loop, name="adapt", daemon=True)
        self._thread.start()
        return self

    def _prepare(self) -> None:
        try:
            self.replanner.prepare()
        finally:
            self._prepared.set()

    def stop(self) -> None:
        self._stop.set()
        if self._on_trace in self.svc.observers:
            self.svc.observers.remove(self._on_trace)
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._flush_after(float("inf"))
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Adapter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ loop
    def _on_trace(self, tr: Trace) -> None:
        self.observer.add(tr.steps, tr.latency_ms, tr.device_class)   # latency as the client saw it

    def _loop(self) -> None:
        try:   # Linux: this thread (and the solver threads it starts) yields the CPU to serving
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        while not self._stop.wait(self.policy.tick_s):
            now = time.monotonic()
            try:
                self._flush_after(now)
                flagged = [f for f in self.detector.update(now, self.observer.figures(now))
                           if self._cool.get(f.key, 0.0) <= now]
                if flagged and now >= self._quiet_until:
                    flagged = self._settled(now, flagged)
                    if flagged:
                        self._act(now, flagged)
            except Exception as e:  # the service goes on; the log says what failed
                self._emit({"t_s": round(now - self.t0, 3), "error": f"{type(e).__name__}: {e}"})
                # the figures acted on wait out their cooldown (set in _act); the rest a tick or so
                self._quiet_until = time.monotonic() + min(self.policy.cooldown_s, 5 * self.policy.tick_s)

    def _emit(self, entry: dict) -> None:
        self.log.append(entry)
        if self.on_event is not None:
            self.on_event(entry)

    def _flush_after(self, now: float) -> None:
        due = [(t, e) for t, e in self._after if t <= now]
        self._after = [(t, e) for t, e in self._after if t > now]
        for _, entry in due:
            entry["measured_after_p95_ms"] = {k: round(v, 2) for k, v in
                                              self.observer.latency_p95(span_s=self.policy.window_s * 2).items()}

    def _settled(self, now: float, flagged: list[Figure]) -> list[Figure]:
        """The flagged link figures estimated again from the transfers since their drift began only
        (the window before mixes in the old figures), still off; [] to wait for more of those
        transfers (a link figure without them is not acted on yet). Compute figures pass as flagged."""
        links = [f for f in flagged if f.key.startswith("link:")]
        if not links:
            return flagged
        began = [b for f in links for b in [self.detector.since(f.key)] if b is not None]
        fresh = self.observer.link_estimates(now, since_s=min(began)) if began else {}
        if any(f.key not in fresh for f in links):
            return []
        return [fresh[f.key] if f.key.startswith("link:") else f for f in flagged
                if not f.key.startswith("link:") or self.detector.off(fresh[f.key])]

    def _act(self, now: float, flagged: list[Figure]) -> None:
        pol = self.policy
        entry: dict = {"t_s": round(now - self.t0, 3), "drifted": [f.to_json() for f in flagged],
                       "measured_before_p95_ms": {k: round(v, 2) for k, v in self.observer.latency_p95(now).items()}}
        for f in flagged:      # the figures acted on wait out the cooldown; others may still be acted on
            self._cool[f.key] = now + pol.cooldown_s
        self.detector.reset()
        links = {f.key: f.observed for f in flagged if f.key.startswith("link:")}
        ratios = site_ratios(f for f in flagged if f.key.startswith("compute:"))
        if ratios:      # compute times: the re-plan takes them as observed; their new level is the reference
            for site, r in ratios.items():
                self._compute_scale[site] = self._compute_scale.get(site, 1.0) * r
            self.observer.set_exe(self.svc.plan)
        entry["compute_scale"] = {k: round(v, 3) for k, v in self._compute_scale.items()}
        self._accepted.update(links)
        spec = replan_scope(self.plan, observed_fleet(self.plan, self._accepted), self.classes)
        self._prepared.wait()
        t = time.perf_counter()
        try:
            new = self.replanner(spec, pol.replan_time_limit_s, current=self.plan, compute_scale=self._compute_scale,
                                 move_cost_ms=pol.segment_move_cost_ms)
        except InfeasibleError as e:
            if not self._compute_scale:
                raise
            # the fleet cannot carry the load at the observed compute times (e.g. the devices' cores
            # are busy with other work): the re-plan takes the link figures alone, the log says why
            entry["compute_scale_dropped"] = str(e).split(". To fix")[0][:300]
            self._compute_scale = {}
            new = self.replanner(spec, pol.replan_time_limit_s, current=self.plan, move_cost_ms=pol.segment_move_cost_ms)
        entry["replan_s"] = round(time.perf_counter() - t, 3)
        entry["replan_status"] = new.status
        if new.move_cost_ms:
            entry["replan_move_cost"] = charged([m for m in new.moves if self.classes is None or m.edge_class in self.classes],
                                                new.move_cost_ms)
        observed = resolve_fleet(spec, catalog={})
        moves = moves_of(self.plan, new, self.classes)
        dec = decide(pol, recost(self.plan, observed, self.classes, self._compute_scale or None),
                     predicted(new, self.classes),
                     slo_of(self.plan, self.classes), len(moves), weights=class_weights(self.plan))
        entry["decision"] = dec.to_json()
        entry["moves"] = moves
        if dec.adopt:
            moved = [(str(m["piece"]), str(m["to_site"])) for m in moves if m.get("to_site")]
            comp = compile_moved(new, moved, self._store(), self.backends, self.manifest)
            entry["compile"] = {k: comp[k] for k in ("compile_s", "built", "cached", "pieces")}
            rep = move(self.svc, new, note=dec.reason, manifest=comp["manifest"])
            entry["switch"] = rep
            if rep.get("switched"):
                entry["switch_t_s"] = round(rep["switched_at_unix"] - self.t0_unix, 3)
                self.plan = new
                self.manifest = comp["manifest"]
                self._accepted = {}
                self._compute_scale = {}
                self.observer.fleet = new.fleet_model()
                self.observer.set_exe(self.svc.plan)
                self._after.append((time.monotonic() + 2 * pol.window_s, entry))
                self._quiet_until = time.monotonic() + pol.cooldown_s     # the new plan settles
        else:   # the plan stays; the observed figures are its new assumptions
            self.observer.fleet = observed
            self._after.append((time.monotonic() + 2 * pol.window_s, entry))
        self._emit(entry)

    def _store(self) -> Path:
        """Where moved pieces are compiled (`artifacts`, or a folder of this controller's)."""
        if self.artifacts is not None:
            return Path(self.artifacts)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tierplan-adapt-")
        return Path(self._tmp.name) / "artifacts"

    def report(self) -> dict:
        """The policy and every decision (JSON-ready)."""
        return {"policy": self.policy.to_json(), "decisions": list(self.log),
                "switches": list(self.svc.switches), "replan_s": [round(x, 3) for x in self.replanner.solves]}


# ----------------------------------------------------------------------------- driving a run
@dataclass(frozen=True)
class LinkStep:
    """At `at_s` into the run, set the emulated attach link of `site` (up and/or down Mbit/s)."""

    site: str
    at_s: float
    up_mbps: float | None = None
    down_mbps: float | None = None


def parse_link_step(text: str) -> LinkStep:
    """`SITE@SECONDS:up=MBPS[,down=MBPS]`, e.g. `midrange_phones@20:up=2`."""
    head, _, figs = text.partition(":")
    site, _, at = head.partition("@")
    try:
        kv = dict(p.split("=", 1) for p in figs.split(",") if p)
        step = LinkStep(site, float(at), float(kv["up"]) if "up" in kv else None,
                        float(kv["down"]) if "down" in kv else None)
    except (ValueError, KeyError):
        step = None
    if step is None or not site or (step.up_mbps is None and step.down_mbps is None) or step.at_s < 0:
        raise InputError(f"--link-step {text!r}: expected SITE@SECONDS:up=MBPS[,down=MBPS]. "
                         "To fix: e.g. --link-step midrange_phones@20:up=2")
    return step


@dataclass
class RequestRecord:
    """One request as the client saw it: when it was sent (s from the start), how long it took, how it ended."""

    sent_s: float
    stream: int
    device_class: str | None
    sources: tuple[str, ...]
    latency_ms: float | None = None
    error: str = ""
    prefix: str = ""
    request_id: str = ""
    steps: list = field(default_factory=list)     # its trace's [kind, name, ms] steps

    def to_json(self) -> dict:
        return {"sent_s": round(self.sent_s, 4), "stream": self.stream, "device_class": self.device_class,
                "sources": list(self.sources), "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
                "error": self.error, "generation": self.prefix or "g1", "request_id": self.request_id}


@dataclass
class AdaptiveRun:
    records: list[RequestRecord] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    adapt: dict | None = None
    final_plan: Plan | None = None          # the plan running at the end (the adapter's, after a move)


def run_adaptive(svc: Service, plan: Plan, streams: Sequence, make_inputs: Callable[[int], Mapping[str, np.ndarray]],
                 duration_s: float, *, seed: int = 0, policy: AdaptPolicy | None = None,
                 link_steps: Sequence[LinkStep] = (), on_event: Callable[[dict], None] | None = None,
                 pieces_dir: str | Path | None = None, replanner: Replanner | None = None,
                 manifest: Mapping | None = None, artifacts: str | Path | None = None) -> AdaptiveRun:
    """Send each stream's requests (objects with `device_class`, `sources`, `rate_hz`: tierplan.run's
    Stream) as Poisson arrivals for `duration_s`, apply `link_steps` at their times, run an Adapter
    when `policy` is given (`manifest`, `artifacts`: as Adapter's); every request's record, the steps
    applied and the adapter's report."""
    out = AdaptiveRun()
    adapter = Adapter(svc, plan, policy, pieces_dir=pieces_dir, replanner=replanner, on_event=on_event,
                      manifest=manifest, artifacts=artifacts) if policy is not None else None
    arrivals: list[tuple[float, int]] = []
    for k, st in enumerate(streams):
        rng = np.random.default_rng([seed, k])
        t = float(rng.exponential(1.0 / st.rate_hz)) if st.rate_hz > 0 else duration_s
        while t < duration_s:
            arrivals.append((t, k))
            t += float(rng.exponential(1.0 / st.rate_hz))
    arrivals.sort()
    pending_steps = sorted(link_steps, key=lambda s: s.at_s)
    lock = threading.Lock()
    if adapter is not None:
        adapter.start()
    t0 = time.monotonic()

    def finish(rec: RequestRecord, p) -> None:
        try:
            _, tr = svc.wait(p)
            rec.latency_ms = tr.latency_ms
            rec.steps = [list(x) for x in tr.steps]
        except RuntimeFault as e:
            rec.error = str(e)

    def apply(step: LinkStep) -> None:
        took = set_link(svc, step.site, up_mbps=step.up_mbps, down_mbps=step.down_mbps)
        with lock:
            out.steps.append({"site": step.site, "at_s": round(time.monotonic() - t0, 3), "planned_at_s": step.at_s,
                              "up_mbps": step.up_mbps, "down_mbps": step.down_mbps, "took_s": round(took, 3)})
    try:
        with futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="adapt-wait") as pool:
            waits = []
            for i, (at, k) in enumerate(arrivals):
                while pending_steps and pending_steps[0].at_s <= at:
                    step = pending_steps.pop(0)
                    delay = step.at_s - (time.monotonic() - t0)
                    if delay > 0:
                        time.sleep(delay)
                    waits.append(pool.submit(apply, step))
                delay = at - (time.monotonic() - t0)
                if delay > 0:
                    time.sleep(delay)
                st = streams[k]
                inputs = {s: v for s, v in make_inputs(seed + i).items() if s in st.sources}
                rec = RequestRecord(time.monotonic() - t0, k, st.device_class, tuple(st.sources))
                out.records.append(rec)
                try:
                    p = svc.submit(inputs, device_class=st.device_class)
                except (RuntimeFault, InputError) as e:
                    rec.error = str(e)
                    continue
                rec.prefix, rec.request_id = p.prefix, p.rid
                waits.append(pool.submit(finish, rec, p))
            futures.wait(waits)
    finally:
        if adapter is not None:
            adapter.stop()
            out.adapt = adapter.report()
        out.final_plan = adapter.plan if adapter is not None else plan
    _less_feed(out.records)
    return out


def _less_feed(records: Sequence[RequestRecord]) -> None:
    """Each latency from when its input is on its source site: the client's loopback feed is taken
    out up to its median per site (beyond it, a feed step is the input waiting for the site's busy
    compute thread, which a device's own request waits for too; as tierplan run counts it)."""
    feeds: dict[str, list[float]] = {}
    for r in records:
        for kind, name, ms in r.steps:
            if kind == "feed":
                feeds.setdefault(name, []).append(ms)
    floor = {name: float(np.median(v)) for name, v in feeds.items()}
    for r in records:
        if r.latency_ms is not None:
            r.latency_ms -= sum(min(ms, floor[name]) for kind, name, ms in r.steps if kind == "feed")


def p95_series(records: Sequence[RequestRecord], bin_s: float, duration_s: float,
               key: Callable[[RequestRecord], str] | None = None) -> dict[str, list[float | None]]:
    """Per key (default: the device class and sources), the p95 latency of the requests sent in each
    `bin_s` bin (None where none finished)."""
    n = int(np.ceil(duration_s / bin_s))
    per: dict[str, list[list[float]]] = {}
    for r in records:
        if r.latency_ms is None:
            continue
        k = key(r) if key is not None else f"{r.device_class or ''}:{'+'.join(r.sources)}"
        bins = per.setdefault(k, [[] for _ in range(n)])
        b = min(int(r.sent_s / bin_s), n - 1)
        bins[b].append(r.latency_ms)
    return {k: [float(np.percentile(b, 95)) if b else None for b in bins] for k, bins in per.items()}


def dumps(run: AdaptiveRun) -> str:
    return json.dumps({"records": [r.to_json() for r in run.records], "steps": run.steps, "adapt": run.adapt})
