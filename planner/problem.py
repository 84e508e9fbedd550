"""The placement problem at device-class granularity, in integer micro-units (planner input).

A `Problem` is everything the solver, the brute-force enumerator, the baselines and the
evaluator need, with every figure already converted by `planner.units` (microseconds,
micro-dollars per hour, microjoules, kilobytes, bits per second, parts per million). It holds
no cost model and no graph: `planner.build.build_problem` derives it from (app graph, Fleet,
CostModel), and tests may build one directly.

Sets
    V: app nodes (sources, pieces, transforms, sinks) in one topological order.
    I: transfer items: a set of tensors produced by node u = prod(i), consumed by nodes cons(i).
    S: site classes; E: edge classes (the classes that originate requests);
    chain(e) = (e, its base-station class, its cloud class): the sites requests of e may use.
Per class e the data is: allowed sites per node, compute time (us per request), the load a
node adds to a site (ppm of one instance), energy, and per transfer (i, a -> b) its time, its
egress (u$/h for the whole class), radio energy and the link hops it crosses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

__all__ = ["SiteData", "NodeData", "ItemData", "LinkUse", "ClassData", "Segments", "Problem", "Assignment",
           "COMPUTE_KINDS"]

COMPUTE_KINDS = ("piece", "transform")

# class -> node index -> site class
Assignment = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class SiteData:
    """A site class: how many instances exist/can be rented, price, memory, utilisation cap."""

    name: str
    tier: str
    max_instances: int          # instances available in total across the class
    price_uusd_per_h: int       # per instance-hour (0 when owned)
    util_cap_ppm: int           # max_utilization of one instance, ppm
    memory_kb: int              # per instance
    fixed_instances: bool = False   # edge devices: every device is one instance, always on
    base_load_ppm: int = 0          # load already placed there (sequential per-class planning)
    levels_ppm: tuple[int, ...] = ()    # utilisation levels (planner.queueing); () = the cap, no wait
    wait_factors: tuple[int, ...] = ()  # per level: p-quantile wait in thousandths of the job size

    def levels(self) -> tuple[tuple[int, int], ...]:
        """(utilisation level ppm, wait factor) pairs, ascending; the last level is the cap."""
        if not self.levels_ppm:
            return ((self.util_cap_ppm, 0),)
        return tuple(zip(self.levels_ppm, self.wait_factors))

    @property
    def queues(self) -> bool:
        """Whether any level makes requests wait (the waiting-time term applies)."""
        return any(self.wait_factors)


@dataclass(frozen=True)
class NodeData:
    """An app node: its kind, memory footprint on the site that hosts it, and its pin."""

    id: str
    kind: str                   # source, piece, transform, sink
    mem_kb: int = 0
    group: int = 0              # connected component: requests of different ones never queue together


@dataclass(frozen=True)
class ItemData:
    """Tensors of one producer sent together; consumed by `consumers` (indices into nodes)."""

    producer: int
    consumers: tuple[int, ...]
    tensors: tuple[str, ...]
    nbytes: int                 # per request (producer rate factor included)
    private: bool = False


@dataclass(frozen=True)
class LinkUse:
    """One link crossed in one direction: its clock key and the capacity keys it counts against."""

    key: str                    # e.g. "phones:up": the link of class `phones` towards its parent
    cap_keys: tuple[str, ...]   # capacity constraints this traffic counts against
    downlink: bool = False      # data leaving the upper site (pays egress)


@dataclass(frozen=True)
class ClassData:
    """One edge class and everything that depends on it (its chain, links, request rate)."""

    name: str
    count: int                                  # devices in the class
    chain: tuple[str, ...]                      # (edge class, base station class?, cloud class?)
    weight: int                                 # integer share of the fleet's requests
    allowed: tuple[tuple[str, ...], ...]        # per node: sites it may run on
    compute_us: tuple[Mapping[str, int], ...]   # per node: site -> us per request
    load_ppm: tuple[Mapping[str, int], ...]     # per node: site -> ppm of one instance, whole class
    energy_uj: tuple[Mapping[str, int], ...]    # per node: site -> uJ per request
    hops: Mapping[tuple[str, str], tuple[LinkUse, ...]]          # (a, b) -> links crossed
    xfer: Mapping[tuple[int, str, str], int]                 # (item, a, b) -> transfer time (us)
    bits_per_s: tuple[int, ...]                 # per item: whole-class traffic when it crosses
    egress_uusd_h: Mapping[tuple[int, str, str], int]        # (item, a, b) -> u$/h, whole class
    radio_uj: Mapping[tuple[int, str, str], int]             # (item, a, b) -> uJ per request
    slo_us: Mapping[int, int] = field(default_factory=dict)  # sink node -> SLO (us)
    requests_per_s: float = 0.0                 # whole class
    link_scale: float = 1.0                     # bandwidth multiplier applied (what-if analysis)

    def xfer_us(self, item: int, a: str, b: str) -> int:
        """Time to move item `item` from site a to site b (0 on one site): sum over the hops."""
        return 0 if a == b else self.xfer[(item, a, b)]


@dataclass(frozen=True)
class Segments:
    """A model handed over cut at every candidate point: its segments (node indices, in the
    model's order) become pieces by merging consecutive segments placed on one site. The plan
    cuts between segments j and j+1 where any class places them on different sites, and at most
    `max_pieces - 1` times (partition.candidates, planner.formulation)."""

    model: str
    nodes: tuple[int, ...]
    max_pieces: int

    @property
    def binds(self) -> bool:
        """Whether the bound can bind at all (more segments than pieces allowed)."""
        return len(self.nodes) > self.max_pieces


@dataclass(frozen=True)
class Problem:
    """Everything the planner optimises over, in integers. Nodes are in topological order."""

    sites: Mapping[str, SiteData]
    nodes: tuple[NodeData, ...]
    items: tuple[ItemData, ...]
    classes: tuple[ClassData, ...]
    link_cap_bps: Mapping[str, int]             # capacity key -> bits/s available
    objective_kind: str = "cost"                # cost, latency, energy or weighted
    coef_cost: int = 1                          # objective = coef_cost * cost_uusd_h
    coef_latency: int = 0                       #   + coef_latency * sum_e w_e sum_sinks L_e (us)
    coef_energy: int = 0                        #   + coef_energy * sum_e w_e E_e (uJ)
    fixed_cost_uusd_h: int = 0                  # owned edge devices with a price: constant
    budget_uusd_h: int | None = None            # cost (rented instances + egress) cap, if any
    labels: Mapping[str, str] = field(default_factory=dict)  # site class -> tier, for reports
    latency_sinks: tuple[int, ...] | None = None  # sinks counted in the latency term (None: all)
    segments: tuple[Segments, ...] = ()         # models whose cuts are chosen with the placement
    latency_model: str = "sum"                  # "sum" (chains: exact) or "overlap" (DAGs, planner.evaluate)
    move_penalty: Mapping[tuple[str, int, str], int] = field(default_factory=dict)  # planner.movecost (re-plans)

    def cuts_used(self, assignment: Assignment) -> dict[str, tuple[int, ...]]:
        """model -> boundaries j (between its segments j and j+1) some class places apart."""
        return {g.model: tuple(j for j in range(len(g.nodes) - 1)
                               if any(assignment[c.name][g.nodes[j]] != assignment[c.name][g.nodes[j + 1]]
                                      for c in self.classes if c.name in assignment))
                for g in self.segments}

    @property
    def pieces_bound(self) -> bool:
        """Whether some model's piece bound couples the classes (then no class-by-class decomposition)."""
        return any(g.binds for g in self.segments)

    @property
    def compute_nodes(self) -> tuple[int, ...]:
        """Indices of pieces and transforms (the nodes that occupy a site)."""
        return tuple(i for i, n in enumerate(self.nodes) if n.kind in COMPUTE_KINDS)

    @property
    def sink_nodes(self) -> tuple[int, ...]:
        return tuple(i for i, n in enumerate(self.nodes) if n.kind == "sink")

    @property
    def latency_nodes(self) -> tuple[int, ...]:
        """The sinks whose latencies the latency term sums."""
        return self.sink_nodes if self.latency_sinks is None else tuple(self.latency_sinks)

    def items_of(self, producer: int) -> tuple[int, ...]:
        return tuple(k for k, it in enumerate(self.items) if it.producer == producer)

    def with_objective(self, kind: str, coef_cost: int, coef_latency: int, coef_energy: int) -> "Problem":
        """The same problem with another objective (never mutates self)."""
        return replace(self, objective_kind=kind, coef_cost=coef_cost,
                       coef_latency=coef_latency, coef_energy=coef_energy)

    def with_latency_sinks(self, sinks: tuple[int, ...] | None) -> "Problem":
        """The same problem with the latency term restricted to `sinks`."""
        return replace(self, latency_sinks=sinks)

    def with_classes(self, classes: tuple[ClassData, ...]) -> "Problem":
        return replace(self, classes=tuple(classes))

    def only_class(self, name: str) -> "Problem":
        """The sub-problem of one edge class (shared capacities as if it were alone)."""
        return replace(self, classes=tuple(c for c in self.classes if c.name == name))

    def without_slo(self, names: set[str] | None = None) -> "Problem":
        """Drop the SLO constraints of the named classes (all when None)."""
        return replace(self, classes=tuple(
            replace(c, slo_us={}) if names is None or c.name in names else c for c in self.classes))
