"""The adaptation policy the runtime and the simulator share: when a figure has drifted, the fleet
as observed, the old plan re-costed on it, a warm-started re-plan, and whether to adopt it.

Pure decisions over numbers and plans (no clock, no I/O, no threads): `runtime.observe` feeds it
figures measured on a running deployment, `simulations.adapt` feeds it the figures of a simulated
scenario, and both then act on the same `Decision` (issue #19).

Figures are keyed `link:SITE:up_mbps`, `link:SITE:down_mbps`, `link:SITE:rtt_ms` (SITE: the site
class whose attach link it is) and `compute:NODE@SITE`. A figure drifts when it is off its planned
value by more than `threshold` (relative; compute: `compute_threshold`) for `sustain_s` (compute:
`compute_sustain_s`) without a break.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from tierplan.devices.fleet import Fleet
from tierplan.errors import InputError
from tierplan.planner.plan import Plan, piece_moves
from tierplan.spec import FleetSpec

__all__ = ["AdaptPolicy", "POLICY_KEYS", "Figure", "DriftDetector", "Decision", "decide", "route_links", "link_figures",
           "observed_fleet", "recost", "predicted", "slo_of", "score", "moves_of", "class_weights", "Replanner",
           "site_ratios", "scaled_cost_model", "replan_scope"]


@dataclass(frozen=True)
class AdaptPolicy:
    """The thresholds of `--adapt` (each one a flag of `tierplan run` / `deploy`)."""

    threshold: float = 0.3          # |observed / planned - 1| beyond which a link figure is off ...
    min_effect_ms: float = 20.0     # ... when it changes a request's time by at least this much
    sustain_s: float = 0.5          # ... for this long without a break before it is flagged
    window_s: float = 2.0           # rolling window of the link estimates
    compute_threshold: float = 0.5  # a piece's compute time: off beyond this share (with min_effect_ms) ...
    compute_sustain_s: float = 3.0  # ... for this long (compute times are noisier than links: shared cores)
    compute_window_s: float = 5.0   # rolling window of the compute estimates (medians)
    margin: float = 0.1             # a new plan must be predicted this share better (summed sink latency) ...
    move_cost_ms: float = 10.0      # ... after charging this many ms per piece moved
    segment_move_cost_ms: float = 1.0   # the re-plan's objective: ms per segment placed off its site (movecost)
    replan_time_limit_s: float = 1.0
    cooldown_s: float = 5.0         # no new decision this long after one
    tick_s: float = 0.2             # how often the controller looks at its estimates

    def __post_init__(self) -> None:
        for key, name in POLICY_KEYS.items():
            value, low = getattr(self, name), (0.0 if name in _POSITIVE else -1e-12)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > low):
                raise InputError(f"--adapt-policy {key}={value}: must be a finite number {'above 0' if low == 0 else '>= 0'}. "
                                 f"To fix: e.g. --adapt-policy {key}={AdaptPolicy.__dataclass_fields__[name].default}")
        if self.margin >= 1:
            raise InputError(f"--adapt-policy margin={self.margin}: a share below 1. To fix: e.g. --adapt-policy margin=0.1")

    @classmethod
    def parse(cls, text: str | None) -> "AdaptPolicy":
        """`KEY=VALUE[,KEY=VALUE]` (`--adapt-policy`; keys: POLICY_KEYS), the defaults for the rest."""
        kw: dict[str, float] = {}
        for part in (text or "").split(","):
            if not part.strip():
                continue
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in POLICY_KEYS:
                raise InputError(f"--adapt-policy {part.strip()!r}: expected KEY=VALUE with KEY one of "
                                 f"{', '.join(POLICY_KEYS)}. To fix: e.g. --adapt-policy threshold=0.3,window=2")
            try:
                kw[POLICY_KEYS[key]] = float(value)
            except ValueError:
                raise InputError(f"--adapt-policy {key}={value!r}: not a number. To fix: e.g. --adapt-policy "
                                 f"{key}={AdaptPolicy.__dataclass_fields__[POLICY_KEYS[key]].default}") from None
        return cls(**kw)

    def to_json(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# `--adapt-policy` keys -> AdaptPolicy fields
POLICY_KEYS = {"threshold": "threshold", "min-effect": "min_effect_ms", "sustain": "sustain_s", "window": "window_s",
               "compute-threshold": "compute_threshold", "compute-sustain": "compute_sustain_s",
               "compute-window": "compute_window_s",
               "margin": "margin", "move-cost": "move_cost_ms", "segment-move-cost": "segment_move_cost_ms",
               "replan-limit": "replan_time_limit_s",
               "cooldown": "cooldown_s", "tick": "tick_s"}
_POSITIVE = {"threshold", "window_s", "compute_threshold", "compute_window_s", "replan_time_limit_s", "tick_s"}


@dataclass(frozen=True)
class Figure:
    """One estimated figure against the plan's (or a reference's) value for it."""

    key: str
    planned: float
    observed: float
    samples: int = 0
    effect_ms: float = math.inf     # what the difference changes in one request's time (transfers, compute)
    since_s: float | None = None    # when the estimate's evidence began to be off (None: now)

    @property
    def ratio(self) -> float:
        return self.observed / self.planned if self.planned > 0 else math.inf

    def to_json(self) -> dict:
        return {"key": self.key, "planned": round(self.planned, 4), "observed": round(self.observed, 4),
                "samples": self.samples, "effect_ms": round(self.effect_ms, 3) if math.isfinite(self.effect_ms) else None}


class DriftDetector:
    """Flags the figures that have been off their planned value by more than the threshold (links:
    `threshold`, compute: `compute_threshold`), with an effect of at least `min_effect_ms`, for
    `sustain_s` (compute: `compute_sustain_s`) without a break (a figure back within it
    starts over); the time counts from the figure's `since_s` when it says when its evidence began."""

    def __init__(self, policy: AdaptPolicy) -> None:
        self.policy = policy
        self._since: dict[str, float] = {}

    def off(self, f: Figure) -> bool:
        if f.planned <= 0 or f.observed <= 0 or not math.isfinite(f.observed):
            return False
        if abs(f.effect_ms) < self.policy.min_effect_ms:
            return False
        compute = f.key.startswith("compute:")
        return abs(math.log(f.observed / f.planned)) > math.log1p(
            self.policy.compute_threshold if compute else self.policy.threshold)

    def update(self, now_s: float, figures: Iterable[Figure]) -> list[Figure]:
        """The figures flagged at `now_s` (those off since at least `sustain_s` ago)."""
        flagged = []
        seen = set()
        for f in figures:
            seen.add(f.key)
            if not self.off(f):
                self._since.pop(f.key, None)
                continue
            began = f.since_s if f.since_s is not None and f.since_s <= now_s else now_s
            since = self._since.setdefault(f.key, began)
            sustain = self.policy.compute_sustain_s if f.key.startswith("compute:") else self.policy.sustain_s
            if now_s - since >= sustain - 1e-9:
                flagged.append(f)
        for k in [k for k in self._since if k not in seen]:   # no estimate any more: start over
            del self._since[k]
        return flagged

    def since(self, key: str) -> float | None:
        """When `key` went off (None: it is within the threshold)."""
        return self._since.get(key)

    def reset(self) -> None:
        self._since.clear()


@dataclass(frozen=True)
class Decision:
    """Whether to adopt a re-plan, why, and the figures the choice rests on."""

    adopt: bool
    reason: str
    predicted_old_ms: dict[str, float]      # "class:sink" -> the old plan re-costed on the observed figures
    predicted_new_ms: dict[str, float]      # "class:sink" -> the re-plan's prediction
    slo_ms: dict[str, float]
    moves: int

    def to_json(self) -> dict:
        r = lambda d: {k: round(v, 3) for k, v in d.items()}   # noqa: E731
        return {"adopt": self.adopt, "reason": self.reason, "predicted_old_ms": r(self.predicted_old_ms),
                "predicted_new_ms": r(self.predicted_new_ms), "slo_ms": dict(self.slo_ms), "moves": self.moves}


def _misses(pred: Mapping[str, float], slo: Mapping[str, float], measured: Mapping[str, float] | None = None) -> list[str]:
    out = [k for k, v in pred.items() if k in slo and v > slo[k]]
    out += [k for k, v in (measured or {}).items() if k in slo and v > slo[k] and k not in out]
    return out


def score(pred: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """The planner's latency figure: per class its slowest sink, weighted by the class's devices
    (`weights`, class -> devices; 1 each by default), averaged."""
    worst: dict[str, float] = {}
    for k, v in pred.items():
        cls = k.rpartition(":")[0]
        worst[cls] = max(worst.get(cls, 0.0), v)
    w = {c: float((weights or {}).get(c, 1.0)) for c in worst}
    total = sum(w.values()) or 1.0
    return sum(worst[c] * w[c] for c in worst) / total


def decide(policy: AdaptPolicy, old_ms: Mapping[str, float], new_ms: Mapping[str, float], slo_ms: Mapping[str, float],
           moves: int, measured_ms: Mapping[str, float] | None = None,
           weights: Mapping[str, float] | None = None) -> Decision:
    """Adopt the re-plan when it moves something and either
    - the old plan misses an SLO ("class:sink", predicted on the observed figures or measured) and the
      re-plan meets them all, or has a better `score` after `move_cost_ms` per move (the best
      achievable when not every SLO can be met: the planner's own latency figure, whichever sinks
      miss); or
    - its `score` plus `move_cost_ms` per move is below the old plan's by `margin`."""
    keys = [k for k in old_ms if k in new_ms]
    old = {k: old_ms[k] for k in keys}
    new = {k: new_ms[k] for k in keys}
    slo = {k: v for k, v in slo_ms.items() if k in keys}

    def d(adopt: bool, why: str) -> Decision:
        return Decision(adopt, why, old, new, slo, moves)
    if not keys:
        return d(False, "no sink is predicted by both plans")
    if moves == 0:
        return d(False, "the re-plan keeps every piece where it runs")
    s_old, s_new = score(old, weights), score(new, weights)
    charged = s_new + policy.move_cost_ms * moves
    missed, left = _misses(old, slo, measured_ms), _misses(new, slo)
    if missed:
        if not left or charged < s_old:
            return d(True, f"the old plan misses the SLO of {', '.join(missed)}; the re-plan "
                           + ("meets every SLO" if not left else
                              f"is the best achievable (misses {', '.join(left)}; latency {s_old:.0f} -> {s_new:.0f} ms)"))
        return d(False, f"the old plan misses the SLO of {', '.join(missed)}, but the re-plan is predicted no better "
                        f"(misses {', '.join(left) or 'none'}; latency {s_old:.0f} -> {s_new:.0f} ms)")
    if charged <= s_old * (1 - policy.margin):
        return d(True, f"predicted better: {s_old:.0f} -> {s_new:.0f} ms, {moves} move(s) at {policy.move_cost_ms:g} ms "
                       f"each (margin {100 * policy.margin:.0f}%)")
    return d(False, f"predicted {s_old:.0f} -> {s_new:.0f} ms (+{policy.move_cost_ms * moves:.0f} ms for {moves} move(s)): "
                    f"not better by the margin of {100 * policy.margin:.0f}%")


# ----------------------------------------------------------------------------- fleets and figures
def route_links(fleet: Fleet, a: str, b: str) -> list[tuple[str, str]]:
    """The links of `fleet.route(a, b)` as (site class whose attach link it is, "up" | "down")."""
    if a == b:
        return []
    chain_a, chain_b = [a, *fleet.parents(a)], [b, *fleet.parents(b)]
    common = next((x for x in chain_a if x in chain_b), None)
    if common is None:
        return []
    return [(x, "up") for x in chain_a[:chain_a.index(common)]] + \
        [(y, "down") for y in reversed(chain_b[:chain_b.index(common)])]


def link_figures(fleet: Fleet, site: str) -> dict[str, float]:
    """The planned figures of `site`'s attach link: up_mbps, down_mbps (goodput: bandwidth x (1 - loss)), rtt_ms."""
    link = fleet.classes[site].link
    if link is None:
        return {}
    keep = 1.0 - (link.loss_rate or 0.0)
    return {"up_mbps": link.uplink_mbps * keep, "down_mbps": link.downlink_mbps * keep, "rtt_ms": link.rtt_ms}


def observed_fleet(plan: Plan, observed: Mapping[str, float]) -> FleetSpec:
    """The plan's fleet with the observed link figures (`link:SITE:up_mbps|down_mbps|rtt_ms`) in place
    of the planned ones; a site whose link class other sites share gets its own copy `LINK~SITE`."""
    spec = plan.fleet_spec()
    fleet = plan.fleet_model()
    sites = dict(spec.sites)
    links = dict(spec.links)
    per_site: dict[str, dict[str, float]] = {}
    for key, value in observed.items():
        kind, _, rest = key.partition(":")
        site, _, what = rest.rpartition(":")
        if kind == "link" and site in sites and what in ("up_mbps", "down_mbps", "rtt_ms") and value > 0:
            per_site.setdefault(site, {})[what] = float(value)
    for site, figs in per_site.items():
        name = sites[site].link
        if not name or name not in links:
            continue
        link = links[name]
        keep = 1.0 - (link.loss_rate or 0.0)
        update: dict[str, float] = {}
        if "up_mbps" in figs:
            update["uplink_mbps"] = figs["up_mbps"] / keep
        if "down_mbps" in figs:
            update["downlink_mbps"] = figs["down_mbps"] / keep
        if "rtt_ms" in figs:
            update["rtt_ms"] = figs["rtt_ms"]
        shared = [s for s, c in fleet.classes.items() if c.link_name == name and s != site]
        new_name = f"{name}~{site}" if shared else name
        links[new_name] = link.model_copy(update=update)
        sites[site] = sites[site].model_copy(update={"link": new_name})
    return spec.model_copy(update={"sites": sites, "links": links})


def _sink_key(cls: str, sink: str) -> str:
    return f"{cls}:{sink[5:] if sink.startswith('sink:') else sink}"


def predicted(plan: Plan, classes: Iterable[str] | None = None) -> dict[str, float]:
    """"class:sink" -> the plan's predicted latency for the classes given (default: all of them)."""
    out = {}
    for cls, sinks in plan.class_sinks.items():
        if classes is None or cls in classes:
            for sink, lat in sinks.items():
                out[_sink_key(cls, sink)] = lat.latency_ms
    return out


def slo_of(plan: Plan, classes: Iterable[str] | None = None) -> dict[str, float]:
    """"class:sink" -> its SLO in ms (sinks without one left out)."""
    out = {}
    for cls, sinks in plan.class_sinks.items():
        if classes is None or cls in classes:
            for sink, lat in sinks.items():
                if lat.slo_ms:
                    out[_sink_key(cls, sink)] = lat.slo_ms
    return out


def _hop_ms(fleet: Fleet, site: str, way: str, nbytes: float) -> float:
    link = fleet.classes[site].link
    if link is None:
        return 0.0
    keep = 1.0 - (link.loss_rate or 0.0)
    mbps = (link.uplink_mbps if way == "up" else link.downlink_mbps) * keep
    return link.rtt_ms / 2.0 + nbytes * 8.0 / (mbps * 1e3)


def recost(plan: Plan, observed: Fleet, classes: Iterable[str] | None = None,
           compute_scale: Mapping[str, float] | None = None) -> dict[str, float]:
    """"class:sink" -> the plan's latency re-costed on the `observed` fleet: its prediction plus, for
    every tensor its requests send upstream of the sink, the change of each hop's RTT/2 + bytes /
    goodput (times the invocations per request), and for every piece upstream on a site of
    `compute_scale` (site -> observed / planned compute time) the change of its time. A first-order
    figure: queueing is left as planned."""
    planned = plan.fleet_model()
    rate = {p.id: p.rate_factor for p in plan.pieces}
    node_ms = {p.id: p.latency_ms for p in plan.pieces}
    scale = dict(compute_scale or {})
    out: dict[str, float] = {}
    for cls, sinks in plan.class_sinks.items():
        if classes is not None and cls not in classes:
            continue
        view = {**plan.assignment, **plan.per_class.get(cls, {}), **{k: v for k, v in plan.pins.get(cls, {}).items() if v}}
        ins: dict[str, list] = {}
        for e in plan.edges:
            ins.setdefault(e.dst, []).append(e)
        for sink, lat in sinks.items():
            node = sink if sink.startswith("sink:") else f"sink:{sink}"
            seen, stack, extra = set(), [node], 0.0
            while stack:
                n = stack.pop()
                for e in ins.get(n, []):
                    a, b = view.get(e.src), view.get(e.dst) or view.get(e.src)
                    if a and b and a != b:
                        times = rate.get(e.dst, rate.get(e.src, 1.0)) or 1.0
                        for site, way in route_links(planned, a, b):
                            extra += times * (_hop_ms(observed, site, way, e.nbytes) - _hop_ms(planned, site, way, e.nbytes))
                    if e.src not in seen:
                        seen.add(e.src)
                        stack.append(e.src)
                        at = view.get(e.src)
                        if at is not None and at in scale and at in node_ms.get(e.src, {}):
                            extra += (scale[at] - 1.0) * node_ms[e.src][at] * (rate.get(e.src, 1.0) or 1.0)
            out[_sink_key(cls, sink)] = lat.latency_ms + extra
    return out


def moves_of(old: Plan, new: Plan, classes: Iterable[str] | None = None) -> list[dict[str, str | None]]:
    """Per class, each piece `new` runs where `old` did not run all of its segments (what a live move
    loads on a new site), and each piece of `old` whose segments `new` lacks (`to_site` None);
    compared segment by segment (planner.plan.piece_moves), whatever pieces each plan cut."""
    return [{"edge_class": m.edge_class, "piece": m.piece, "from_site": m.from_site, "to_site": m.to_site,
             "segments": ",".join(m.segments)} for m in piece_moves(old, new, classes)]


def class_weights(plan: Plan) -> dict[str, float]:
    """Class -> its devices (the planner's weights), from the plan's coverage."""
    return {c: float(v.devices) for c, v in plan.coverage.items()}


def replan_scope(plan: Plan, spec: FleetSpec, classes: Iterable[str] | None) -> FleetSpec:
    """`spec` with only the edge classes a re-plan must cover: the classes that run here (`classes`;
    None: all) and every other one whose current placement uses a site besides its own (it shares
    capacity with them). A class that runs everything on its own devices shares nothing with the
    others, so leaving it out changes no one's optimum (planner.decompose solves such classes apart
    anyway) and saves its solves; it keeps its old placement."""
    if classes is None:
        return spec
    keep = set(classes)
    fleet = plan.fleet_model()
    drop = {c for c in fleet.edge_classes() if c not in keep
            and c in plan.per_class and set({**plan.assignment, **plan.per_class[c]}.values()) <= {c}}
    if not drop:
        return spec
    return spec.model_copy(update={"sites": {k: v for k, v in spec.sites.items() if k not in drop}})


def site_ratios(figures: Iterable[Figure]) -> dict[str, float]:
    """Site -> the median observed / reference ratio of its `compute:NODE@SITE` figures (how much
    slower, > 1, or faster its pieces run than the plan assumed)."""
    per: dict[str, list[float]] = {}
    for f in figures:
        kind, _, rest = f.key.partition(":")
        if kind == "compute" and "@" in rest and f.planned > 0 and f.observed > 0:
            per.setdefault(rest.rpartition("@")[2], []).append(f.observed / f.planned)
    return {site: float(sorted(v)[len(v) // 2]) if len(v) % 2 else float(sum(sorted(v)[len(v) // 2 - 1:len(v) // 2 + 1]) / 2)
            for site, v in per.items()}


def scaled_cost_model(fleet: Fleet, compute_scale: Mapping[str, float] | None):
    """A cost model whose compute times on each site in `compute_scale` (site -> ratio) are the
    planned ones times the ratio (a drifted site's pieces and transforms as observed). Keyed by the
    site's device: sites of one device model share a scale (the cost model is asked per device)."""
    from tierplan.devices.costmodel import CostModel
    by_device = {fleet.classes[s].device.name: float(r) for s, r in (compute_scale or {}).items()
                 if s in fleet.classes and r > 0 and abs(r - 1.0) > 1e-9}
    if not by_device:
        return CostModel()

    class _Scaled(CostModel):
        def piece_ms(self, piece, device, batch=1, precision="fp32"):   # type: ignore[no-untyped-def]
            return super().piece_ms(piece, device, batch, precision) * by_device.get(device.name, 1.0)

        def transform_ms(self, spec, device):   # type: ignore[no-untyped-def]
            return super().transform_ms(spec, device) * by_device.get(device.name, 1.0)
    return _Scaled()


@dataclass
class Replanner:
    """Warm-started, time-limited re-plans of one plan's app on observed fleets. The app graph (the
    models cut at their candidate points) is built once (`prepare`), so a re-plan costs the solve."""

    plan: Plan
    pieces_dir: Path
    graph: object = None
    regroup: Callable | None = None
    solves: list[float] = field(default_factory=list)

    def prepare(self) -> "Replanner":
        if self.graph is None:
            from tierplan.partition.app_graph import build_app_graph
            from tierplan.partition.candidates import DEFAULT_SEGMENTS
            app = self.plan.app_spec()
            self.graph = build_app_graph(app, self.pieces_dir, segments=DEFAULT_SEGMENTS)

            def regroup(cuts):
                return build_app_graph(app, self.pieces_dir, cuts=cuts)
            self.regroup = regroup
        return self

    def __call__(self, fleet: FleetSpec, time_limit_s: float, current: Plan | None = None,
                 compute_scale: Mapping[str, float] | None = None, move_cost_ms: float | None = None) -> Plan:
        """A plan of the app on `fleet`, warm-started from `current` (default: the plan given), with
        each site's compute times times `compute_scale[site]` (observed compute drift) and
        `move_cost_ms` charged in the objective per segment placed off `current`'s site
        (planner.movecost)."""
        from tierplan.devices.fleet import resolve_fleet
        from tierplan.planner.api import plan_graph
        from tierplan.planner.build import SloTarget
        self.prepare()
        app = self.plan.app_spec()
        resolved = resolve_fleet(fleet, catalog={})
        t0 = time.perf_counter()
        new = plan_graph(self.graph, resolved, scaled_cost_model(resolved, compute_scale), slo={s.sink: SloTarget(s.latency_ms, s.percentile)
                                                                for s in app.slo},
                         objective=app.weights, budget_usd_per_hour=app.budget_usd_per_hour,
                         time_limit_s=time_limit_s, from_plan=current or self.plan, regroup=self.regroup,
                         with_baselines=False, analyse_uncovered=False, move_cost_ms=move_cost_ms or 0.0)
        self.solves.append(time.perf_counter() - t0)
        return new.with_inputs(app, resolved)
