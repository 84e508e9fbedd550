"""Rehearse `--adapt` in the simulator: a link's bandwidth steps mid-run and the same policy reacts.

`rehearse(plan, step, policy, ...)` replays the runtime's control loop over a simulated run:

- observe: after the step, the runtime's observer (runtime.observe) reads the new goodput from a
  run of `min_run` requests whose transfer over the link is off its planned time: at the rate the
  requests cross the link, `min_run / rate` after the step (`flag_time`); the shared
  `DriftDetector` (planner.adaptpolicy) is fed that figure every `tick_s` and flags it `sustain_s`
  after the run's first request, with the effect it has on the plan's biggest transfer over that link;
- decide: the same re-plan (a `Replanner`, or the new plan a live run adopted) and the same
  `decide` on the old plan re-costed with the observed figure;
- move: the switch comes `replan_s + load_s` after the flag (the live run's figures when given).

Latency over time is simulated per segment (before the step, from the step to the switch, after
the switch): each segment's plan on the fleet with that segment's link figure, replayed as the run
ran it (`simulations.calibration.as_run`: its classes, devices and workers, the measured compute
times of a `profile`) for the segment's own length (or `segment_s` simulated seconds, its steady
state); a segment's p50/p95 hold for its whole span. Queues carried across a boundary (a link's backlog when it is overloaded) are not simulated:
each segment starts empty, which the report says.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tierplan.devices.fleet import Fleet
from tierplan.errors import InputError
from tierplan.planner.adaptpolicy import (AdaptPolicy, DriftDetector, Figure, class_weights, decide, link_figures,
                                          moves_of, observed_fleet, predicted, recost, route_links, slo_of)
from tierplan.planner.plan import Plan
from tierplan.spec import FleetSpec

__all__ = ["Step", "Segment", "Rehearsal", "rehearse", "flag_time", "biggest_transfer"]


@dataclass(frozen=True)
class Step:
    """At `at_s`, the attach link of `site` goes to `up_mbps` (goodput up)."""

    site: str
    at_s: float
    up_mbps: float


@dataclass
class Segment:
    start_s: float
    end_s: float
    plan: str                 # "old" | "new"
    up_mbps: float
    sinks: dict[str, dict[str, float | None]] = field(default_factory=dict)   # sink -> p50_ms, p95_ms


@dataclass
class Rehearsal:
    adapt: bool
    step: Step
    flag_s: float | None = None
    switch_s: float | None = None
    decision: dict | None = None
    moves: list = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def p95_at(self, sink: str, t_s: float) -> float | None:
        """The simulated p95 of `sink` for requests sent at `t_s`."""
        for seg in self.segments:
            if seg.start_s <= t_s < seg.end_s:
                return seg.sinks.get(sink, {}).get("p95_ms")
        return None

    def to_json(self) -> dict:
        return {"adapt": self.adapt, "step": vars(self.step), "flag_s": self.flag_s, "switch_s": self.switch_s,
                "decision": self.decision, "moves": self.moves, "notes": self.notes,
                "segments": [vars(s) for s in self.segments]}


def biggest_transfer(plan: Plan, site: str, way: str = "up") -> int:
    """Bytes of the biggest tensor any class's view of `plan` sends over `site`'s attach link that way."""
    fleet = plan.fleet_model()
    best = 0
    for cls in plan.per_class or {"": {}}:
        view = {**plan.assignment, **plan.per_class.get(cls, {}), **{k: v for k, v in plan.pins.get(cls, {}).items() if v}}
        for e in plan.edges:
            a, b = view.get(e.src), view.get(e.dst)
            if a and b and a != b and (site, way) in route_links(fleet, a, b):
                best = max(best, int(e.nbytes))
    return best


def flag_time(plan: Plan, step: Step, policy: AdaptPolicy, rate_hz: float | None = None, min_run: int = 2,
              horizon_s: float = 600.0) -> float | None:
    """When the shared detector flags the stepped link, fed what the runtime's observer would estimate
    (None: never, e.g. the plan sends nothing over that link, or the step is within the threshold).

    The observer reads a step from a run of `min_run` requests whose transfer is off (runtime.observe):
    requests cross the link at `rate_hz` (default: the app's slowest source rate), so the run begins
    `1 / rate_hz` after the step, plus the transfer's time at the new goodput, and is complete
    `min_run / rate_hz` after it; the detector counts `sustain_s` from the run's first request."""
    figs = link_figures(plan.fleet_model(), step.site)
    nbytes = biggest_transfer(plan, step.site) if figs else 0
    if nbytes == 0:
        return None
    if rate_hz is None:
        app = plan.app_spec() if plan.app is not None else None
        rates = [s.rate_hz for s in app.sources.values() if s.rate_hz] if app is not None else []
        rate_hz = min(rates) if rates else 1.0
    planned = figs["up_mbps"]
    wire_s = (figs["rtt_ms"] / 2.0 + nbytes * 8.0 / (step.up_mbps * 1e3)) / 1e3
    began = step.at_s + 1.0 / rate_hz + wire_s
    seen = step.at_s + max(1, min_run) / rate_hz + wire_s
    det = DriftDetector(policy)
    key = f"link:{step.site}:up_mbps"
    t = 0.0
    while t <= step.at_s + horizon_s:
        obs = step.up_mbps if t >= seen else planned
        effect = nbytes * abs(8.0 / (obs * 1e3) - 8.0 / (planned * 1e3))
        if det.update(t, [Figure(key, planned, obs, 0, effect, began if t >= seen else None)]):
            return t
        t = round(t + policy.tick_s, 9)
    return None


def _with_uplink(plan: Plan, site: str, up_mbps: float) -> Plan:
    spec = observed_fleet(plan, {f"link:{site}:up_mbps": up_mbps})
    return plan.model_copy(update={"fleet": spec.model_dump(mode="json", by_alias=True, exclude_none=True)})


def _simulate(plan: Plan, run_report: Path | None, duration_s: float, seed: int,
              colocate: int | None, arrivals_s: Sequence[float] | None = None) -> dict[str, dict[str, float | None]]:
    from tierplan.simulations.api import simulate
    from tierplan.simulations.calibration import as_run, load_profile
    from tierplan.simulations.config import Scenario
    from tierplan.simulations.scenario import ArrivalSpec
    profile = load_profile(run_report) if run_report is not None else None
    ran = as_run(plan, run_report)
    arrivals = ArrivalSpec() if arrivals_s is None else \
        ArrivalSpec(kind="trace", trace=tuple((float(t), None) for t in sorted(arrivals_s)))
    rep = simulate(ran, scenario=Scenario(strategies=("optimal",), duration_s=duration_s, seed=seed, profile=profile,
                                          colocate=colocate, arrivals=arrivals))
    res = rep.strategies["optimal"]
    return {name: {"p50_ms": s.p50_ms, "p95_ms": s.p95_ms} for name, s in res.sinks.items()}


def rehearse(plan: Plan, step: Step, policy: AdaptPolicy, duration_s: float, *, adapt: bool = True,
             new_plan: Plan | None = None, replan: Callable[[FleetSpec, float], Plan] | None = None,
             replan_s: float | None = None, load_s: float = 0.5, classes: list[str] | None = None,
             run_report: str | Path | dict | None = None, segment_s: float | None = None, seed: int = 0,
             colocate: int | None = None, rate_hz: float | None = None,
             arrivals_s: Sequence[float] | None = None) -> Rehearsal:
    """The run of `plan` with `step` applied, with (`adapt`) or without the policy (see the module doc).

    `new_plan`: the plan a live run adopted (else `replan(observed fleet, time limit)` makes one);
    `replan_s`, `load_s`: how long the re-plan and the load before the switch took (the live run's);
    `run_report`: a `tierplan run --json`-shaped report (a path or the dict) of the live run, whose
    traces give the measured compute times and whose classes, devices and workers the replay uses;
    `colocate`: every site on one host with that many cores (a run on one machine); `rate_hz`: the
    requests per second that cross the stepped link (flag_time); `arrivals_s`: the live run's send
    times (s from its start): each segment replays the requests sent in it at those times (the same
    sample path: with a few dozen requests per segment, two Poisson draws' p95 differ by more than
    the models do), for every source of the class (`segment_s` replays the rate instead)."""
    out = Rehearsal(adapt, step)
    report_path: Path | None = None
    tmp: tempfile.TemporaryDirectory | None = None
    if isinstance(run_report, dict):
        tmp = tempfile.TemporaryDirectory(prefix="tierplan-rehearse-")
        report_path = Path(tmp.name) / "run.json"
        report_path.write_text(json.dumps(run_report))
    elif run_report is not None:
        report_path = Path(run_report)
    try:
        figs = link_figures(plan.fleet_model(), step.site)
        if not figs:
            raise InputError(f"rehearse: site class {step.site!r} has no attach link to step. To fix: name an "
                             "edge or base-station class of the plan's fleet")
        planned = figs["up_mbps"]
        switch_s = math.inf
        chosen = None
        if adapt:
            out.flag_s = flag_time(plan, step, policy, rate_hz)
            if out.flag_s is not None:
                links = {f"link:{step.site}:up_mbps": step.up_mbps}
                spec = observed_fleet(plan, links)
                if new_plan is None and replan is not None:
                    import time
                    t0 = time.perf_counter()
                    new_plan = replan(spec, policy.replan_time_limit_s)
                    replan_s = replan_s if replan_s is not None else time.perf_counter() - t0
                if new_plan is not None:
                    observed: Fleet = _resolved(spec)
                    moves = moves_of(plan, new_plan, classes)
                    dec = decide(policy, recost(plan, observed, classes), predicted(new_plan, classes),
                                 slo_of(plan, classes), len(moves), weights=class_weights(plan))
                    out.decision, out.moves = dec.to_json(), moves
                    if dec.adopt:
                        chosen = new_plan
                        switch_s = out.flag_s + (replan_s or 0.0) + load_s
                        out.switch_s = switch_s
        bounds = [(0.0, step.at_s, "old", planned), (step.at_s, min(switch_s, duration_s), "old", step.up_mbps)]
        if switch_s < duration_s:
            bounds.append((switch_s, duration_s, "new", step.up_mbps))
        for start, end, which, mbps in bounds:
            if end <= start:
                continue
            p = plan if which == "old" else chosen
            assert p is not None
            seg = Segment(start, end, which, mbps)
            sends = None if arrivals_s is None or segment_s else [t - start for t in arrivals_s if start <= t < end]
            seg.sinks = _simulate(_with_uplink(p, step.site, mbps), report_path, segment_s or (end - start), seed, colocate,
                                  sends)
            out.segments.append(seg)
        out.notes.append("each segment is replayed from empty queues for "
                         + (f"{segment_s:g} simulated s (its steady state)" if segment_s else "its own length")
                         + ("" if arrivals_s is None or segment_s else ", its requests at the live run's send times")
                         + "; a backlog carried over a boundary is not simulated")
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


def _resolved(spec: FleetSpec) -> Fleet:
    from tierplan.devices.fleet import resolve_fleet
    return resolve_fleet(spec, catalog={})
