"""simulate(plan, fleet, ...): replay each strategy's placement over the whole fleet and compare them.

Strategies are assignments (piece -> site class, per edge class): "optimal" is the plan itself,
the others come from `plan.baselines` (all-device, all-cloud, best-split, greedy; all-device and
all-cloud are derived when the plan lacks them). Every strategy sees the same arrivals (common
random numbers), so differences between them are the placement's, not the dice's.

Servers per site instance: the plan's `instances` for "optimal" (rented instances per site
class in all, spread evenly over its sites); otherwise (and for baselines) enough replicas to keep
the offered load under the class's `max_utilization`, capped by `max_instances` (base stations
without a cap get 1, clouds are elastic). Edge devices serve
their own requests one at a time. Cost per hour = instances x replicas x $/hour of every site
class that computes, plus egress $/GB on the bytes that leave an upper site.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from tierplan.planner.plan import Plan
from tierplan.simulations.batching import BatchPolicy, batch_stages, check_link_sharing, parse_batching
from tierplan.simulations.calibration import ServiceProfile, load_profile
from tierplan.simulations.engine_common import EngineResult, sink_done
from tierplan.simulations.engine_fast import FastPathUnsupported, run_fast
from tierplan.simulations.engine_simpy import run_simpy
from tierplan.simulations.fleetview import FleetView, fleet_view
from tierplan.simulations.journey import Journey, compile_journeys, resolve_site
from tierplan.simulations.report import SimReport, SinkStats, StrategyResult
from tierplan.simulations.scenario import (ArrivalSpec, FailureWindow, LinkVariation, MobilityEvent,
                                  parse_arrivals, parse_failure, parse_link, parse_mobility)
from tierplan.simulations.world import World, strategy_rng
from tierplan.errors import InputError

__all__ = ["simulate", "DEFAULT_STRATEGIES", "BASELINE_ALIASES", "strategy_assignments"]

DEFAULT_STRATEGIES = ("optimal", "all-device", "all-cloud", "best-split", "greedy")
# the planner's baseline names -> the names strategies go by here (either is accepted)
BASELINE_ALIASES = {"all_on_device": "all-device", "all_in_cloud": "all-cloud", "neurosurgeon": "best-split",
                    "best_split": "best-split", "all_device": "all-device", "all_cloud": "all-cloud"}
# above this many stage visits (requests x stages) fast=None picks the vectorised path: SimPy runs
# about 20k-50k visits per second, so smaller runs take it a second or two either way
_FAST_THRESHOLD_VISITS = 50_000
_CDF_POINTS = 201
_SERIES_BINS = 60
_SECONDS_PER_HOUR = 3600.0
_BYTES_PER_GB = 1e9
_MS = 1000.0
_Z95 = 1.6448536269514722  # standard normal 95th percentile


# ---------------------------------------------------------------------------- strategies
def strategy_assignments(plan: Plan, names: Iterable[str] | None) -> tuple[dict[str, Callable[[str], dict]], dict[str, str]]:
    """name -> (origin class -> node -> site), and name -> reason for strategies that cannot run."""
    work_ids = [p.id for p in plan.pieces if p.kind in ("piece", "transform")]
    available: dict[str, Callable[[str], dict]] = {}
    skipped: dict[str, str] = {}
    if plan.assignment or plan.per_class:
        available["optimal"] = lambda o, p=plan: {**p.assignment, **p.per_class.get(o, {})}
    else:
        skipped["optimal"] = f"the plan has no assignment (status {plan.status}: {plan.reason or 'no reason given'})"
    for raw, b in plan.baselines.items():
        name = BASELINE_ALIASES.get(raw, raw)
        per_class = getattr(b, "per_class", None) or {}
        if b.assignment or per_class:
            available[name] = lambda o, a=dict(b.assignment), pc=dict(per_class): {**a, **pc.get(o, {})}
        else:
            skipped[name] = b.reason or "the baseline has no assignment"
    for name, tier in (("all-device", "edge"), ("all-cloud", "cloud")):
        if name not in available and name not in skipped:
            available[name] = lambda o, t=tier: {pid: t for pid in work_ids}
    if names is None:
        wanted = [n for n in DEFAULT_STRATEGIES if n in available or n in skipped]
        wanted += [n for n in available if n not in wanted]
    else:
        wanted = [BASELINE_ALIASES.get(n, n) for n in names]
        unknown = [n for n in wanted if n not in available and n not in skipped]
        if unknown:
            raise InputError(f"--strategies: unknown strategy {unknown[0]!r}; this plan has "
                             f"{', '.join(list(available) + list(skipped))}")
    return ({n: available[n] for n in wanted if n in available},
            {n: skipped[n] for n in wanted if n in skipped})


# ---------------------------------------------------------------------------- plan lookups
def _app_spec(plan: Plan):
    """The plan's app.yaml (for source rates and sink destinations the plan does not carry), or None."""
    if not plan.app_path:
        return None
    try:
        from tierplan.loader import load_app
        return load_app(plan.app_path)
    except Exception:  # the plan's figures are used instead; a missing app file is not fatal here
        return None


def _lookups(plan: Plan, fleet: FleetView, rates: dict[str, float] | None,
             latency_ms: dict[tuple[str, str], float] | None, app_spec=None):
    pieces = {p.id: p for p in plan.pieces}
    app_box: list = [app_spec] if app_spec is not None else []

    def app():
        if not app_box:
            app_box.append(_app_spec(plan))
        return app_box[0]

    def app_source(src):
        return app().sources.get(src) if app() is not None else None

    def deliver_for(sink_id: str) -> str | None:
        spec = app().sinks.get(sink_id.removeprefix("sink:")) if app() is not None else None
        return spec.deliver_to if spec is not None else None

    def rate_for(src: str) -> float:
        if rates and src in rates:
            return float(rates[src])
        r = getattr(pieces[src], "rate_hz", None)
        if r is None and app_source(src) is not None:
            r = app_source(src).rate_hz
        if r is None or r <= 0:
            raise InputError(f"plan: source {src!r} has no request rate (rate_hz). To fix: pass "
                             f"rates={{'{src}': HZ}} or keep app_path in plan.json")
        return float(r)

    def origins_for(src: str) -> list[str]:
        at = getattr(pieces[src], "at", None) or getattr(pieces[src], "pin", None) or plan.assignment.get(src)
        if at is None and app_source(src) is not None:
            at = app_source(src).at
        if at is None or at == "edge":
            edges = fleet.edge_classes()
            if not edges:
                raise InputError("fleet: no edge site class to produce requests")
            return edges
        if at in fleet.classes:
            return [at]
        for c in fleet.classes.values():
            if c.tier == at:
                return [c.name]
        raise InputError(f"plan: source {src!r} is produced at {at!r}, which is not in the fleet")

    def service_ms(pp, site: str) -> float:
        if pp.kind in ("source", "sink"):
            return 0.0
        if latency_ms and (pp.id, site) in latency_ms:
            v = latency_ms[(pp.id, site)]
            if isinstance(v, (tuple, list)):  # (p50_ms, p95_ms) measured: a log-normal with that median and p95
                p50, p95 = float(v[0]), max(float(v[1]), float(v[0]))
                sigma = math.log(p95 / p50) / _Z95 if p50 > 0 else 0.0
                return (p50 * math.exp(sigma ** 2 / 2), sigma)
            return float(v)
        sv = fleet.classes[site]
        for key in (site, sv.device_name):
            if key in pp.latency_ms:
                return float(pp.latency_ms[key])
        if pp.kind == "transform":
            return float(getattr(pp, "cost_ms", 0.0) or 0.0)
        return _costmodel_ms(pp, sv)

    return rate_for, origins_for, service_ms, deliver_for


def _costmodel_ms(pp, sv) -> float:
    try:
        from tierplan.devices.costmodel import CostModel  # type: ignore[import-not-found]
        from tierplan.partition.types import Piece
        piece = Piece(id=pp.id, model=pp.model or pp.id.split("/")[0], index=0, nodes=(), inputs=(),
                      outputs=(), flops=pp.flops, param_bytes=pp.param_bytes)
        return float(CostModel().piece_ms(piece, sv.device))
    except Exception as e:  # no cost model available, or it cannot price this piece
        raise InputError(f"plan: piece {pp.id!r} has no predicted latency for site class {sv.name!r} "
                         f"(pieces[].latency_ms) and the cost model could not price it "
                         f"({e.__class__.__name__}). To fix: re-run `tierplan plan` with this fleet") from None


# ---------------------------------------------------------------------------- sizing and cost
def _offered_ms_per_s(journeys: list[Journey], fleet: FleetView) -> dict[str, float]:
    """Offered compute (ms per second) per instance of each site class, spread evenly."""
    out: dict[str, float] = {}
    for j in journeys:
        rps = fleet.classes[j.origin].count * j.rate_hz
        for st in j.stages:
            if st.kind == "compute":
                ms = sum(w.amount * w.rate_factor for w in st.work) * st.expected_runs
                out[st.site] = out.get(st.site, 0.0) + rps * ms / fleet.classes[st.site].count
    return out


def _replicas(journeys, fleet: FleetView, fixed: dict[str, int], planned: dict[str, int]) -> dict[str, int]:
    """Servers per instance of each computing site class: `fixed` (per instance) first, then the plan's
    rented instances (a class total, spread evenly), else sized to the offered load."""
    out = {}
    for site, ms in _offered_ms_per_s(journeys, fleet).items():
        sv = fleet.classes[site]
        if sv.tier == "edge":
            out[site] = 1
        elif site in fixed:
            out[site] = max(1, int(fixed[site]))
        elif planned.get(site, 0) > 0:
            out[site] = max(1, math.ceil(planned[site] / sv.count))
        else:
            need = max(1, math.ceil(ms / (_MS * sv.max_utilization)))
            cap = sv.max_instances if sv.max_instances is not None else (None if sv.tier == "cloud" else 1)
            out[site] = need if cap is None else min(need, cap)
    return out


def _cost_per_hour(journeys, draws, arrivals, res: EngineResult, fleet: FleetView,
                   replicas: dict[str, int], duration_s: float, planned: dict[str, int]) -> float:
    usd = 0.0
    for s, n in replicas.items():
        total = fleet.classes[s].count * n
        if planned.get(s, 0) > 0:  # the plan rents this many in all (spread, so some sites have fewer)
            total = min(total, planned[s])
        usd += total * fleet.classes[s].cost_per_hour_usd
    egress_bytes: dict[str, float] = {}
    for ji, j in enumerate(journeys):
        ok = ~res.failed[ji]
        for st in j.stages:
            if st.kind == "link" and st.direction == "down" and not st.shared:
                egress_bytes[st.site] = egress_bytes.get(st.site, 0.0) + float(draws[ji].work[st.index][ok].sum())
    for site, b in egress_bytes.items():
        price = fleet.classes[site].link.egress_usd_per_gb
        usd += price * b / _BYTES_PER_GB * _SECONDS_PER_HOUR / duration_s
    return usd


# ---------------------------------------------------------------------------- statistics
def _quantiles(sorted_x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Quantiles of a sorted sample, linear interpolation (numpy's default method)."""
    pos = q * (len(sorted_x) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(sorted_x) - 1)
    return sorted_x[lo] + (pos - lo) * (sorted_x[hi] - sorted_x[lo])


def _sink_stats(journeys, arrivals, res: EngineResult, slo: dict[str, float | None]) -> dict[str, SinkStats]:
    lat: dict[str, list[np.ndarray]] = {}
    by_class: dict[str, dict[str, list[np.ndarray]]] = {}
    for ji, j in enumerate(journeys):
        for name, d in sink_done(j, arrivals[ji].t_ms, res.done_ms[ji], res.failed[ji]).items():
            lat.setdefault(name, []).append(d - arrivals[ji].t_ms)
            by_class.setdefault(name, {}).setdefault(j.origin, []).append(d - arrivals[ji].t_ms)
    out = {}
    for name, parts in lat.items():
        x = np.concatenate(parts) if parts else np.zeros(0)
        ok = x[~np.isnan(x)]
        n, n_ok = len(x), len(ok)
        s = slo.get(name)
        if n_ok:
            ok = np.sort(ok)
            p50, p95, p99 = (float(v) for v in _quantiles(ok, np.array([0.5, 0.95, 0.99])))
            cdf = _quantiles(ok, np.linspace(0, 1, _CDF_POINTS)).tolist()
            mean = float(ok.mean())
        else:
            p50 = p95 = p99 = mean = None
            cdf = []
        att = (float((ok <= s).sum()) / n if n else None) if s is not None else None
        classes = {}
        if len(by_class[name]) > 1:
            for origin, xs in by_class[name].items():
                y = np.concatenate(xs)
                y_ok = np.sort(y[~np.isnan(y)])
                q = _quantiles(y_ok, np.array([0.5, 0.95])) if len(y_ok) else [None, None]
                classes[origin] = {"p50_ms": None if q[0] is None else float(q[0]),
                                   "p95_ms": None if q[1] is None else float(q[1]), "requests": int(len(y)),
                                   "slo_attainment": (float((y_ok <= s).sum()) / len(y) if len(y) else None)
                                   if s is not None else None}
        out[name] = SinkStats(p50_ms=p50, p95_ms=p95, p99_ms=p99, mean_ms=mean, slo_ms=s, slo_attainment=att,
                              requests=n, ok=n_ok, failed=n - n_ok, cdf_ms=cdf, classes=classes)
    return out


def _busy_per_bin(start: np.ndarray, end: np.ndarray, step: float, nbins: int) -> np.ndarray:
    """Busy time falling in each bin [i*step, (i+1)*step), exactly, in linear time."""
    horizon = step * nbins
    s, e = np.clip(start, 0.0, horizon), np.clip(end, 0.0, horizon)
    keep = e > s
    s, e = s[keep], e[keep]
    b0 = np.minimum((s / step).astype(np.int64), nbins - 1)
    b1 = np.minimum((e / step).astype(np.int64), nbins - 1)
    one = b0 == b1
    out = np.bincount(b0[one], weights=(e - s)[one], minlength=nbins)
    for i in np.flatnonzero(~one):  # the few jobs that straddle a bin edge
        lo, hi = s[i], e[i]
        for b in range(b0[i], b1[i] + 1):
            out[b] += min(hi, (b + 1) * step) - max(lo, b * step)
    return out


def _utilisation(res: EngineResult, duration_s: float):
    horizon = duration_s * _MS
    mean, peak, series, per_inst, over = {}, {}, {}, {}, []
    step = horizon / _SERIES_BINS
    for label, b in res.busy.items():
        inst, start, svc = b.arrays()
        busy = np.clip(np.minimum(start + svc, horizon) - np.minimum(start, horizon), 0.0, None)
        cap = b.servers * horizon
        total = float(busy.sum())
        mean[label] = total / (b.instances * cap) if cap > 0 else 0.0
        by_inst = np.bincount(inst, weights=busy, minlength=b.instances) / cap if len(inst) else np.zeros(b.instances)
        peak[label] = float(by_inst.max()) if len(by_inst) else 0.0
        if float(svc.sum()) / (b.instances * cap) >= 1.0:  # offered work over the class's capacity
            over.append(label)
        if b.instances <= 1000:
            per_inst[label] = by_inst.tolist()
        s = _busy_per_bin(start, start + svc, step, _SERIES_BINS) / (b.instances * b.servers * step)
        series[label] = s.tolist()
    return mean, peak, series, per_inst, over, step / _MS


def _needs_simpy(journeys: list[Journey], link_sharing: str) -> str | None:
    """Why these journeys need the SimPy path (fair links), or None when the fast one can run."""
    if link_sharing == "fair" and any(st.kind == "link" for j in journeys for st in j.stages):
        return "fair link sharing (processor sharing) runs on SimPy only"
    return None


# ---------------------------------------------------------------------------- entry point
def _as_list(x, parse) -> list:
    if x is None:
        return []
    if isinstance(x, (str, FailureWindow, MobilityEvent, LinkVariation)):
        x = [x]
    return [parse(v) if isinstance(v, str) else v for v in x]


def simulate(plan: Plan | str | Path, fleet: Any, strategies: Iterable[str] | str | None = None,
             duration_s: float = 60.0, seed: int = 0, arrivals: str | ArrivalSpec = "poisson",
             failures: Iterable[str | FailureWindow] | None = None,
             mobility: Iterable[str | MobilityEvent] | None = None, fast: bool | None = None, *,
             links: dict[str, str | LinkVariation] | Iterable[str] | None = None,
             rates: dict[str, float] | None = None, slo_ms: dict[str, float] | None = None,
             replicas: dict[str, int] | None = None, service_dist: str = "lognormal",
             service_cv: float = 0.1, dispatch: str = "round_robin",
             latency_ms: dict[tuple[str, str], float | tuple[float, float]] | None = None,
             app: Any = None, service_correlation: float = 0.0,
             profile: ServiceProfile | str | Path | None = None, colocate: int | None = None,
             batching: str | tuple | BatchPolicy | bool | None = "auto", link_sharing: str = "fifo",
             progress: Callable[[int, int, str], None] | None = None) -> SimReport:
    """Replay each strategy of `plan` over `fleet` for `duration_s` simulated seconds.

    fast: True = vectorised path (raises InputError where it cannot run), False = SimPy, None =
    vectorised above 50,000 stage visits, SimPy otherwise. The same seed gives the same report.
    latency_ms[(piece, site)] overrides a piece's time on a site class: a mean in ms, or a measured
    (p50_ms, p95_ms) pair replayed as a log-normal; rates[source] overrides requests/s per device;
    replicas[site] fixes servers per instance; links[site] varies a link (scenario.parse_link);
    app (AppSpec) supplies source rates and sink destinations the plan does not carry (default:
    the plan's app_path).
    service_correlation in [0, 1]: share of the log-normal service variance common to all compute
    stages of a request (one slowdown draw per request). profile (a ServiceProfile or its JSON file,
    simulations.calibration): measured per-stage times `node@site`, replayed by their empirical
    quantiles with the profile's within-request correlation, for the nodes it measured.
    colocate=N: every site shares one host with N cores (as `tierplan run` deploys on this
    machine): compute stages of all sites queue for the same cores instead of their own servers.
    batching: "auto" (default: as the runtime deploys, cloud-tier sites batch batchable nodes, up
    to 8 requests, waiting at most 2 ms), "off", or "MAX[:WAIT_MS]" / (MAX, WAIT_MS) / a
    BatchPolicy (simulations.batching). link_sharing: "fifo" (default: one transfer at a time
    per link direction, as runtime/links.py's token bucket) or "fair" (transfers in flight share
    the rate). Fair links need the SimPy path: fast=None picks it then, fast=True raises
    InputError; batching runs on both. `progress(done, total, strategy)` is called before each
    strategy is replayed and once at the end (done == total).

    >>> report = simulate(plan, fleet, duration_s=30, seed=1)           # doctest: +SKIP
    >>> report.strategies["optimal"].sinks["boxes"].p95_ms             # doctest: +SKIP
    """
    if isinstance(plan, (str, Path)):
        plan = Plan.load(plan)
    if duration_s <= 0:
        raise InputError(f"--duration {duration_s}: must be > 0 seconds")
    if dispatch not in ("round_robin", "shared"):
        raise InputError(f"simulate: dispatch must be round_robin or shared, got {dispatch!r}")
    if isinstance(fleet, (str, Path)):
        from tierplan.loader import load_fleet
        fleet = load_fleet(fleet)
    fv = fleet_view(fleet)
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    arr_spec = parse_arrivals(arrivals) if isinstance(arrivals, str) else arrivals
    fails = _as_list(failures, parse_failure)
    moves = _as_list(mobility, parse_mobility)
    if isinstance(links, dict):
        link_vars = {k: (parse_link(f"{k}={v}") if isinstance(v, str) else v) for k, v in links.items()}
    else:
        link_vars = {v.site: v for v in _as_list(links, parse_link)}
    policy = parse_batching(batching)
    link_sharing = check_link_sharing(link_sharing)
    chosen, skipped = strategy_assignments(plan, strategies)
    rate_for, origins_for, service_ms, deliver_for = _lookups(plan, fv, rates, latency_ms, app)
    slo = {name: s.slo_ms for name, s in plan.sinks.items()}
    slo.update(slo_ms or {})

    base_rng = np.random.default_rng(seed)
    compiled = {name: compile_journeys(plan, fv, fn, origins_for, rate_for, service_ms, deliver_for)
                for name, fn in chosen.items()}
    batched = batch_stages(policy, compiled.values(), plan, fv)
    if isinstance(profile, (str, Path)):
        profile = load_profile(profile)
    world = World(fv, {}, duration_s, base_rng, fails, moves, link_vars, service_dist, service_cv,
                  service_correlation=service_correlation, profile=profile, host_cores=colocate)
    # arrivals per (origin, source): shared by every strategy
    keys = sorted({(j.origin, j.source) for js in compiled.values() for j in js})
    rfs: dict[tuple, set] = {}
    rate_of: dict[tuple, float] = {}
    for js in compiled.values():
        for j in js:
            rfs.setdefault((j.origin, j.source), set()).update(w.rate_factor for st in j.stages for w in st.work)
            rfs[(j.origin, j.source)].update(st.lane_rate_factor for st in j.stages)
            rate_of[(j.origin, j.source)] = j.rate_hz
    shared_arrivals = {k: world.draw_arrivals(k[0], rate_of[k], arr_spec, rfs[k], base_rng) for k in keys}

    results: dict[str, StrategyResult] = {}
    step_s = duration_s / _SERIES_BINS
    for k, (name, journeys) in enumerate(compiled.items()):
        if progress is not None:
            progress(k, len(compiled), name)
        t0 = time.perf_counter()
        planned = {k: v for k, v in plan.instances.items() if name == "optimal" and k not in (replicas or {})}
        world.replicas = _replicas(journeys, fv, dict(replicas or {}), planned)
        srng = strategy_rng(seed, name)
        arrs = [shared_arrivals[(j.origin, j.source)] for j in journeys]
        draws = [world.draw_stages(j, a, srng) for j, a in zip(journeys, arrs)]
        n_req = sum(len(a.t_ms) for a in arrs)
        n_visits = sum(len(a.t_ms) * len(j.stages) for j, a in zip(journeys, arrs))
        notes: list[str] = []
        needs_simpy = _needs_simpy(journeys, link_sharing)
        use_fast = fast if fast is not None else (n_visits > _FAST_THRESHOLD_VISITS and dispatch == "round_robin"
                                                  and needs_simpy is None)
        if use_fast and dispatch != "round_robin":
            raise InputError("simulate: the fast path dispatches round-robin over replicas; use fast=False "
                             "for dispatch='shared'")
        if use_fast and needs_simpy is not None:
            raise InputError(f"simulate: the fast path cannot run strategy {name!r}: {needs_simpy}. "
                             f"To fix: use the SimPy path (fast=False, --engine simpy), or fifo links")
        if fast is None and needs_simpy is not None and n_visits > _FAST_THRESHOLD_VISITS:
            notes.append(f"SimPy path: {needs_simpy}")
        res = None
        if use_fast:
            try:
                res = run_fast(world, journeys, arrs, draws, batching=batched)
            except FastPathUnsupported as e:
                if fast:
                    raise InputError(f"simulate: the fast path cannot run strategy {name!r}: {e}. "
                                     f"To fix: use fast=False (SimPy)") from None
                notes.append(f"SimPy path: {e}")
        if res is None:
            res = run_simpy(world, journeys, arrs, draws, dispatch, batching=batched, link_sharing=link_sharing)
        wall = time.perf_counter() - t0
        sinks = _sink_stats(journeys, arrs, res, slo)
        mean, peak, series, per_inst, over, step_s = _utilisation(res, duration_s)
        n_failed = int(sum(f.sum() for f in res.failed))
        cost = _cost_per_hour(journeys, draws, arrs, res, fv, world.replicas, duration_s, planned)
        raw = {BASELINE_ALIASES.get(k, k): v for k, v in plan.baselines.items()}
        predicted = plan.cost_per_hour_usd if name == "optimal" else (
            raw[name].cost_per_hour_usd if name in raw else None)
        if over:
            notes.append(f"overloaded (offered work >= capacity; queues grow for the whole run): {', '.join(over)}")
        results[name] = StrategyResult(
            sinks=sinks, cost_per_hour_usd=cost, predicted_cost_per_hour_usd=predicted, requests=n_req,
            requests_ok=n_req - n_failed, requests_failed=n_failed,
            requests_rerouted=int(sum(r.sum() for r in res.rerouted)),
            requests_delayed=int(sum(d.sum() for d in res.delayed)),
            throughput_rps=(n_req - n_failed) / duration_s, utilisation=mean, utilisation_max=peak,
            replicas=dict(world.replicas), engine=res.engine, wall_s=wall,
            sim_requests_per_s=n_req / wall if wall > 0 else 0.0, notes=notes,
            utilisation_series=series, instance_utilisation=per_inst,
            batch_mean={k: float(np.mean(v)) for k, v in sorted(res.batch_sizes.items()) if v},
            batches={k: len(v) for k, v in sorted(res.batch_sizes.items()) if v})
    scenario = {"failures": [f"{w.kind}:{w.target}@{w.start_s:g}-{w.end_s:g}:{w.policy}" for w in fails],
                "mobility": [f"{m.edge_class}:{m.share:g}@{m.start_s:g}" for m in moves],
                "links": {k: v.label for k, v in link_vars.items()}, "service_dist": service_dist,
                "dispatch": dispatch, "service_correlation": service_correlation,
                "profile": None if profile is None else {"source": profile.source, "requests": profile.requests,
                                                         "correlation": profile.correlation,
                                                         "stages": len(profile.samples_ms)},
                "colocate_cores": colocate, "batching": policy.label if policy is not None else "off",
                "batched_stages": sorted(f"{'+'.join(n)}@{site} ({b.source})" for (site, n), b in batched.items()),
                "link_sharing": link_sharing}
    if progress is not None:
        progress(len(compiled), len(compiled), "done")
    return SimReport(strategies=results, seed=seed, duration_s=duration_s, arrivals=arr_spec.label,
                     scenario=scenario, skipped=skipped, series_step_s=step_s)
