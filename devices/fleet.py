"""Fleet resolution: site classes with their DeviceSpec and links, and the routes tensors take between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping, NamedTuple

from tierplan.devices.catalog import load_catalog, suggest
from tierplan.devices.constants import DEFAULT_CLOUD_MAX_INSTANCES
from tierplan.errors import InputError, SpecError
from tierplan.spec import TIERS, DeviceSpec, FleetSpec, LinkSpec, SiteClassSpec

__all__ = ["SiteClass", "Fleet", "Hop", "LinkHop", "resolve_fleet"]

Direction = Literal["up", "down"]
Hop = tuple[LinkSpec, Direction]   # a link crossed, and which way ("up" = towards the cloud)


class LinkHop(NamedTuple):
    """One link crossed on a route, named by the classes it joins: `child` attaches to `parent` over
    `link`; `direction` "up" goes child -> parent. Capacity keys and emulated links are per child."""

    child: str
    parent: str
    link: LinkSpec
    direction: Direction


@dataclass(frozen=True)
class SiteClass:
    """A class of identical sites after resolution: N sites of one device type, attached up one link."""

    name: str
    tier: str
    device: DeviceSpec
    count: int
    attach: str | None
    link: LinkSpec | None
    max_instances: int
    max_utilization: float
    link_name: str | None = None
    region: str | None = None
    max_memory_gb: float | None = None


@dataclass(frozen=True)
class Fleet:
    """Resolved fleet: site classes by name and link classes by name (read-only mappings)."""

    name: str
    classes: Mapping[str, SiteClass]
    links: Mapping[str, LinkSpec] = field(default_factory=dict)

    def parents(self, name: str) -> list[str]:
        """The chain of classes above `name`, nearest first (edge -> base station -> cloud)."""
        self._check(name)
        out: list[str] = []
        cur = self.classes[name].attach
        while cur is not None:
            out.append(cur)
            cur = self.classes[cur].attach
        return out

    def children(self, name: str) -> list[str]:
        """Classes attached directly to `name`."""
        self._check(name)
        return [c.name for c in self.classes.values() if c.attach == name]

    def edge_classes(self) -> list[str]:
        """Names of the edge-tier classes, in fleet order."""
        return [c.name for c in self.classes.values() if c.tier == "edge"]

    def tier_classes(self, tier: str) -> list[str]:
        """Names of the classes of one tier, in fleet order."""
        return [c.name for c in self.classes.values() if c.tier == tier]

    def reachable(self, a: str, b: str) -> bool:
        """True when a tensor can travel from class a to class b (they share an ancestor, or are one)."""
        self._check(a)
        self._check(b)
        return bool({a, *self.parents(a)} & {b, *self.parents(b)})

    def route(self, a: str, b: str) -> list[Hop]:
        """Links a tensor crosses from class a to class b: up a's attach chain to the lowest common
        ancestor, then down to b. Same class: [] (the tensor stays on the device or site)."""
        return [(h.link, h.direction) for h in self.hops(a, b)]

    def hops(self, a: str, b: str) -> list[LinkHop]:
        """`route(a, b)` with each link named by the classes it joins (see LinkHop)."""
        chain_a = [a, *self.parents(a)]
        chain_b = [b, *self.parents(b)]
        common = next((x for x in chain_a if x in chain_b), None)
        if common is None:
            raise InputError(f"fleet {self.name!r}: no route from {a!r} to {b!r}: they share no site "
                             f"they attach to. To fix: attach both (or their parents) to one site class")
        up = chain_a[:chain_a.index(common) + 1]
        down = chain_b[:chain_b.index(common) + 1]
        return ([LinkHop(x, p, self._link(x), "up") for x, p in zip(up, up[1:])]
                + [LinkHop(y, p, self._link(y), "down") for y, p in reversed(list(zip(down, down[1:])))])

    def _link(self, name: str) -> LinkSpec:
        link = self.classes[name].link
        assert link is not None, f"site class {name!r} attaches without a link (FleetSpec refuses that)"
        return link

    def resolve_pin(self, origin: str, pin: str, what: str = "pin") -> str:
        """The site class that a pin (a class name or a tier) means for requests from edge class
        `origin`: a named class on origin's chain is itself; a tier is the nearest class of that
        tier on the chain (origin, then its parents). `what` names the YAML field in errors."""
        chain = [origin, *self.parents(origin)]
        if pin in chain:
            return pin
        if pin in TIERS:
            for s in chain:
                if self.classes[s].tier == pin:
                    return s
            raise InputError(f"{what}: pinned to tier {pin!r} but edge class {origin!r} reaches no {pin} "
                             f"site (its chain is {' -> '.join(chain)}). To fix: attach {origin} up to a {pin} class")
        raise InputError(f"{what}: pinned to {pin!r}, which edge class {origin!r} cannot reach "
                         f"(its chain is {' -> '.join(chain)}). To fix: pin it to a tier or a class on that chain")

    def to_spec(self) -> FleetSpec:
        """This fleet as a FleetSpec with every device inline: what plan.json embeds, so that the
        runtime and simulator rebuild exactly this fleet without the catalog or fleet.yaml."""
        sites = {c.name: SiteClassSpec(tier=c.tier, device=c.device, count=c.count, attach=c.attach,  # type: ignore[arg-type]
                                       link=c.link_name, max_instances=c.max_instances,
                                       max_utilization=c.max_utilization, max_memory_gb=c.max_memory_gb,
                                       region=c.region)
                 for c in self.classes.values()}
        return FleetSpec(name=self.name, sites=sites, links=dict(self.links))

    def _check(self, name: str) -> None:
        if name not in self.classes:
            raise InputError(f"fleet {self.name!r}: unknown site class {name!r}"
                             f"{suggest(name, list(self.classes))}")


def resolve_fleet(fleet_spec: FleetSpec, catalog: Mapping[str, DeviceSpec] | None = None,
                  path: str | None = None) -> Fleet:
    """Resolve device names against the catalog and links against `links`; never mutates the spec.

    Unknown devices raise SpecError naming `sites.<class>.device` (prefixed with `path` when given).
    `max_instances` defaults to DEFAULT_CLOUD_MAX_INSTANCES for rented cloud classes, else 1.
    """
    cat = load_catalog() if catalog is None else catalog
    prefix = f"{path}: " if path else ""
    problems: list[str] = []
    classes: dict[str, SiteClass] = {}
    for name, s in fleet_spec.sites.items():
        if isinstance(s.device, DeviceSpec):
            device = s.device
        elif s.device in cat:
            device = cat[s.device]
        else:
            problems.append(f"{prefix}sites.{name}.device: unknown device {s.device!r}"
                            f"{suggest(s.device, sorted(cat))}. To fix: pick one of `tierplan devices` "
                            f"or declare the device inline")
            continue
        link = fleet_spec.links.get(s.link) if s.link is not None else None
        if s.max_instances is not None:
            max_instances = s.max_instances
        elif s.tier == "cloud" and device.cost_per_hour_usd > 0:
            max_instances = DEFAULT_CLOUD_MAX_INSTANCES
        else:
            max_instances = 1
        classes[name] = SiteClass(name=name, tier=s.tier, device=device, count=s.count, attach=s.attach,
                                  link=link, max_instances=max_instances,
                                  max_utilization=s.max_utilization, link_name=s.link, region=s.region,
                                  max_memory_gb=s.max_memory_gb)
    if problems:
        raise SpecError(problems)
    return Fleet(name=fleet_spec.name, classes=MappingProxyType(classes),
                 links=MappingProxyType(dict(fleet_spec.links)))
