"""`tierplan run EXAMPLE`: plan, compile, deploy every device class on this machine, send requests, compare.

Orchestration of the whole path on localhost (the top layer: it drives planner, runtime and
devices): load examples/<name>/app.yaml and fleet.yaml, plan (planner.api; the plan embeds the app
and the fleet), compile (runtime.compile), deploy locally every edge device class of the plan with
the base-station and cloud sites they share (runtime.deploy, runtime.fleetrun: one agent per
class by default, the shared sites with the plan's instance counts scaled to the devices that run),
send each class's requests at its sources' rates (Poisson arrivals, so the shared sites see the
plan's mixed load) for `duration_s`, then tear everything down and report measured against
predicted latency per class, per shared site and per stage.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
import time
import urllib.request
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from tierplan.devices.host import cpu_identity
from tierplan.planner.plan import Plan
from tierplan.runtime.graph import ExecGraph
from tierplan.runtime.service import Trace
from tierplan.errors import InputError, RuntimeFault
from tierplan.spec import AppSpec, FleetSpec

if TYPE_CHECKING:
    from tierplan.adapt import Adapter, LinkStep
    from tierplan.planner.adaptpolicy import AdaptPolicy

__all__ = ["RunReport", "StageRow", "ClassRow", "SiteRow", "find_example", "make_plan", "example_inputs",
           "run_example", "request_streams"]

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
class ClassRow:
    """One device class's requests to one group of sinks: measured against predicted here and on its devices."""

    device_class: str          # "" for a plan with one placement
    sinks: list[str]
    requests: int
    failed: int
    rate_hz: float             # requests per second sent for this class and these sinks
    measured_p50_ms: float | None
    measured_p95_ms: float | None
    predicted_local_p50_ms: float | None     # the class's placement at this machine's speed (runtime.schedule)
    predicted_local_p95_ms: float | None
    predicted_ms: float | None               # the plan's figure on the class's own devices
    slo_ms: float | None
    slo_met: bool | None                     # measured p95 within the SLO (here, on this machine)
    plan_meets_slo: bool | None              # the plan's verdict for the class's devices
    sources: list[str] = field(default_factory=list)   # the plan's sources these requests fed


@dataclass
class SiteRow:
    """A site of the run: its workers, the classes it serves, how busy it was."""

    site: str
    tier: str
    workers: int
    classes: list[str]
    runs: int                  # node runs (a batch counts once)
    utilisation: float | None  # compute seconds / (duration x workers)
    mean_queue: float | None   # deliveries waiting for its compute thread, mean of the health checks
    mean_batch: float | None   # requests per run of its pieces
    scaling: str = ""          # how its worker count was chosen (runtime.fleetrun)
    # batches that did not fill: how long their oldest request waited for them to start (max_wait_ms
    # plus the batching thread's own delay on this host; simulate --profile replays it)
    batch_wait_ms: float | None = None


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
    classes: list[ClassRow] = field(default_factory=list)     # per device class (and sink group)
    site_rows: list[SiteRow] = field(default_factory=list)    # per site
    classes_run: list[str] = field(default_factory=list)
    classes_not_run: list[str] = field(default_factory=list)
    devices_per_class: int = 1
    load: str = "rate"                     # "rate": each class at its sources' rates; "sequential": one at a time
    rate_scale: float = 1.0
    # every request that ended with a result: its class, latency (less the client's feed) and steps, so that
    # `tierplan simulate PLAN --profile RUN.json` calibrates the simulator from this run (simulations.calibration)
    traces: list[dict] = field(default_factory=list)
    plan_path: str | None = None           # where the plan that ran was saved (--plan-out)
    adapt: dict | None = None              # --adapt: the policy, every decision and switch (tierplan.adapt)
    # the batching sites' caps as deployed (--batch; simulate --profile replays them): max_batch, max_wait_ms
    batch: dict = field(default_factory=dict)

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
                "overhead": self.overhead, "classes": [c.__dict__ for c in self.classes],
                "site_rows": [r.__dict__ for r in self.site_rows], "classes_run": self.classes_run,
                "classes_not_run": self.classes_not_run, "devices_per_class": self.devices_per_class,
                "load": self.load, "rate_scale": self.rate_scale, "plan_path": self.plan_path,
                "batch": self.batch, "traces": self.traces, **({"adapt": self.adapt} if self.adapt is not None else {})}


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
    """The planner's plan (planner.api.plan_app, the app and fleet embedded); `progress` draws the
    planner's bar on stderr (tierplan.console.solver_progress)."""
    from tierplan.console import solver_progress
    from tierplan.planner.api import plan_app
    with solver_progress(progress, 10.0) as hook:   # plan_app's default time limit
        plan = plan_app(app, fleet, progress=hook)
    return (plan.model_copy(update={"app_path": str(app_path), "fleet_path": str(fleet_path)}),
            "tierplan.planner.api.plan_app")


def example_inputs(example_dir: Path, app: AppSpec) -> Callable[[int], dict[str, np.ndarray]]:
    """`make_inputs(seed)` from examples/<name>/inputs.py, else random tensors of the declared shapes."""
    f = example_dir / "inputs.py"
    if f.is_file():
        spec = importlib.util.spec_from_file_location(f"tierplan_example_inputs_{example_dir.name}", f)
        if spec is None or spec.loader is None:
            raise InputError(f"{f}: cannot load it as a Python module. To fix: check the file")
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


def local_step_predictor(plan: Plan, app: AppSpec,
                         classes: tuple[str, ...] = ()) -> Callable[[str, str], float | None]:
    """Predicted ms of one compute step `node@site` on this machine (the calibrated device `local`).

    On one machine every site computes at this machine's speed while links are emulated as the
    fleet declares them, so the run is compared with the plan's placement re-costed for `local`
    (the fleet devices' figures are shown beside it, but a laptop cannot run at a T4's speed).
    `classes`: the device classes of a fleet run (nodes named `CLASS/NODE`, runtime.fleetrun).
    """
    from tierplan.devices.catalog import get_device
    from tierplan.runtime.fleetrun import split_node
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
                elif split_node(_plain(node), classes)[1] in app.transforms:
                    ms = cm.transform_ms(app.transforms[split_node(_plain(node), classes)[1]], local)
            except Exception:  # a piece the cost model cannot read: no local prediction for it
                ms = None
            cache[node] = ms
        return cache[node]

    return lambda kind, name: predict(name.rpartition("@")[0]) if kind == "compute" else None


_DRAWS = 20   # schedule replays per request, each with its own draws of the links' delays (jitter)


def _replays(graph: ExecGraph, steps: list, compute: dict[str, float], route: Callable[[str, str], list],
             declared_fanout: dict[str, float], overhead, seed: tuple,
             sources: list[str] | None = None) -> list[float]:
    """One request's latency as the runtime schedules it (runtime.schedule: one compute thread per site,
    fan-out items one after another through the sites and FIFO links they cross, links' delays drawn
    with their jitter), with the request's own fan-out counts (from its trace `steps`), `compute[node]`
    ms per step and the host's measured runtime `overhead` (runtime.overhead.Overheads or None):
    _DRAWS replays, the draws seeded by `seed`; `sources`: the ones the request fed."""
    from tierplan.runtime.schedule import fanout_calls, request_ms

    item_nbytes = {(e.src, e.dst): e.nbytes / declared_fanout[e.src]
                   for e in graph.plan.edges if declared_fanout.get(e.src)}
    items = fanout_calls(graph, steps, declared_fanout)
    step_ms, hop_ms, req_ms = (overhead.step_ms, overhead.hop_ms, overhead.request_ms) if overhead else (0.0, 0.0, 0.0)
    return [req_ms + request_ms(graph, compute, route, items, item_nbytes, step_ms, hop_ms,
                                rng=np.random.default_rng([*seed, k]), sources=sources) for k in range(_DRAWS)]


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


@dataclass(frozen=True)
class Stream:
    """Requests of one device class feeding one group of sources (those whose sinks overlap) at `rate_hz`."""

    device_class: str | None
    sources: tuple[str, ...]       # the plan's source ids
    rate_hz: float


def request_streams(app: AppSpec, plan: Plan, classes: tuple[str, ...], devices_per_class: int,
                    rate_scale: float = 1.0) -> list[Stream]:
    """One stream per class and group of sources that feed a common sink, at the group's slowest
    source rate x the class's devices x `rate_scale` (a source without a rate: 1 Hz)."""
    graph = ExecGraph.from_plan(plan)
    groups: list[tuple[set[str], set[str]]] = []   # (sources, sinks)
    for src in graph.sources():
        sinks = set(graph.sinks_reached([src]))
        for g in groups:
            if g[1] & sinks:
                g[0].add(src)
                g[1].update(sinks)
                break
        else:
            groups.append(({src}, sinks))
    order = graph.sources()
    out = []
    for cls in (classes or (None,)):
        for srcs, _ in groups:
            rates = [app.sources[s].rate_hz if s in app.sources and app.sources[s].rate_hz else 1.0 for s in srcs]
            out.append(Stream(cls, tuple(sorted(srcs, key=order.index)), min(rates) * devices_per_class * rate_scale))
    return out


def _arrivals(streams: list[Stream], duration_s: float, seed: int, sequential: bool) -> list[tuple[float, int]]:
    """(time s, stream index) of every request: Poisson arrivals per stream (seeded), merged in time
    order; `sequential`: the streams in turn, times unused (each request waits for the one before)."""
    if sequential:
        return [(0.0, k % len(streams)) for k in range(1_000_000)]
    out: list[tuple[float, int]] = []
    for k, st in enumerate(streams):
        if st.rate_hz <= 0:
            continue
        rng = np.random.default_rng([seed, k])
        t = float(rng.exponential(1.0 / st.rate_hz))
        while t < duration_s:
            out.append((t, k))
            t += float(rng.exponential(1.0 / st.rate_hz))
    return sorted(out)


@dataclass
class _Done:
    stream: int
    sources: tuple[str, ...]        # executable source ids the request fed
    trace: Trace | None             # None when it failed
    error: str = ""
    t_s: float = 0.0                # when it was sent, seconds after the first arrival's time 0


def _send(svc, streams: list[Stream], arrivals: list[tuple[float, int]], make_inputs, seed: int, duration_s: float,
          max_requests: int | None, sequential: bool, on_tick: Callable[[int, int], None]) -> list[_Done]:
    """Send the requests (at their arrival times, or one after another) and collect how each ended."""
    run = svc.fleet_run
    done: list[_Done] = []
    lock = threading.Lock()

    def exe_sources(st: Stream) -> tuple[str, ...]:
        if run is not None and run.prefixed and st.device_class is not None:
            return tuple(run.sources[st.device_class][s] for s in st.sources)
        return st.sources

    def finish(k: int, p, t_s: float) -> None:
        try:
            _, tr = svc.wait(p)
            d = _Done(k, exe_sources(streams[k]), tr, t_s=t_s)
        except RuntimeFault as e:
            d = _Done(k, exe_sources(streams[k]), None, str(e), t_s)
        with lock:
            done.append(d)
            on_tick(sum(1 for x in done if x.trace is not None), sum(1 for x in done if x.trace is None))

    def start(k: int, inputs: dict[str, np.ndarray]) -> None:
        st = streams[k]
        t_s = time.time() - t0
        try:
            p = svc.submit(inputs, device_class=st.device_class)
        except (RuntimeFault, InputError) as e:
            with lock:
                done.append(_Done(k, exe_sources(st), None, str(e), t_s))
            return
        finish(k, p, t_s)

    t0 = time.time()
    with futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="run-wait") as pool:
        pending = []
        for i, (at, k) in enumerate(arrivals):
            if (max_requests is not None and i >= max_requests) or time.time() - t0 >= duration_s:
                break
            if not sequential:
                delay = at - (time.time() - t0)
                if delay > 0:
                    time.sleep(delay)
            st = streams[k]
            inputs = {s: v for s, v in make_inputs(seed + i).items() if s in st.sources}
            if sequential:
                start(k, inputs)
            else:   # open loop: a submit that waits for a busy site must not hold back the next arrivals
                pending.append(pool.submit(start, k, inputs))
        futures.wait(pending)
    return done


def _scrape(address: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a worker's Prometheus endpoint ({} when it does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families
    try:
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out: dict[tuple[str, tuple], float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out[(smp.name, tuple(sorted(smp.labels.items())))] = float(smp.value)
    return out


def _site_rows(svc, duration_s: float, queues: dict[str, float]) -> list[SiteRow]:
    """Per site: workers, the classes it serves, runs, utilisation, mean queue, mean batch (of its pieces)."""
    graph, run = svc.graph, svc.fleet_run
    busy: dict[str, float] = {}
    runs: dict[str, float] = {}
    batch_sum: dict[str, float] = {}
    batch_n: dict[str, float] = {}
    wait_sum: dict[str, float] = {}
    wait_n: dict[str, float] = {}
    for st in svc.sites.values():
        if not st.metrics_address:
            continue
        for (name, labels), v in _scrape(st.metrics_address).items():
            lab = dict(labels)
            node = lab.get("node", "")
            if name == "tierplan_stage_latency_seconds_sum":
                busy[st.site] = busy.get(st.site, 0.0) + v
            elif name == "tierplan_stage_latency_seconds_count":
                runs[st.site] = runs.get(st.site, 0.0) + v
            elif name.startswith("tierplan_stage_batch_size_") and graph.kinds.get(node) == "piece":
                acc = batch_sum if name.endswith("_sum") else batch_n if name.endswith("_count") else None
                if acc is not None:
                    acc[st.site] = acc.get(st.site, 0.0) + v
            elif name in ("tierplan_stage_batch_wait_seconds_sum", "tierplan_stage_batch_wait_seconds_count"):
                acc = wait_sum if name.endswith("_sum") else wait_n
                acc[st.site] = acc.get(st.site, 0.0) + v
    tiers = {name: c.tier for name, c in svc.plan.fleet_model().classes.items()}
    rows = []
    for site in graph.used_sites():
        n = svc.replicas.get(site, 1)
        users = sorted({run.class_of(nd) or "" for nd in graph.nodes_on(site)} - {""}) if run else []
        rows.append(SiteRow(site=site, tier=tiers.get(site, ""), workers=n, classes=users,
                            runs=int(runs.get(site, 0)),
                            utilisation=busy[site] / (duration_s * n) if site in busy and duration_s > 0 else None,
                            mean_queue=queues.get(site),
                            mean_batch=batch_sum[site] / batch_n[site] if batch_n.get(site) else None,
                            scaling=(run.scaling.get(site, "") if run else ""),
                            batch_wait_ms=1e3 * wait_sum[site] / wait_n[site] if wait_n.get(site) else None))
    return rows


def run_example(name: str, duration_s: float = 10.0, *, backends: list[str] | None = None,
                progress: bool = True, seed: int = 0, request_timeout_s: float | None = None,
                max_requests: int | None = None, replicas: int | None = None,
                allow_transforms: tuple[str, ...] | None = None, calibration: str | Path | None = None,
                auto_calibrate: bool = True, metrics_port: int = 0,
                on_deployed: Callable[[dict], None] | None = None, classes: str | None = None,
                devices_per_class: int = 1, rate_scale: float = 1.0, sequential: bool = False,
                plan_out: str | Path | None = None, adapt: "AdaptPolicy | None" = None,
                link_steps: Sequence["LinkStep"] = (), batch: str | None = None) -> RunReport:
    """Plan, compile, deploy every device class locally, send requests for `duration_s`, tear down; the report.

    `classes`: "NAME[,NAME]" runs only those edge classes (default: all of the plan's);
    `devices_per_class`: agents per class (the shared sites' workers scale with them: runtime.fleetrun);
    `rate_scale`: multiplies every source's rate (each class sends its sources' rate_hz x devices);
    `sequential`: one request after another instead (the classes and source groups in turn), the
    latency without queueing. `replicas`: workers per base-station and cloud site (default: the
    plan's instances scaled to the devices that run); `allow_transforms`: more transform modules the
    sites may run (runtime.deploy). `calibration`: a calibration file of this machine
    (`--calibration`); one made on another CPU is refused with a warning. With `auto_calibrate`, a
    machine with no calibration that fits its CPU is calibrated first (the plan's pieces among others:
    devices.calibrate.ensure_local_calibration) and the result cached. `metrics_port`: base of the
    consecutive loopback ports of the Prometheus metrics (runtime.deploy; 0: free ports);
    `on_deployed(describe())` is called once every site is up, before the requests start.
    `plan_out`: save the plan that runs there (a plan folder: `tierplan simulate PLAN --profile RUN.json`).
    `adapt`: a planner.adaptpolicy.AdaptPolicy: re-plan on drift and move live while the requests run
    (tierplan.adapt.Adapter; the report's `adapt` logs it); `link_steps`: tierplan.adapt.LinkStep
    changes of the emulated links at their times into the run (`--link-step`). `batch`: "MAX[:WAIT_MS]"
    or "off", the cloud sites' dynamic batching (default: runtime.options.StageOptions', 8 requests, 2 ms).
    """
    from tierplan.loader import load_app, load_fleet
    from tierplan.runtime.compile import compile_plan
    from tierplan.runtime.deploy import deploy
    from tierplan.runtime.fleetrun import parse_classes, plan_classes, split_node
    from tierplan.runtime.links import LinkEmulator, route_table

    if not (np.isfinite(rate_scale) and rate_scale > 0):
        raise InputError(f"--rate-scale {rate_scale}: must be a number above 0. To fix: e.g. --rate-scale 0.5")
    caps = parse_batch(batch)
    ex = find_example(name)
    app, fleet = load_app(ex / "app.yaml"), load_fleet(ex / "fleet.yaml")
    plan, plan_source = make_plan(app, fleet, ex / "app.yaml", ex / "fleet.yaml", progress=progress)
    if plan.status == "infeasible":
        from tierplan.errors import InfeasibleError
        raise InfeasibleError(f"{ex.name}: the plan is infeasible ({plan.reason}); nothing to run")
    chosen = parse_classes(plan, classes)
    if plan_out is not None:
        Path(plan_out).parent.mkdir(parents=True, exist_ok=True)
        plan.save(plan_out)
    if calibration is not None:
        from tierplan.devices.calibstore import use_calibration_file
        use_calibration_file(calibration)
    if auto_calibrate:
        from tierplan.devices.calibrate import ensure_local_calibration
        ensure_local_calibration(_plan_pieces(plan), progress=progress)
    overheads = _overheads(progress)
    make_inputs = example_inputs(ex, app)
    streams = request_streams(app, plan, tuple(chosen), devices_per_class, rate_scale)
    arrivals = _arrivals(streams, duration_s, seed, sequential)
    with tempfile.TemporaryDirectory(prefix="tierplan-run-") as tmp:
        res = compile_plan(plan, Path(tmp) / "artifacts", backends=backends or ["onnxruntime"], progress=progress)
        t_start = time.time()
        with deploy(plan, local=True, manifest=res.manifest, manifest_root=res.out_dir,
                    request_timeout_s=request_timeout_s, replicas=replicas, allow_transforms=allow_transforms,
                    metrics_port=metrics_port, classes=chosen, devices_per_class=devices_per_class,
                    batch=caps) as svc:
            sites = svc.describe()
            if on_deployed is not None:
                on_deployed(sites)
            with _progress(progress) as bar:
                task = bar.add_task(f"{ex.name}: requests", total=duration_s)
                t0 = time.time()
                svc.reset_queues()
                adapter, timers = _start_adapt(svc, plan, adapt, link_steps)

                def tick(ok: int, failed: int) -> None:
                    bar.update(task, completed=min(time.time() - t0, duration_s),
                               description=f"{ex.name}: {ok} ok, {failed} failed")
                try:
                    done = _send(svc, streams, arrivals, make_inputs, seed, duration_s, max_requests, sequential, tick)
                finally:
                    adapt_report = _stop_adapt(adapter, timers)
                sent_s = max(time.time() - t0, 1e-9)
            queues = svc.mean_queues()
            site_rows = _site_rows(svc, sent_s, queues)
            exe_plan, graph, run = svc.plan, svc.graph, svc.fleet_run
            svc_prefix = svc.node_prefix
            emu = LinkEmulator(route_table(exe_plan.fleet_model(), [x for x in dict.fromkeys(graph.sites.values()) if x]))
            load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    exe_classes = run.classes if run is not None and run.prefixed else ()
    traces = [d.trace for d in done if d.trace is not None]
    own_latency = _less_feed(traces)
    errors = list(dict.fromkeys(d.error for d in done if d.error))[:_ERRORS_KEPT]
    # the plan's latency starts when the source's data exists on its site; the client here first
    # ships it there over loopback (a "feed" step), which a real device does not do
    stages = _stage_rows(exe_plan, traces, emu.transfer_ms, local_step_predictor(exe_plan, app, exe_classes))
    # predicted here: the plan's placement at this machine's speed (cost model with the calibration of
    # `local`; links as the fleet declares them), scheduled as the runtime runs a request, plus the
    # runtime's own time per step and hop measured on this host; replayed: the same schedule with each
    # step's measured p50 (the latency semantics checked apart from the cost model and the load)
    fan = {n: app.transforms[base].fanout for n in graph.nodes for base in [split_node(_plain(n), exe_classes)[1]]
           if base in app.transforms and app.transforms[base].fanout != 1.0}
    run_ms = overheads.run_ms if overheads else 0.0   # the runner's call around a piece, beyond its own run
    local = {n: (r.predicted_local_ms or 0.0) + (run_ms if graph.kinds.get(n) == "piece" else 0.0)
             for r in stages if r.kind == "compute" for n in [r.name.rpartition("@")[0]]}
    measured = {r.name.rpartition("@")[0]: r.measured_p50_ms for r in stages if r.kind == "compute"}
    per: dict[int, dict[str, list[float]]] = {}
    for i, d in enumerate(done):
        acc = per.setdefault(d.stream, {"lat": [], "local": [], "replay": [], "cpu": [], "client": []})
        if d.trace is None:
            continue
        t = d.trace
        ms = own_latency(t)
        acc["lat"].append(ms)
        acc["client"].append(t.latency_ms)
        if not _of_generation(t.steps, svc_prefix):   # --adapt: a request of an earlier plan, not in the final graph
            continue
        srcs = [svc_prefix + x for x in d.sources]   # a live move's generation: its own sources (gK~NODE)
        acc["local"] += _replays(graph, t.steps, local, emu.route, fan, overheads, (seed, i), srcs)
        acc["replay"] += _replays(graph, t.steps, measured, emu.route, fan, overheads, (seed, i), srcs)
        cpu = _own_steps(t.steps, "cpu")
        if cpu:   # the request less the time its steps waited for a CPU (wall - CPU time, through the schedule)
            wall = _own_steps(t.steps, "compute")
            waited = np.mean(_replays(graph, t.steps, wall, emu.route, fan, overheads, (seed, i), srcs)) - \
                np.mean(_replays(graph, t.steps, {**wall, **cpu}, emu.route, fan, overheads, (seed, i), srcs))
            acc["cpu"].append(ms - max(0.0, float(waited)))

    def every(key: str) -> list[float]:
        return [x for acc in per.values() for x in acc[key]]
    class_rows = _class_rows(plan, streams, done, per, graph, run)
    predicted = [s.latency_ms for s in plan.sinks.values()]
    pred_p95 = [getattr(s, "p95_ms", None) or s.latency_ms for s in plan.sinks.values()]
    ok = len(traces)
    return RunReport(example=ex.name, requests_ok=ok, requests_failed=len(done) - ok,
                     measured_p50_ms=_pct(every("lat"), 50), measured_p95_ms=_pct(every("lat"), 95),
                     predicted_p50_ms=max(predicted) if predicted else None,
                     predicted_p95_ms=max(pred_p95) if pred_p95 else None,
                     predicted_local_p50_ms=_pct(every("local"), 50), predicted_local_p95_ms=_pct(every("local"), 95),
                     client_p50_ms=_pct(every("client"), 50), client_p95_ms=_pct(every("client"), 95),
                     stages=stages, duration_s=time.time() - t_start,
                     plan_source=plan_source, errors=errors, sites=sites, load_average_1m=load_1m,
                     cpus=cpu_identity().cores, replayed_p50_ms=_pct(every("replay"), 50),
                     replayed_p95_ms=_pct(every("replay"), 95),
                     measured_cpu_p50_ms=_pct(every("cpu"), 50), measured_cpu_p95_ms=_pct(every("cpu"), 95),
                     overhead=overheads.to_dict() if overheads else {}, classes=class_rows, site_rows=site_rows,
                     classes_run=list(chosen), classes_not_run=[c for c in plan_classes(plan) if c not in chosen],
                     devices_per_class=devices_per_class, load="sequential" if sequential else "rate",
                     rate_scale=rate_scale, plan_path=str(Path(plan_out).resolve()) if plan_out else None,
                     adapt=adapt_report, batch=_batch_caps(caps),
                     traces=[{"device_class": d.trace.device_class, "t_s": d.t_s, "stream": d.stream,   # classes[stream]
                              "latency_ms": own_latency(d.trace),
                              "steps": [list(s) for s in d.trace.steps]} for d in done if d.trace is not None])


def parse_batch(text: str | None) -> tuple[int, float] | None:
    """`--batch MAX[:WAIT_MS]` (or "off": max 1) as (max_batch, max_wait_ms); None: the runtime's defaults."""
    if text is None or text.strip().lower() == "auto":
        return None
    from tierplan.runtime.options import StageOptions
    if text.strip().lower() == "off":
        return 1, StageOptions.max_wait_ms
    head, _, wait = text.strip().partition(":")
    try:
        caps = int(head), float(wait) if wait else StageOptions.max_wait_ms
    except ValueError:
        caps = (0, -1.0)
    if not (1 <= caps[0] <= 4096 and 0 <= caps[1] <= 60_000):
        raise InputError(f"--batch {text!r}: expected MAX[:WAIT_MS] with MAX 1-4096 and WAIT_MS 0-60000, "
                         "auto or off. To fix: e.g. --batch 8:10")
    return caps


def _batch_caps(caps: tuple[int, float] | None) -> dict:
    """The batching caps that ran, as the report records them."""
    from tierplan.runtime.options import StageOptions
    b, w = caps if caps is not None else (StageOptions.max_batch, StageOptions.max_wait_ms)
    return {"max_batch": b, "max_wait_ms": w}


def _plain(node: str) -> str:
    """A node id without the generation prefix a live move gives it (`g2~`: runtime.livemove)."""
    head, sep, rest = node.partition("~")
    return rest if sep and head[:1] == "g" and head[1:].isdigit() else node


def _of_generation(steps: list, prefix: str) -> bool:
    """True when the request's compute steps ran on the nodes of generation `prefix`."""
    return all((name != _plain(name)) == bool(prefix) and name.startswith(prefix)
               for kind, name, _ in steps if kind == "compute")


def _start_adapt(svc, plan: Plan, policy: "AdaptPolicy | None",
                 link_steps: Sequence["LinkStep"]) -> tuple["Adapter | None", list[threading.Timer]]:
    """`--adapt`'s controller and the `--link-step` timers, started with the requests."""
    from tierplan.adapt import Adapter
    from tierplan.runtime.livemove import set_link
    adapter = Adapter(svc, plan, policy).start() if policy is not None else None
    timers = [threading.Timer(st.at_s, set_link, args=(svc, st.site), kwargs={"up_mbps": st.up_mbps,
                                                                            "down_mbps": st.down_mbps})
              for st in link_steps]
    for t in timers:
        t.daemon = True
        t.start()
    return adapter, timers


def _stop_adapt(adapter: "Adapter | None", timers: list[threading.Timer]) -> dict | None:
    for t in timers:
        t.cancel()
    if adapter is None:
        return None
    adapter.stop()
    return adapter.report()


def _less_feed(traces: list[Trace]) -> Callable[[Trace], float]:
    """A request's latency from the moment its input is on its source site: the client's loopback feed
    is taken out, but only up to the feed's median to that site. A "feed" step ends when the site takes
    the delivery, so beyond the median it is the input waiting for the site's busy compute thread
    (another request or class running there), which a device's own request waits for too."""
    feeds: dict[str, list[float]] = {}
    for t in traces:
        for kind, name, ms in t.steps:
            if kind == "feed":
                feeds.setdefault(name, []).append(ms)
    floor = {name: float(np.median(v)) for name, v in feeds.items()}

    def latency(t: Trace) -> float:
        return t.latency_ms - sum(min(ms, floor[name]) for kind, name, ms in t.steps if kind == "feed")
    return latency


def _class_rows(plan: Plan, streams: list[Stream], done: list[_Done], per: dict[int, dict[str, list[float]]],
                graph: ExecGraph, run) -> list[ClassRow]:
    """One row per stream (a class and its group of sources): measured vs predicted here and on its devices."""
    rows = []
    for k, st in enumerate(streams):
        acc = per.get(k, {"lat": [], "local": []})
        cls = st.device_class or ""
        sinks = [n for n in ExecGraph.from_plan(plan).sinks_reached(list(st.sources))]
        names = [n.removeprefix("sink:") for n in sinks]
        fleet_sinks = plan.class_sinks.get(cls) or plan.sinks
        lat = [fleet_sinks[n].latency_ms for n in names if n in fleet_sinks]
        slos = [slo_ms for n in names if n in fleet_sinks and (slo_ms := fleet_sinks[n].slo_ms)]
        slo = min(slos) if slos else None
        p95 = _pct(acc["lat"], 95)
        cov = plan.coverage.get(cls)
        rows.append(ClassRow(device_class=cls, sinks=names, sources=list(st.sources),
                             requests=sum(1 for d in done if d.stream == k),
                             failed=sum(1 for d in done if d.stream == k and d.trace is None), rate_hz=st.rate_hz,
                             measured_p50_ms=_pct(acc["lat"], 50), measured_p95_ms=p95,
                             predicted_local_p50_ms=_pct(acc["local"], 50),
                             predicted_local_p95_ms=_pct(acc["local"], 95),
                             predicted_ms=max(lat) if lat else None, slo_ms=slo,
                             slo_met=(p95 <= slo) if p95 is not None and slo else None,
                             plan_meets_slo=cov.meets_slo if cov is not None else None))
    return rows


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
