"""Run every device class of a plan at once: one executable plan with a copy of the graph per class.

A fleet plan places the app once per edge device class (`Plan.per_class[class][node]`: the site
class that runs the node for that class's requests; `Plan.pins[class]`: where its sources and sinks
are). To run the whole fleet on one deployment, every class gets its own copy of the nodes, named
`CLASS/NODE` (`class_node`), hosted where that class's view puts them: the class's own edge site
runs its on-device pieces, and the base-station and cloud sites the classes share host the copies
of every class that offloads to them, so their workers see the classes' mixed load.

A plan without per-class views (one placement, `assignment`) runs as it is. One class of a fleet
plan runs with its own view and the plan's node names (the deployment it had before).

Shared sites run `plan.instances` scaled to the devices that run (`scaled_workers`): a site planned
with 80 instances for the 1,500 devices that use it runs 80 x d / 1,500 workers for d devices, at
least one; each line of `ClassRun.scaling` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from tierplan.errors import InputError
from tierplan.planner.plan import Plan, PlanEdge, PlanPiece

__all__ = ["ClassRun", "class_node", "split_node", "plan_classes", "parse_classes", "fleet_plan",
           "scaled_workers", "prepare"]

CLASS_SEP = "/"


def class_node(device_class: str, node: str) -> str:
    """The executable id of `node` for requests of `device_class` (`CLASS/NODE`)."""
    return f"{device_class}{CLASS_SEP}{node}"


def split_node(node: str, classes: Sequence[str]) -> tuple[str | None, str]:
    """(class, plan node) of an executable node id; (None, node) for a node of a one-class run."""
    head, sep, rest = node.partition(CLASS_SEP)
    if sep and head in classes:
        return head, rest
    return None, node


def plan_classes(plan: Plan) -> list[str]:
    """The edge device classes of a plan, in plan order (none for a plan with one placement)."""
    return list(plan.per_class)


def parse_classes(plan: Plan, text: str | None, flag: str = "--class") -> list[str]:
    """The classes `--class NAME[,NAME]` names (all of the plan's when empty), checked against the plan."""
    known = plan_classes(plan)
    if not text or not text.strip():
        return known
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in known]
    if bad:
        raise InputError(f"{flag} {text!r}: {bad[0]!r} is not a device class of this plan "
                         f"(it has {', '.join(known) or 'no per-class views'}). To fix: name one of those")
    return names


@dataclass(frozen=True)
class ClassRun:
    """What runs: the executable plan, its classes, devices per class, workers per site and why."""

    plan: Plan                                   # executable: class-prefixed nodes when several classes run
    classes: tuple[str, ...]                     # the classes that run ((): a plan with one placement)
    devices_per_class: int
    workers: dict[str, int] = field(default_factory=dict)     # site class -> workers (edge: devices)
    scaling: dict[str, str] = field(default_factory=dict)     # site class -> how its count was chosen
    sources: dict[str, dict[str, str]] = field(default_factory=dict)   # class -> plan source -> executable id
    sinks: dict[str, dict[str, str]] = field(default_factory=dict)     # class -> plan sink -> executable id

    @property
    def prefixed(self) -> bool:
        """True when node ids carry their class (`CLASS/NODE`)."""
        return len(self.classes) > 1

    def class_of(self, node: str) -> str | None:
        """The class whose request runs `node` (an executable id), None in a one-placement run."""
        if not self.prefixed:
            return self.classes[0] if self.classes else None
        return split_node(node, self.classes)[0]

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "devices_per_class": self.devices_per_class,
                "workers": dict(self.workers), "scaling": dict(self.scaling)}


def _view(plan: Plan, cls: str) -> dict[str, str]:
    """Node -> site class for `cls`'s requests: its per-class view plus the pins of its sources and sinks."""
    view = {**plan.assignment, **plan.per_class.get(cls, {})}
    view.update({n: s for n, s in plan.pins.get(cls, {}).items() if s})
    return view


def fleet_plan(plan: Plan, classes: Sequence[str]) -> Plan:
    """An executable plan running `classes` at once: each class's copy of every node (`CLASS/NODE`)
    assigned where the class's view puts it; edges copied within each class. One class: the plan
    with that class's view as `assignment` and the node names kept."""
    if not classes:
        return plan
    if len(classes) == 1:
        cls = classes[0]
        return plan.model_copy(update={"assignment": _view(plan, cls), "per_class": {cls: plan.per_class[cls]},
                                       "pins": {cls: plan.pins.get(cls, {})}})
    pieces: list[PlanPiece] = []
    edges: list[PlanEdge] = []
    assignment: dict[str, str] = {}
    ids = [p.id for p in plan.pieces]
    ids += [n for e in plan.edges for n in (e.src, e.dst) if n not in ids]
    known = {p.id: p for p in plan.pieces}
    for cls in classes:
        view = _view(plan, cls)
        for n in dict.fromkeys(ids):
            p = known.get(n)
            if p is None:   # a node only the edges name: a source or sink (graph._kind_of)
                from tierplan.runtime.graph import SINK_PREFIX
                p = PlanPiece(id=n, kind="sink" if n.startswith(SINK_PREFIX) else "source")
            pieces.append(p.model_copy(update={"id": class_node(cls, n)}))
            if view.get(n):
                assignment[class_node(cls, n)] = view[n]
        edges += [e.model_copy(update={"src": class_node(cls, e.src), "dst": class_node(cls, e.dst)})
                  for e in plan.edges]
    sinks = {}
    for cls in classes:   # each class's predicted sink latency under its own name
        for s, lat in (plan.class_sinks.get(cls) or plan.sinks).items():
            sinks[class_node(cls, s)] = lat
    return plan.model_copy(update={"pieces": pieces, "edges": edges, "assignment": assignment, "per_class": {},
                                   "pins": {}, "sinks": sinks,
                                   "order": [class_node(c, n) for c in classes for n in plan.order]})


def _sites_of(plan: Plan, cls: str) -> set[str]:
    return {s for s in _view(plan, cls).values() if s}


def scaled_workers(plan: Plan, classes: Sequence[str], devices_per_class: int,
                   site_tiers: Mapping[str, str]) -> tuple[dict[str, int], dict[str, str]]:
    """Workers per used site and the reason: an edge class runs `devices_per_class` devices (agents);
    a shared site runs its planned instances scaled by the share of its planned devices that run
    (at least one worker)."""
    workers: dict[str, int] = {}
    why: dict[str, str] = {}
    devices = {c: (plan.coverage[c].devices if c in plan.coverage else 0) for c in plan_classes(plan)}
    used = {s for c in classes for s in _sites_of(plan, c)} if classes else set(plan.assignment.values())
    for site in sorted(used):
        if site_tiers.get(site) == "edge":
            workers[site] = devices_per_class
            why[site] = f"{devices_per_class} device(s) of {devices.get(site, 0):,} planned"
            continue
        planned = plan.instances.get(site, 0)
        users = [c for c in plan_classes(plan) if site in _sites_of(plan, c)]
        total = sum(devices.get(c, 0) for c in users)
        running = devices_per_class * len([c for c in users if c in classes])
        if planned > 0 and total > 0:
            exact = planned * running / total
            workers[site] = max(1, math.ceil(exact - 1e-9))
            why[site] = (f"{planned} instance(s) planned for {total:,} devices of {', '.join(users)}; "
                         f"{running} run: {planned} x {running}/{total:,} = {exact:.3g} -> {workers[site]}"
                         + (" (at least one)" if exact < 1 else ""))
        else:
            workers[site] = 1
            why[site] = "1 worker (the plan gives no instance count for it)"
    return workers, why


def prepare(plan: Plan, classes: Sequence[str] | None = None, devices_per_class: int = 1,
            site_tiers: Mapping[str, str] | None = None) -> ClassRun:
    """The executable plan running `classes` (default: every class of the plan) with
    `devices_per_class` devices each, and the workers of every site it uses."""
    if devices_per_class < 1:
        raise InputError(f"--devices-per-class {devices_per_class}: must be at least 1. To fix: e.g. "
                         "--devices-per-class 2")
    chosen = tuple(classes if classes is not None else plan_classes(plan))
    for c in chosen:
        if c not in plan.per_class:
            raise InputError(f"--class {c!r}: not a device class of this plan (it has "
                             f"{', '.join(plan_classes(plan)) or 'no per-class views'}). To fix: name one of those")
    tiers = dict(site_tiers or plan.site_tiers)
    exe = fleet_plan(plan, chosen)
    workers, why = scaled_workers(plan, chosen, devices_per_class, tiers)
    sources: dict[str, dict[str, str]] = {}
    sinks: dict[str, dict[str, str]] = {}
    for c in chosen:
        for p in plan.pieces:
            name = class_node(c, p.id) if len(chosen) > 1 else p.id
            if p.kind == "source":
                sources.setdefault(c, {})[p.id] = name
            elif p.kind == "sink":
                sinks.setdefault(c, {})[p.id] = name
    return ClassRun(plan=exe, classes=chosen, devices_per_class=devices_per_class, workers=workers,
                    scaling=why, sources=sources, sinks=sinks)
