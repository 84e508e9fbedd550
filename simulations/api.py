"""simulate(plan, ...): replay each strategy's placement over the whole fleet and compare them.

Strategies are assignments (piece -> site class, per edge class): "optimal" is the plan itself,
the others come from `plan.baselines` (all-device, all-cloud, best-split, greedy; all-device and
all-cloud are derived when the plan lacks them). Every strategy sees the same arrivals (common
random numbers), so differences between them are the placement's, not the dice's.

Everything comes from the plan (issue #15): the fleet as planned (`plan.fleet_model()`, the one
fleet model, devices.fleet.Fleet), the app's source rates and sink destinations (`plan.app_spec()`)
and the pieces' times; a what-if fleet can be passed as a typed Fleet. The knobs of a run are one
frozen `Scenario` (simulations.config).

Servers per site instance: the plan's `instances` for "optimal" (rented instances per site
class in all, spread evenly over its sites); otherwise (and for baselines) enough replicas to keep
the offered load under the class's `max_utilization`, capped by `max_instances`. Edge devices serve
their own requests one at a time. Cost per hour = instances x replicas x $/hour of every site
class that computes, plus egress $/GB on the bytes that leave an upper site.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable, Iterable

import numpy as np
from typing_extensions import Unpack

from tierplan.devices.fleet import Fleet, SiteClass, resolve_fleet
from tierplan.errors import InputError
from tierplan.planner.plan import Plan, PlanPiece
from tierplan.simulations.batching import RUNTIME_MAX_WAIT_MS, BatchPolicy, as_run_policy, batch_stages
from tierplan.simulations.config import Scenario, ScenarioArgs
from tierplan.simulations.engine_fast import FastPathUnsupported, check_fast
from tierplan.simulations.journey import Journey, compile_journeys
from tierplan.simulations.report import SimReport, SinkStats, StrategyResult
from tierplan.simulations.stream import Blocks, StrategyAgg, replay
from tierplan.simulations.world import World
from tierplan.spec import AppSpec, FleetSpec

__all__ = ["simulate", "DEFAULT_STRATEGIES", "BASELINE_ALIASES", "strategy_assignments", "plan_fleet"]

DEFAULT_STRATEGIES = ("optimal", "all-device", "all-cloud", "best-split", "greedy")
# the planner's baseline names -> the names strategies go by here (either is accepted)
BASELINE_ALIASES = {"all_on_device": "all-device", "all_in_cloud": "all-cloud", "neurosurgeon": "best-split",
                    "best_split": "best-split", "all_device": "all-device", "all_cloud": "all-cloud"}
# above this many stage visits (requests x stages) the auto engine picks the vectorised path: SimPy
# runs about 20k-50k visits per second, so smaller runs take it a second or two either way
_FAST_THRESHOLD_VISITS = 50_000
_CDF_POINTS = 201
_SERIES_BINS = 60
_SECONDS_PER_HOUR = 3600.0
_BYTES_PER_GB = 1e9
_MS = 1000.0
_Z95 = 1.6448536269514722  # standard normal 95th percentile


# ---------------------------------------------------------------------------- strategies
Assignment = Callable[[str], dict[str, str]]   # origin class -> node -> site class (or tier)


def _per_origin(assignment: dict[str, str], per_class: dict[str, dict[str, str]]) -> Assignment:
    """An assignment with per-origin-class overrides."""
    def of(origin: str) -> dict[str, str]:
        return {**assignment, **per_class.get(origin, {})}
    return of


def strategy_assignments(plan: Plan, names: Iterable[str] | None) -> tuple[dict[str, Assignment], dict[str, str]]:
    """name -> (origin class -> node -> site), and name -> reason for strategies that cannot run."""
    work_ids = [p.id for p in plan.pieces if p.kind in ("piece", "transform")]
    available: dict[str, Assignment] = {}
    skipped: dict[str, str] = {}
    if plan.assignment or plan.per_class:
        available["optimal"] = _per_origin(dict(plan.assignment), dict(plan.per_class))
    else:
        skipped["optimal"] = f"the plan has no assignment (status {plan.status}: {plan.reason or 'no reason given'})"
    for raw, b in plan.baselines.items():
        name = BASELINE_ALIASES.get(raw, raw)
        per_class = getattr(b, "per_class", None) or {}
        if b.assignment or per_class:
            available[name] = _per_origin(dict(b.assignment), dict(per_class))
        else:
            skipped[name] = b.reason or "the baseline has no assignment"
    for name, tier in (("all-device", "edge"), ("all-cloud", "cloud")):
        if name not in available and name not in skipped:
            available[name] = _per_origin({pid: tier for pid in work_ids}, {})
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
def plan_fleet(plan: Plan, fleet: Fleet | FleetSpec | None = None) -> Fleet:
    """The fleet a run simulates: `fleet` (a what-if) when given, else the one the plan was made for."""
    if isinstance(fleet, Fleet):
        return fleet
    if isinstance(fleet, FleetSpec):
        return resolve_fleet(fleet)
    return plan.fleet_model()


def _plan_app(plan: Plan) -> AppSpec | None:
    """The app the plan was made for (source rates, sink destinations); None for a hand-made plan
    that embeds none (its pieces then carry the rates)."""
    return plan.app_spec() if plan.app is not None else None


def _lookups(plan: Plan, fleet: Fleet, rates: dict[str, float], latency_ms: dict, app: AppSpec | None):
    pieces = {p.id: p for p in plan.pieces}

    def app_source(src: str):
        return app.sources.get(src) if app is not None else None

    def deliver_for(sink_id: str) -> str | None:
        spec = app.sinks.get(sink_id.removeprefix("sink:")) if app is not None else None
        return spec.deliver_to if spec is not None else None

    def rate_for(src: str) -> float:
        if src in rates:
            return float(rates[src])
        r = getattr(pieces[src], "rate_hz", None)
        if r is None and app_source(src) is not None:
            r = app_source(src).rate_hz
        if r is None or r <= 0:
            raise InputError(f"plan: source {src!r} has no request rate (rate_hz). To fix: pass "
                             f"rates={{'{src}': HZ}} or re-run `tierplan plan`")
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

    def service_ms(pp: PlanPiece, site: str) -> float | tuple[float, float]:
        if pp.kind in ("source", "sink"):
            return 0.0
        if (pp.id, site) in latency_ms:
            v = latency_ms[(pp.id, site)]
            if isinstance(v, (tuple, list)):  # (p50_ms, p95_ms) measured: a log-normal with that median and p95
                p50, p95 = float(v[0]), max(float(v[1]), float(v[0]))
                sigma = math.log(p95 / p50) / _Z95 if p50 > 0 else 0.0
                return (p50 * math.exp(sigma ** 2 / 2), sigma)
            return float(v)
        sv = fleet.classes[site]
        for key in (site, sv.device.name):
            if key in pp.latency_ms:
                return float(pp.latency_ms[key])
        if pp.kind == "transform":
            return float(getattr(pp, "cost_ms", 0.0) or 0.0)
        return _costmodel_ms(pp, sv)

    return rate_for, origins_for, service_ms, deliver_for


def _costmodel_ms(pp: PlanPiece, sv: SiteClass) -> float:
    try:
        from tierplan.devices.costmodel import CostModel
        from tierplan.partition.types import Piece
        piece = Piece(id=pp.id, model=pp.model or pp.id.split("/")[0], index=0, nodes=(), inputs=(),
                      outputs=(), flops=pp.flops, param_bytes=pp.param_bytes)
        return float(CostModel().piece_ms(piece, sv.device))
    except Exception as e:  # no cost model available, or it cannot price this piece
        raise InputError(f"plan: piece {pp.id!r} has no predicted latency for site class {sv.name!r} "
                         f"(pieces[].latency_ms) and the cost model could not price it "
                         f"({e.__class__.__name__}). To fix: re-run `tierplan plan` with this fleet") from None


# ---------------------------------------------------------------------------- sizing and cost
def _offered_ms_per_s(journeys: list[Journey], fleet: Fleet) -> dict[str, float]:
    """Offered compute (ms per second) per instance of each site class, spread evenly."""
    out: dict[str, float] = {}
    for j in journeys:
        rps = fleet.classes[j.origin].count * j.rate_hz
        for st in j.stages:
            if st.kind == "compute":
                ms = sum(w.amount * w.rate_factor for w in st.work) * st.expected_runs
                out[st.site] = out.get(st.site, 0.0) + rps * ms / fleet.classes[st.site].count
    return out


def _replicas(journeys: list[Journey], fleet: Fleet, fixed: dict[str, int], planned: dict[str, int]) -> dict[str, int]:
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
            out[site] = min(need, max(1, sv.max_instances))
    return out


def _cost_per_hour(agg: StrategyAgg, fleet: Fleet, replicas: dict[str, int], duration_s: float,
                   planned: dict[str, int]) -> float:
    usd = 0.0
    for s, n in replicas.items():
        total = fleet.classes[s].count * n
        if planned.get(s, 0) > 0:  # the plan rents this many in all (spread, so some sites have fewer)
            total = min(total, planned[s])
        usd += total * fleet.classes[s].device.cost_per_hour_usd
    for site, b in agg.egress_bytes.items():
        link = fleet.classes[site].link
        price = link.egress_usd_per_gb if link is not None else 0.0
        usd += price * b / _BYTES_PER_GB * _SECONDS_PER_HOUR / duration_s
    return usd


# ---------------------------------------------------------------------------- statistics
def _sink_stats(agg: StrategyAgg) -> dict[str, SinkStats]:
    out = {}
    for name, a in agg.sinks.items():
        s = agg.slo.get(name)
        p50: float | None
        p95: float | None
        p99: float | None
        mean: float | None
        if a.ok:
            p50, p95, p99 = (float(v) for v in a.sketch.quantiles(np.array([0.5, 0.95, 0.99])))
            cdf = a.sketch.quantiles(np.linspace(0, 1, _CDF_POINTS)).tolist()
            mean = a.sketch.mean
        else:
            p50 = p95 = p99 = mean = None
            cdf = []
        att = (a.slo_hits / a.n if a.n else None) if s is not None else None
        classes = {}
        for origin, c in agg.classes.get(name, {}).items():
            q = c.sketch.quantiles(np.array([0.5, 0.95])) if c.ok else [None, None]
            classes[origin] = {"p50_ms": None if q[0] is None else float(q[0]),
                               "p95_ms": None if q[1] is None else float(q[1]), "requests": c.n,
                               "slo_attainment": (c.slo_hits / c.n if c.n else None) if s is not None else None}
        out[name] = SinkStats(p50_ms=p50, p95_ms=p95, p99_ms=p99, mean_ms=mean, slo_ms=s, slo_attainment=att,
                              requests=a.n, ok=a.ok, failed=a.n - a.ok, cdf_ms=cdf, classes=classes,
                              exact_quantiles=a.sketch.exact)
    return out


def _utilisation(agg: StrategyAgg):
    """Mean and peak busy share per resource class, the ones offered more than they can serve, the
    busy share over time (bins) and per instance (<= 1000 instances): numpy over the aggregates."""
    mean, peak, series, per_inst, over = {}, {}, {}, {}, []
    step = agg.horizon_ms / agg.nbins
    for label, b in agg.busy.items():
        cap = b.servers * agg.horizon_ms
        by_inst = b.by_inst / cap
        mean[label] = float(b.by_inst.sum()) / (b.instances * cap) if cap > 0 else 0.0
        peak[label] = float(by_inst.max()) if len(by_inst) else 0.0
        if b.offered_ms / (b.instances * cap) >= 1.0:  # offered work over the class's capacity
            over.append(label)
        if b.instances <= 1000:
            per_inst[label] = by_inst.tolist()
        series[label] = (b.by_bin / (b.instances * b.servers * step)).tolist()
    return mean, peak, series, per_inst, over


# ---------------------------------------------------------------------------- entry point
def _engine_for(sc: Scenario, world: World, journeys: list[Journey], n_visits: float, name: str,
                notes: list[str]) -> bool:
    """Whether this strategy runs on the fast path (True) or SimPy (False), with a note why when auto."""
    why = None
    if sc.dispatch != "round_robin":
        why = "dispatch='shared' (one queue, c servers) runs on SimPy only"
    else:
        try:
            check_fast(world, journeys, sc.link_sharing)
        except FastPathUnsupported as e:
            why = str(e)
    if sc.fast is True:
        if why is not None:
            raise InputError(f"simulate: the fast path cannot run strategy {name!r}: {why}. "
                             f"To fix: use the SimPy path (fast=False, --engine simpy)")
        return True
    if sc.fast is False:
        return False
    if why is not None:
        if n_visits > _FAST_THRESHOLD_VISITS:
            notes.append(f"SimPy path: {why}")
        return False
    return n_visits > _FAST_THRESHOLD_VISITS


def simulate(plan: Plan, fleet: Fleet | FleetSpec | None = None, scenario: Scenario | None = None, *,
             progress: Callable[[int, int, str], None] | None = None, **kw: Unpack[ScenarioArgs]) -> SimReport:
    """Replay each strategy of `plan` over its fleet (or the what-if `fleet`) under `scenario`.

    `scenario` (simulations.config.Scenario) holds every knob; keyword arguments build or amend
    it from their loose forms (`Scenario.of`: flag strings, `fast=True`, ...). The same seed gives
    the same report. `progress(done, total, strategy)` is called before each strategy is replayed
    and once at the end (done == total).

    >>> report = simulate(plan, duration_s=30, seed=1)                   # doctest: +SKIP
    >>> report.strategies["optimal"].sinks["boxes"].p95_ms             # doctest: +SKIP
    """
    sc = scenario if scenario is not None else Scenario()
    if kw:
        sc = replace(sc, **{k: v for k, v in vars(Scenario.of(**kw)).items() if k in kw or
                            (k == "engine" and "fast" in kw)})
    fl = plan_fleet(plan, fleet)
    link_vars = {v.site: v for v in sc.links}
    chosen, skipped = strategy_assignments(plan, sc.strategies)
    rate_for, origins_for, service_ms, deliver_for = _lookups(plan, fl, dict(sc.rates), dict(sc.latency_ms),
                                                              _plan_app(plan))
    slo: dict[str, float | None] = {name: s.slo_ms for name, s in plan.sinks.items()}
    slo.update(sc.slo_ms)
    compiled = {name: compile_journeys(plan, fl, fn, origins_for, rate_for, service_ms, deliver_for)
                for name, fn in chosen.items()}
    ran = sc.profile.batch_caps if sc.profile is not None else None
    policy = as_run_policy(sc.batching, ran)
    batched = batch_stages(policy, compiled.values(), plan, fl,
                           sc.profile.batch_wait_ms if sc.profile is not None else None,
                           ran[1] if ran is not None else RUNTIME_MAX_WAIT_MS)
    world = World(fl, {}, sc.duration_s, sc.seed, list(sc.failures), list(sc.mobility), link_vars, sc.service_dist,
                  sc.service_cv, service_correlation=sc.service_correlation, profile=sc.profile,
                  host_cores=sc.colocate)
    # arrivals per (origin, source): shared by every strategy
    rfs: dict[tuple[str, str], set[float]] = {}
    rate_of: dict[tuple[str, str], float] = {}
    for js in compiled.values():
        for j in js:
            rfs.setdefault((j.origin, j.source), set()).update(w.rate_factor for st in j.stages for w in st.work)
            rfs[(j.origin, j.source)].update(st.lane_rate_factor for st in j.stages)
            # a run's profile: the requests it sent (its Poisson draw), not the app's nominal rate
            sent = sc.profile.sent_hz.get(j.origin, {}) if sc.profile is not None else {}
            rate_of[(j.origin, j.source)] = sent.get(j.source, j.rate_hz)
    keys = sorted(rfs)
    expected = sum(fl.classes[k[0]].count * rate_of[k] * sc.duration_s for k in keys)
    blocks = Blocks.for_run(sc.duration_s, expected, sc.block_requests)

    results: dict[str, StrategyResult] = {}
    for k, (name, journeys) in enumerate(compiled.items()):
        if progress is not None:
            progress(k, len(compiled), name)
        t0 = time.perf_counter()
        planned = {s: v for s, v in plan.instances.items() if name == "optimal" and s not in sc.replicas}
        world.replicas = _replicas(journeys, fl, dict(sc.replicas), planned)
        n_visits = sum(fl.classes[j.origin].count * j.rate_hz * sc.duration_s * len(j.stages) for j in journeys)
        notes: list[str] = []
        use_fast = _engine_for(sc, world, journeys, n_visits, name, notes)
        # a window holds window_requests requests of a 3-stage app: fewer of a longer journey, so
        # memory stays bounded by stage visits, whatever the app (the results never depend on it)
        per_window = max(1, int(min(sc.window_requests / max(expected, 1.0),
                                    3 * sc.window_requests / max(n_visits, 1.0)) * blocks.count))
        agg = StrategyAgg(journeys, slo, sc.duration_s * _MS, _SERIES_BINS, sc.exact_quantiles)
        engine = replay(world, journeys, name, blocks, keys, rate_of, sc.arrivals, rfs, agg, fast=use_fast,
                        per_window=per_window, batching=batched, link_sharing=sc.link_sharing, dispatch=sc.dispatch)
        wall = time.perf_counter() - t0
        mean, peak, series, per_inst, over = _utilisation(agg)
        cost = _cost_per_hour(agg, fl, world.replicas, sc.duration_s, planned)
        raw = {BASELINE_ALIASES.get(k, k): v for k, v in plan.baselines.items()}
        predicted = plan.cost_per_hour_usd if name == "optimal" else (
            raw[name].cost_per_hour_usd if name in raw else None)
        if over:
            notes.append(f"overloaded (offered work >= capacity; queues grow for the whole run): {', '.join(over)}")
        n_req = agg.requests
        results[name] = StrategyResult(
            sinks=_sink_stats(agg), cost_per_hour_usd=cost, predicted_cost_per_hour_usd=predicted, requests=n_req,
            requests_ok=n_req - agg.failed, requests_failed=agg.failed, requests_rerouted=agg.rerouted,
            requests_delayed=agg.delayed, throughput_rps=(n_req - agg.failed) / sc.duration_s, utilisation=mean,
            utilisation_max=peak, replicas=dict(world.replicas), engine=engine, wall_s=wall,
            sim_requests_per_s=n_req / wall if wall > 0 else 0.0, notes=notes,
            utilisation_series=series, instance_utilisation=per_inst,
            batch_mean={s: c[1] / c[0] for s, c in sorted(agg.batches.items())},
            batches={s: c[0] for s, c in sorted(agg.batches.items())})
    if progress is not None:
        progress(len(compiled), len(compiled), "done")
    return SimReport(strategies=results, seed=sc.seed, duration_s=sc.duration_s, arrivals=sc.arrivals.label,
                     scenario=_scenario_json(sc, batched, policy), skipped=skipped,
                     series_step_s=sc.duration_s / _SERIES_BINS)


def _scenario_json(sc: Scenario, batched: dict, policy: BatchPolicy | None) -> dict:
    p = sc.profile
    return {"failures": [f"{w.kind}:{w.target}@{w.start_s:g}-{w.end_s:g}:{w.policy}" for w in sc.failures],
            "mobility": [f"{m.edge_class}:{m.share:g}@{m.start_s:g}" for m in sc.mobility],
            "links": {v.site: v.label for v in sc.links}, "service_dist": sc.service_dist,
            "dispatch": sc.dispatch, "service_correlation": sc.service_correlation,
            "profile": None if p is None else {"source": p.source, "requests": p.requests,
                                               "correlation": p.correlation, "stages": len(p.samples_ms)},
            "colocate_cores": sc.colocate, "batching": policy.label if policy is not None else "off",
            "batched_stages": sorted(f"{'+'.join(n)}@{site} ({b.source})" for (site, n), b in batched.items()),
            "link_sharing": sc.link_sharing}
