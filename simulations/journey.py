"""Compile a plan's placement into journeys: the stages one request passes through, per origin class.

A journey is what one request from one source on one producing site class (an edge device class,
usually) goes through under one strategy:

- compute stages: a run of the app DAG's nodes placed on one site class, in a topological order
  that keeps same-site nodes together. One site runs a request's pieces one after another (an
  inference engine does not run two of them in parallel for free), so a run is one job; a node
  that waits for a tensor from another site starts a new job (it runs when that tensor is there).
  The runtime sends each edge's tensors as their own delivery, so a frame sent to two nodes on one
  site crosses the link twice, back to back, and the first node runs while the second copy travels.
- link hops: each link a tensor crosses between two compute stages (up the attach chain, then
  down), and, when the link class declares a shared `capacity_mbps`, the parent's shared side.
- sinks: the stages whose completion delivers each result where it is wanted (back to the
  producing device by default), so a sink's latency includes the downlink delivery.

Stages form a DAG (branches on different sites overlap); work per stage is a list of
(amount, rate_factor): ms for compute, bytes for links, times the invocations a fan-out produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Literal

import networkx as nx

from tierplan.devices.fleet import Fleet
from tierplan.errors import InputError
from tierplan.planner.plan import Plan, PlanPiece

__all__ = ["Work", "Stage", "Journey", "compile_journeys", "resolve_site", "chain", "link_hops", "TIER_NAMES",
           "MAX_LANES"]

TIER_NAMES = ("edge", "base_station", "cloud")
# Fan-outs up to this many items per request travel as separate items (lanes); larger ones are one
# batch per stage (the lanes multiply the stages a request passes through).
MAX_LANES = 8


@dataclass(frozen=True)
class Work:
    """Work per invocation (ms of compute, or bytes on a link) and the invocations per request."""

    amount: float
    rate_factor: float
    sigma: float | None = None  # log-space spread of one invocation's time; None: the run's service_dist
    node: str = ""              # compute: the app node this work is (a measured profile is keyed by node@site)


@dataclass(frozen=True)
class Stage:
    """One queueing visit of a request: a compute job on a site, or a transfer over a link."""

    index: int
    kind: Literal["compute", "link"]
    site: str                       # compute: the site class; link: the class whose uplink is crossed
    direction: str | None = None    # link: "up" | "down"
    shared: bool = False            # link: the parent's shared capacity (one queue per parent instance)
    preds: tuple[int, ...] = ()     # () = starts when the request arrives
    work: tuple[Work, ...] = ()
    label: str = ""
    lane: int = -1                  # >= 0: the fan-out item this copy carries (runs when the request has more)
    lane_rate_factor: float = 1.0   # the fan-out's rate factor (invocations per request) for a lane
    result: bool = False            # link: the last hop (with a delay) of a result's delivery to its sink

    @property
    def expected_runs(self) -> float:
        """Share of requests that run this stage (a lane j runs when the fan-out gives more than j items)."""
        return 1.0 if self.lane < 0 else min(1.0, max(0.0, self.lane_rate_factor - self.lane))

    @property
    def resource(self) -> tuple:
        """The class of queues this stage joins (instances are told apart at run time)."""
        if self.kind == "compute":
            return ("compute", self.site)
        return ("link", self.site, self.direction, self.shared)


@dataclass(frozen=True)
class Journey:
    """Stages of one (origin class, source) pair under one strategy, in a topological order."""

    origin: str
    source: str
    rate_hz: float
    stages: tuple[Stage, ...]
    sinks: dict[str, tuple[int, ...]]  # sink name -> stages that must finish; () = at arrival

    @property
    def is_chain(self) -> bool:
        return all(s.preds == ((s.index - 1,) if s.index else ()) for s in self.stages)


def chain(fleet: Fleet, name: str) -> list[str]:
    """`name` and every class above it, lowest first."""
    return [name, *fleet.parents(name)]


def link_hops(fleet: Fleet, a: str, b: str) -> list[tuple[str, str]]:
    """The links a tensor crosses from class a to class b as (site class whose uplink it is, "up"|"down"),
    in order: `Fleet.hops` (up a's attach chain to the common ancestor, then down to b)."""
    return [(h.child, h.direction) for h in fleet.hops(a, b)]


def resolve_site(value: str, origin: str, fleet: Fleet) -> str:
    """A placement target as a site class: an edge class means the requesting device itself,
    a tier name means the first class of that tier up the origin's attach chain (Fleet.resolve_pin)."""
    if value in fleet.classes:
        if fleet.classes[value].tier == "edge" and fleet.classes[origin].tier == "edge":
            return origin
        return value
    if value in TIER_NAMES:
        return fleet.resolve_pin(origin, value, what="plan")
    raise InputError(f"plan: unknown site class {value!r} (fleet has {', '.join(fleet.classes)}). "
                     f"To fix: plan and simulate with the same fleet.yaml")


def _order(g: nx.DiGraph, nodes: list[str], site: dict[str, str], pos: dict[str, int]) -> list[str]:
    """Topological order that stays on the current site while it can (fewer, longer runs)."""
    members = set(nodes)
    indeg = {n: sum(1 for u in g.predecessors(n) if u in members) for n in nodes}
    ready = sorted((n for n in nodes if indeg[n] == 0), key=pos.__getitem__)
    out: list[str] = []
    while ready:
        cur = site[out[-1]] if out else None
        pick = next((n for n in ready if site[n] == cur), ready[0])
        ready.remove(pick)
        out.append(pick)
        for v in g.successors(pick):
            if v in indeg:
                indeg[v] -= 1
                if indeg[v] == 0:
                    ready.append(v)
                    ready.sort(key=pos.__getitem__)
    return out


def _compute_work(ms: float | tuple[float, float], rate_factor: float, node: str = "") -> Work:
    """Work of one node: a mean time, or (mean, log-space sigma) for a measured spread."""
    if isinstance(ms, tuple):
        return Work(float(ms[0]), rate_factor, float(ms[1]), node)
    return Work(float(ms), rate_factor, None, node)


def compile_journeys(plan: Plan, fleet: Fleet, assignment_for: Callable[[str], dict[str, str]],
                     origins_for: Callable[[str], list[str]], rate_for: Callable[[str], float],
                     service_ms: Callable[[object, str], float],
                     deliver_for: Callable[[str], str | None] = lambda sink: None) -> list[Journey]:
    """Journeys of every (origin class, source) for one strategy.

    `assignment_for(origin)` gives node id -> site class (or tier) for requests from `origin`;
    `origins_for(source)` the classes producing the source's requests; `rate_for(source)` requests
    per second per producing site; `service_ms(plan_piece, site_class)` one invocation's mean time
    (or (mean_ms, sigma) when its spread is known); `deliver_for(sink id)` where a sink's result
    goes (source, a tier or a site class) when the plan's sink node does not say.
    """
    g = nx.DiGraph()
    pos: dict[str, int] = {}
    nodes = {p.id: p for p in plan.pieces}
    for i, p in enumerate(plan.pieces):
        g.add_node(p.id)
        pos[p.id] = i
    for e in plan.edges:
        for n in (e.src, e.dst):
            if n not in nodes:
                raise InputError(f"plan: edge {e.src} -> {e.dst} names unknown node {n!r}")
        g.add_edge(e.src, e.dst, nbytes=float(e.nbytes))
    journeys = []
    for src in (p.id for p in plan.pieces if p.kind == "source"):
        reach = [n for n in nx.descendants(g, src)]
        rate = rate_for(src)
        for origin in origins_for(src):
            journeys.append(_one(plan, g, nodes, pos, src, reach, origin, fleet,
                                 assignment_for(origin), rate, service_ms, deliver_for))
    return journeys


def _one(plan, g, nodes, pos, src, reach, origin, fleet, assign, rate, service_ms, deliver_for) -> Journey:
    site: dict[str, str] = {src: origin}
    for n in reach:
        p = nodes[n]
        if p.kind == "sink":
            target = getattr(p, "deliver_to", None) or deliver_for(n) or assign.get(n) or "source"
            site[n] = origin if target in ("source", "any") else resolve_site(target, origin, fleet)
        else:
            if n not in assign:
                raise InputError(f"plan: node {n!r} has no site in the assignment for {origin!r}. "
                                 f"To fix: re-run `tierplan plan`")
            site[n] = resolve_site(assign[n], origin, fleet)
    work_nodes = [n for n in reach if nodes[n].kind != "sink"]
    order = _order(g, work_nodes, site, pos)
    group_of: dict[str, int] = {}
    groups: list[tuple[str, list[str]]] = []
    for n in order:
        # A node joins the site's running job unless it waits for a tensor from another site: the runtime
        # sends each edge's tensor as its own delivery and runs a node when its inputs are there, so a
        # detector starts on the frame's first copy while the crops' copy is still on the link.
        remote_input = any(site[u] != site[n] for u in g.predecessors(n) if u == src or u in site)
        if groups and groups[-1][0] == site[n] and not remote_input:
            groups[-1][1].append(n)
        else:
            groups.append((site[n], [n]))
        group_of[n] = len(groups) - 1

    stages: list[Stage] = []

    def rf(n: str) -> float:
        return 1.0 if nodes[n].kind == "source" else float(nodes[n].rate_factor)

    def transfer(from_site: str, to_site: str, pred: tuple[int, ...], work: tuple[Work, ...], tag: str) -> tuple[int, ...]:
        for hop_site, direction in link_hops(fleet, from_site, to_site):
            sv = fleet.classes[hop_site]
            if sv.link is None:
                raise InputError(f"fleet: site class {hop_site!r} attaches to {sv.attach!r} without a link")
            parts = [False, True] if sv.link.capacity_mbps else [False]
            if direction == "down":
                parts.reverse()
            for shared in parts:
                stages.append(Stage(len(stages), "link", hop_site, direction, shared, pred, work,
                                    f"{tag} {hop_site}{'(shared)' if shared else ''} {direction}"))
                pred = (len(stages) - 1,)
        return pred

    group_stage: dict[int, int] = {}
    for gi, (gsite, members) in enumerate(groups):
        preds: list[int] = []
        incoming: dict[int, list[tuple[str, str]]] = {}   # predecessor group (-1: the source) -> edges
        for v in members:
            for u in g.predecessors(v):
                if u == src:
                    incoming.setdefault(-1, []).append((u, v))
                elif u in group_of and group_of[u] != gi:
                    incoming.setdefault(group_of[u], []).append((u, v))
        for key in sorted(incoming):
            edges = incoming[key]
            work = tuple(Work(g.edges[u, v]["nbytes"], rf(u)) for u, v in edges)
            pred: tuple[int, ...]
            if key < 0:
                from_site, pred = origin, ()
            else:
                from_site, pred = groups[key][0], (group_stage[key],)
            if from_site != gsite:
                pred = transfer(from_site, gsite, pred, work, f"{src}->{members[0]}")
            preds.extend(p for p in pred if p not in preds)
        work = tuple(_compute_work(service_ms(nodes[n], gsite), rf(n), n) for n in members)
        stages.append(Stage(len(stages), "compute", gsite, None, False, tuple(preds), work,
                            f"{gsite}: {', '.join(members)}"))
        group_stage[gi] = len(stages) - 1

    sinks: dict[str, tuple[int, ...]] = {}
    for n in sorted((n for n in reach if nodes[n].kind == "sink"), key=pos.__getitem__):
        name = n.removeprefix("sink:")
        done: list[int] = []
        for u in g.predecessors(n):
            if u == src or u not in group_of:
                continue
            gi = group_of[u]
            last: tuple[int, ...] = (group_stage[gi],)
            if groups[gi][0] != site[n]:
                first = len(stages)
                last = transfer(groups[gi][0], site[n], last, (Work(g.edges[u, n]["nbytes"], rf(u)),), f"->{name}")
                hop = next((st for st in reversed(stages[first:]) if not st.shared), None)
                if hop is not None:
                    stages[hop.index] = replace(hop, result=True)
            done.extend(last)
        sinks[name] = tuple(done)
    stages, sinks = _lanes(stages, sinks)
    return Journey(origin, src, rate, tuple(stages), sinks)


def _lanes(stages: list[Stage], sinks: dict[str, tuple[int, ...]]) -> tuple[list[Stage], dict[str, tuple[int, ...]]]:
    """Split a fan-out's stages into one lane per item, as the runtime sends them.

    A fan-out's items are separate messages: item 1 is computed upstream while item 2 still
    crosses the link (they pipeline through the same FIFO resources). The stages whose every work
    item has the fan-out's rate factor rf become ceil(rf) copies with one invocation each; lane j
    runs when the request's fan-out gave more than j items. Stages after the fan-in (and sinks)
    wait for every lane. One fan-out per journey, up to MAX_LANES items; otherwise unchanged.
    """
    fan = {w.rate_factor for st in stages for w in st.work} - {1.0}
    if len(fan) != 1:
        return stages, sinks
    rf = fan.pop()
    k = math.ceil(rf)
    region = {st.index for st in stages if st.work and all(w.rate_factor == rf for w in st.work)}
    if not region or k > MAX_LANES or k < 2:
        return stages, sinks
    out: list[Stage] = []
    new_of: dict[tuple[int, int], int] = {}   # (old index, lane or -1) -> new index

    def after(p: int, lane: int) -> list[int]:
        if p not in region:
            return [new_of[(p, -1)]]
        return [new_of[(p, lane)]] if lane >= 0 else [new_of[(p, j)] for j in range(k)]

    for st in stages:
        lanes = range(k) if st.index in region else (-1,)
        for j in lanes:
            preds = tuple(dict.fromkeys(x for p in st.preds for x in after(p, j)))
            work = tuple(replace(w, rate_factor=1.0) for w in st.work) if j >= 0 else st.work
            label = f"{st.label} [item {j + 1}]" if j >= 0 else st.label
            out.append(replace(st, index=len(out), preds=preds, work=work, label=label, lane=j,
                               lane_rate_factor=rf if j >= 0 else 1.0))
            new_of[(st.index, j)] = len(out) - 1
    new_sinks = {name: tuple(dict.fromkeys(x for p in done for x in after(p, -1))) for name, done in sinks.items()}
    return out, new_sinks
