"""`tierplan run EXAMPLE`: plan, compile, deploy on this machine, send requests, compare with the plan.

The whole path on localhost: load examples/<name>/app.yaml and fleet.yaml, plan (planner.api
when present, else every model whole on the fleet's cloud site), compile (runtime.compile),
deploy locally (Ray nodes per base-station/cloud site, agent processes per edge site, links
emulated), send requests one after another for `duration_s`, then tear everything down and
report measured against predicted latency per stage and end to end.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tierplan.devices.host import cpu_identity
from tierplan.planner.plan import Plan
from tierplan.runtime.graph import ExecGraph
from tierplan.errors import InputError, RuntimeFault
from tierplan.spec import AppSpec, FleetSpec

__all__ = ["RunReport", "StageRow", "find_example", "make_plan", "example_inputs", "run_example"]

_REPO_ROOT = Path(__file__).resolve().parent.parent
_ERRORS_KEPT = 5


@dataclass
class StageRow:
    """One stage (a compute step on a site, or a transfer over a route): measured p50 vs predicted."""

    kind: str              # compute | transfer
    name: str              # node@site or a->b
    measured_p50_ms: float
    measured_p95_ms: float
    predicted_ms: float | None
    count: int
    predicted_local_ms: float | None = None   # the same step predicted for this machine (device `local`)
    measured_cpu_p50_ms: float | None = None  # a compute step's CPU time (wall - cpu: waiting for a CPU)


@dataclass
class RunReport:
    """What `tierplan run` measured (DESIGN.md machine-readable fields plus details)."""

    example: str
    requests_ok: int
    requests_failed: int
    measured_p50_ms: float | None
    measured_p95_ms: float | None
    predicted_p50_ms: float | None
    predicted_p95_ms: float | None
    predicted_local_p50_ms: float | None = None  # the plan's placement, computed at this machine's speed
    predicted_local_p95_ms: float | None = None
    client_p50_ms: float | None = None      # including the client's loopback feed of the inputs
    client_p95_ms: float | None = None
    stages: list[StageRow] = field(default_factory=list)
    duration_s: float = 0.0
    plan_source: str = ""
    errors: list[str] = field(default_factory=list)
    sites: dict = field(default_factory=dict)
    load_average_1m: float | None = None   # os.getloadavg() as the requests ended: > cpus means a busy machine
    cpus: int | None = None                # CPUs this process may use (devices.host)
    # the runtime's schedule replayed with each step's measured p50 (runtime.schedule): the latency
    # semantics checked apart from the cost model and the machine's load
    replayed_p50_ms: float | None = None
    replayed_p95_ms: float | None = None
    # the measured latency less the time its steps waited for a CPU (each step's wall - CPU time, through
    # the schedule): on a busy machine, the figure to hold against predicted here (an unloaded core)
    measured_cpu_p50_ms: float | None = None
    measured_cpu_p95_ms: float | None = None
    # the runtime's own time per step, hop and request in "predicted here" (runtime.overhead: measured here)
    overhead: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"example": self.example, "requests_ok": self.requests_ok, "requests_failed": self.requests_failed,
                "measured_p50_ms": self.measured_p50_ms, "measured_p95_ms": self.measured_p95_ms,
                "predicted_p50_ms": self.predicted_p50_ms, "predicted_p95_ms": self.predicted_p95_ms,
                "predicted_local_p50_ms": self.predicted_local_p50_ms,
                "predicted_local_p95_ms": self.predicted_local_p95_ms,
                "client_p50_ms": self.client_p50_ms, "client_p95_ms": self.client_p95_ms,
                "stages": [s.__dict__ for s in self.stages], "duration_s": self.duration_s,
                "plan_source": self.plan_source, "errors": self.errors, "sites": self.sites,
                "load_average_1m": self.load_average_1m, "cpus": self.cpus,
                "replayed_p50_ms": self.replayed_p50_ms, "replayed_p95_ms": self.replayed_p95_ms,
                "measured_cpu_p50_ms": self.measured_cpu_p50_ms, "measured_cpu_p95_ms": self.measured_cpu_p95_ms,
                "overhead": self.overhead}


def find_example(name: str) -> Path:
    """examples/<name> (from the current directory or the checkout), or a directory path."""
    for cand in (Path(name), Path("examples") / name, _REPO_ROOT / "examples" / name):
        if (cand / "app.yaml").is_file() and (cand / "fleet.yaml").is_file():
            return cand.resolve()
    known = sorted(p.name for p in (_REPO_ROOT / "examples").glob("*") if (p / "app.yaml").is_file())
    raise InputError(f"example {name!r}: no app.yaml + fleet.yaml found. "
                     f"To fix: pass one of {', '.join(known) or '(none)'} or a directory holding both")


def make_plan(app: AppSpec, fleet: FleetSpec, app_path: Path, fleet_path: Path,
              progress: bool = False) -> tuple[Plan, str]:
    """The planner's plan (planner.api.plan_app), else every model whole on the cloud site; `progress`
    draws the planner's bar on stderr (tierplan.console.solver_progress)."""
    try:
        from tierplan.planner.api import plan_app
    except ImportError:
        from tierplan.runtime.handplan import app_plan
        plan = app_plan(app, fleet)
        source = "runtime.handplan (planner not installed): all models on one site"
    else:
        from tierplan.console import solver_progress
        with solver_progress(progress, 10.0) as hook:   # plan_app's default time limit
            plan = plan_app(app, fleet, progress=hook)
        source = "tierplan.planner.api.plan_app"
    return plan.model_copy(update={"app_path": str(app_path), "fleet_path": str(fleet_path)}), source


def example_inputs(example_dir: Path, app: AppSpec) -> Callable[[int], dict[str, np.ndarray]]:
    """`make_inputs(seed)` from examples/<name>/inputs.py, else random tensors of the declared shapes."""
    f = example_dir / "inputs.py"
    if f.is_file():
        spec = importlib.util.spec_from_file_location(f"tierplan_example_inputs_{example_dir.name}", f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if hasattr(mod, "make_inputs"):
            return mod.make_inputs

    def random_inputs(seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for name, s in app.sources.items():
            dt = np.dtype(s.dtype)
            if dt.kind in "ui":
                out[name] = rng.integers(0, min(np.iinfo(dt).max, 255) + 1, size=s.shape).astype(dt)
            else:
                out[name] = rng.random(s.shape).astype(dt)
        return out
    return random_inputs


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def local_step_predictor(plan: Plan, app: AppSpec) -> Callable[[str, str], float | None]:
    """Predicted ms of one compute step `node@site` on this machine (the calibrated device `local`).

    On one machine every site computes at this machine's speed while links are emulated as the
    fleet declares them, so the run is compared with the plan's placement re-costed for `local`
    (the fleet devices' figures are shown beside it, but a laptop cannot run at a T4's speed).
    """
    from tierplan.devices.catalog import get_device
    from tierplan.devices.costmodel import CostModel
    from tierplan.devices.pieces import piece_from_onnx

    cm, local = CostModel(), get_device("local")
    pieces = {p.id: p for p in plan.pieces}
    cache: dict[str, float | None] = {}

    def predict(node: str) -> float | None:
        if node not in cache:
            p, ms = pieces.get(node), None
            try:
                if p is not None and p.kind == "piece" and p.file and Path(p.file).is_file():
                    ms = cm.piece_ms(piece_from_onnx(p.file, piece_id=p.id), local)
                elif node in app.transforms:
                    ms = cm.transform_ms(app.transforms[node], local)
            except Exception:  # a piece the cost model cannot read: no local prediction for it
                ms = None
            cache[node] = ms
        return cache[node]

    return lambda kind, name: predict(name.rpartition("@")[0]) if kind == "compute" else None


_DRAWS = 20   # schedule replays per request, each with its own draws of the links' delays (jitter)


def _replays(graph: ExecGraph, steps: list, compute: dict[str, float], route: Callable[[str, str], list],
             declared_fanout: dict[str, float], overhead, seed: tuple) -> list[float]:
    """One request's latency as the runtime schedules it (runtime.schedule: one compute thread per site,
    fan-out items one after another through the sites and FIFO links they cross, links' delays drawn
    with their jitter), with the request's own fan-out counts (from its trace `steps`), `compute[node]`
    ms per step and the host's measured runtime `overhead` (runtime.overhead.Overheads or None):
    _DRAWS replays, the draws seeded by `seed`."""
    from tierplan.runtime.schedule import fanout_calls, request_ms

    item_nbytes = {(e.src, e.dst): e.nbytes / declared_fanout[e.src]
                   for e in graph.plan.edges if declared_fanout.get(e.src)}
    items = fanout_calls(graph, steps, declared_fanout)
    step_ms, hop_ms, req_ms = (overhead.step_ms, overhead.hop_ms, overhead.request_ms) if overhead else (0.0, 0.0, 0.0)
    return [req_ms + request_ms(graph, compute, route, items, item_nbytes, step_ms, hop_ms,
                                rng=np.random.default_rng([*seed, k])) for k in range(_DRAWS)]


def _own_steps(steps: list, kind: str) -> dict[str, float]:
    """ms per node of one request's `kind` steps ("compute": wall time, "cpu": CPU time), mean over its items."""
    acc: dict[str, list[float]] = {}
    for k, name, ms in steps:
        if k == kind:
            acc.setdefault(name.rpartition("@")[0], []).append(ms)
    return {n: float(np.mean(v)) for n, v in acc.items()}


def _stage_rows(plan: Plan, traces: list, routes_ms: Callable[[str, str, int], float],
                local_ms: Callable[[str, str], float | None] | None = None) -> list[StageRow]:
    steps: dict[tuple[str, str], list[float]] = {}
    for tr in traces:
        for kind, name, ms in tr.steps:
            steps.setdefault((kind, name), []).append(ms)
    pieces = {p.id: p for p in plan.pieces}
    nbytes: dict[str, int] = {}
    for e in plan.edges:
        a, b = plan.assignment.get(e.src), plan.assignment.get(e.dst)
        if a and b and a != b:
            key = f"{a}->{b}"
            nbytes[key] = max(nbytes.get(key, 0), e.nbytes)
    rows = []
    order = {"feed": 0, "compute": 1, "transfer": 2}
    for (kind, name), ms in sorted(steps.items(), key=lambda kv: (order.get(kv[0][0], 3), kv[0][1])):
        if kind == "cpu":       # a compute step's CPU time: shown on its compute row
            continue
        predicted = None
        if kind == "feed":
            predicted = 0.0
        elif kind == "compute":
            node, _, site = name.rpartition("@")
            p = pieces.get(node)
            if p is not None and site in p.latency_ms:
                predicted = p.latency_ms[site]
        else:
            a, _, b = name.partition("->")
            predicted = routes_ms(a, b, nbytes.get(name, 0))
        local = (predicted if kind == "transfer" else local_ms(kind, name)) if local_ms else None
        cpu = steps.get(("cpu", name)) if kind == "compute" else None
        rows.append(StageRow(kind, name, float(np.percentile(ms, 50)), float(np.percentile(ms, 95)),
                             predicted, len(ms), local, float(np.percentile(cpu, 50)) if cpu else None))
    return rows


def run_example(name: str, duration_s: float = 10.0, *, backends: list[str] | None = None,
                progress: bool = True, seed: int = 0, request_timeout_s: float | None = None,
                max_requests: int | None = None, replicas: int = 1,
                allow_transforms: tuple[str, ...] | None = None, calibration: str | Path | None = None,
                auto_calibrate: bool = True, metrics_port: int = 0,
                on_deployed: Callable[[dict], None] | None = None) -> RunReport:
    """Plan, compile, deploy locally, send requests for `duration_s`, tear down; the report.

    `replicas`: workers per base-station and cloud site; `allow_transforms`: more transform modules
    the sites may run (runtime.deploy). `calibration`: a calibration file of this machine
    (`--calibration`); one made on another CPU is refused with a warning. With `auto_calibrate`, a
    machine with no calibration that fits its CPU is calibrated first (quickly, the plan's pieces among
    others: devices.calibrate.ensure_local_calibration) and the result cached. `metrics_port`: base of
    the consecutive loopback ports of the Prometheus metrics (runtime.deploy; 0: free ports);
    `on_deployed(describe())` is called once every site is up, before the requests start.
    """
    from tierplan.loader import load_app, load_fleet
    from tierplan.runtime.deploy import deploy
    from tierplan.runtime.links import LinkEmulator, route_table

    ex = find_example(name)
    app, fleet = load_app(ex / "app.yaml"), load_fleet(ex / "fleet.yaml")
    plan, plan_source = make_plan(app, fleet, ex / "app.yaml", ex / "fleet.yaml", progress=progress)
    if plan.status == "infeasible":
        from tierplan.errors import InfeasibleError
        raise InfeasibleError(f"{ex.name}: the plan is infeasible ({plan.reason}); nothing to run")
    if calibration is not None:
        from tierplan.devices.calibstore import use_calibration_file
        use_calibration_file(calibration)
    if auto_calibrate:
        from tierplan.devices.calibrate import ensure_local_calibration
        ensure_local_calibration(_plan_pieces(plan), progress=progress)
    overheads = _overheads(progress)
    make_inputs = example_inputs(ex, app)
    with tempfile.TemporaryDirectory(prefix="tierplan-run-") as tmp:
        manifest, root = None, None
        try:
            from tierplan.runtime.compile import compile_plan
        except ImportError:
            compile_plan = None
        if compile_plan is not None:
            res = compile_plan(plan, Path(tmp) / "artifacts", backends=backends or ["onnxruntime"],
                               progress=progress, fleet=fleet)
            manifest, root = res.manifest, res.out_dir
        ok, failed, errors, traces = 0, 0, [], []
        t_start = time.time()
        with deploy(plan, local=True, fleet=fleet, app=app, manifest=manifest, manifest_root=root,
                    request_timeout_s=request_timeout_s, replicas=replicas, allow_transforms=allow_transforms,
                    metrics_port=metrics_port) as svc:
            sites = svc.describe()
            if on_deployed is not None:
                on_deployed(sites)
            with _progress(progress) as bar:
                task = bar.add_task(f"{ex.name}: requests", total=duration_s)
                t0 = time.time()
                i = 0
                while time.time() - t0 < duration_s and (max_requests is None or i < max_requests):
                    try:
                        _, tr = svc.predict_traced(make_inputs(seed + i))
                        traces.append(tr)
                        ok += 1
                    except RuntimeFault as e:
                        failed += 1
                        if len(errors) < _ERRORS_KEPT:
                            errors.append(str(e))
                    i += 1
                    bar.update(task, completed=min(time.time() - t0, duration_s),
                               description=f"{ex.name}: {ok} ok, {failed} failed")
            emu = LinkEmulator(route_table(fleet, list(fleet.sites)))
            load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # the plan's latency starts when the source's data exists on its site; the client here first
    # ships it there over loopback (a "feed" step), which a real device does not do
    client = [t.latency_ms for t in traces]
    lat = [t.latency_ms - sum(ms for kind, _, ms in t.steps if kind == "feed") for t in traces]
    stages = _stage_rows(plan, traces, emu.transfer_ms, local_step_predictor(plan, app))
    # predicted here: the plan's placement at this machine's speed (cost model with the calibration of
    # `local`; links as the fleet declares them), scheduled as the runtime runs a request, plus the
    # runtime's own time per step and hop measured on this host; replayed: the same schedule with each
    # step's measured p50 (the latency semantics checked apart from the cost model and the load)
    graph = ExecGraph.from_plan(plan)
    fan = {n: t.fanout for n, t in app.transforms.items() if t.fanout != 1.0}
    run_ms = overheads.run_ms if overheads else 0.0   # the runner's call around a piece, beyond its own run
    local = {n: (r.predicted_local_ms or 0.0) + (run_ms if graph.kinds.get(n) == "piece" else 0.0)
             for r in stages if r.kind == "compute" for n in [r.name.rpartition("@")[0]]}
    measured = {r.name.rpartition("@")[0]: r.measured_p50_ms for r in stages if r.kind == "compute"}
    lat_local, lat_replay, lat_cpu = [], [], []
    for i, (t, ms) in enumerate(zip(traces, lat)):
        lat_local += _replays(graph, t.steps, local, emu.route, fan, overheads, (seed, i))
        lat_replay += _replays(graph, t.steps, measured, emu.route, fan, overheads, (seed, i))
        cpu = _own_steps(t.steps, "cpu")
        if cpu:   # the request less the time its steps waited for a CPU (wall - CPU time, through the schedule)
            wall = _own_steps(t.steps, "compute")
            waited = np.mean(_replays(graph, t.steps, wall, emu.route, fan, overheads, (seed, i))) - \
                np.mean(_replays(graph, t.steps, {**wall, **cpu}, emu.route, fan, overheads, (seed, i)))
            lat_cpu.append(ms - max(0.0, float(waited)))
    predicted = [s.latency_ms for s in plan.sinks.values()]
    pred_p95 = [getattr(s, "p95_ms", None) or s.latency_ms for s in plan.sinks.values()]
    return RunReport(example=ex.name, requests_ok=ok, requests_failed=failed,
                     measured_p50_ms=_pct(lat, 50), measured_p95_ms=_pct(lat, 95),
                     predicted_p50_ms=max(predicted) if predicted else None,
                     predicted_p95_ms=max(pred_p95) if pred_p95 else None,
                     predicted_local_p50_ms=_pct(lat_local, 50), predicted_local_p95_ms=_pct(lat_local, 95),
                     client_p50_ms=_pct(client, 50), client_p95_ms=_pct(client, 95),
                     stages=stages, duration_s=time.time() - t_start,
                     plan_source=plan_source, errors=errors, sites=sites, load_average_1m=load_1m,
                     cpus=cpu_identity().cores, replayed_p50_ms=_pct(lat_replay, 50),
                     replayed_p95_ms=_pct(lat_replay, 95),
                     measured_cpu_p50_ms=_pct(lat_cpu, 50), measured_cpu_p95_ms=_pct(lat_cpu, 95),
                     overhead=overheads.to_dict() if overheads else {})


def _overheads(progress: bool):
    """The runtime's own time per step, hop and request on this host (runtime.overhead: cached, else
    measured now with a probe deployment); None, with a warning, when the probe cannot run."""
    from tierplan.runtime.overhead import load_or_measure
    try:
        return load_or_measure(progress)
    except (RuntimeFault, InputError, OSError) as e:
        import warnings
        warnings.warn(f"runtime overhead probe failed ({e}); predicted here leaves the runtime's own time out")
        return None


def _plan_pieces(plan: Plan) -> list:
    """The plan's ONNX pieces as cost-model Pieces (what is about to run here)."""
    from tierplan.devices.pieces import piece_from_onnx

    out = []
    for p in plan.pieces:
        if p.kind == "piece" and p.file and Path(p.file).suffix == ".onnx" and Path(p.file).is_file():
            try:
                out.append(piece_from_onnx(p.file, piece_id=p.id, model=f"run:{p.model}"))
            except Exception:   # a piece the cost model cannot read is simply not a calibration sample
                continue
    return out


def _progress(enabled: bool):
    """The requests' bar on stderr: the run's duration filling with time (tierplan.console.progress)."""
    from rich.progress import TextColumn, TimeRemainingColumn

    from tierplan.console import ClockBar, progress
    return progress(enabled, TextColumn("{task.description}"), ClockBar(), TimeRemainingColumn())
