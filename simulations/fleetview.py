"""The simulator's read-only view of a fleet: site classes, attach chains, routes and instances.

Accepts a resolved `devices.fleet.Fleet` (the contract in docs/ARCHITECTURE.md), anything shaped
like it (`.classes[name]` with tier, device, count, attach, link, max_instances, max_utilization),
or a `tierplan.spec.FleetSpec` (resolved through `devices.fleet.resolve_fleet` when it exists, else
through the catalog YAMLs directly). Nothing here simulates; it only answers "which instance of
site class X serves device d" and "which links does a tensor cross from class a to class b".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tierplan.errors import InputError
from tierplan.spec import DeviceSpec, FleetSpec, LinkSpec

__all__ = ["SiteView", "FleetView", "Hop", "fleet_view"]


@dataclass(frozen=True)
class SiteView:
    """One site class as the simulator needs it."""

    name: str
    tier: str
    count: int
    attach: str | None
    link: LinkSpec | None
    link_name: str | None
    max_instances: int | None
    max_utilization: float
    cost_per_hour_usd: float
    device_name: str
    device: Any = None  # the DeviceSpec (for the cost model when a plan lacks a figure)


@dataclass(frozen=True)
class Hop:
    """One link crossed by a tensor: the link of `site` (towards its attach parent), in `direction`."""

    site: str
    direction: str  # "up" | "down"


class FleetView:
    """Site classes by name plus the attach-chain helpers (routes, ancestors)."""

    def __init__(self, classes: dict[str, SiteView], name: str = "fleet"):
        self.classes = dict(classes)
        self.name = name
        for c in self.classes.values():
            if c.attach is not None and c.attach not in self.classes:
                raise InputError(f"fleet: site class {c.name!r} attaches to unknown class {c.attach!r}")

    def chain(self, name: str) -> list[str]:
        """`name` and every class above it, lowest first."""
        out = [name]
        while self.classes[out[-1]].attach is not None:
            out.append(self.classes[out[-1]].attach)
        return out

    def edge_classes(self) -> list[str]:
        """Edge-tier classes in declaration order."""
        return [n for n, c in self.classes.items() if c.tier == "edge"]

    def route(self, a: str, b: str) -> list[Hop]:
        """Links a tensor crosses from class a to class b: up a's chain to the common ancestor, then down."""
        if a == b:
            return []
        ca, cb = self.chain(a), self.chain(b)
        common = next((x for x in ca if x in cb), None)
        if common is None:
            raise InputError(f"fleet: no route between site classes {a!r} and {b!r} (no common attach "
                             f"ancestor). To fix: attach both to one base station or cloud class")
        up = [Hop(x, "up") for x in ca[: ca.index(common)]]
        down = [Hop(x, "down") for x in reversed(cb[: cb.index(common)])]
        return up + down


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return getattr(obj, name, default) if not isinstance(obj, dict) else obj.get(name, default)


def _catalog_device(name: str) -> DeviceSpec:
    """Read devices/catalog/<name>.yaml (used only when devices.fleet is not importable)."""
    path = Path(__file__).resolve().parent.parent / "devices" / "catalog" / f"{name}.yaml"
    if not path.exists():
        raise InputError(f"fleet: device {name!r} not found in devices/catalog/. To fix: use a catalog "
                         f"name (`tierplan devices`) or an inline device")
    data = yaml.safe_load(path.read_text())
    return DeviceSpec.model_validate(data if "name" in data else {"name": name, **data})


def _from_spec(spec: FleetSpec) -> dict[str, SiteView]:
    try:
        from tierplan.devices.fleet import resolve_fleet  # type: ignore[import-not-found]
    except ImportError:
        resolve_fleet = None
    if resolve_fleet is not None:
        return _from_resolved(resolve_fleet(spec))
    out = {}
    for n, s in spec.sites.items():
        dev = s.device if isinstance(s.device, DeviceSpec) else _catalog_device(s.device)
        link = spec.links[s.link] if s.link else None
        out[n] = SiteView(n, s.tier, s.count, s.attach, link, s.link, s.max_instances,
                          s.max_utilization, dev.cost_per_hour_usd, dev.name, dev)
    return out


def _from_resolved(fleet: Any) -> dict[str, SiteView]:
    out = {}
    for n, c in _get(fleet, "classes").items():
        dev = _get(c, "device")
        link = _get(c, "link")
        if isinstance(link, dict):
            link = LinkSpec.model_validate(link)
        out[n] = SiteView(
            name=n, tier=_get(c, "tier"), count=int(_get(c, "count", 1)), attach=_get(c, "attach"),
            link=link, link_name=_get(c, "link_name"), max_instances=_get(c, "max_instances"),
            max_utilization=float(_get(c, "max_utilization", 0.8) or 0.8),
            cost_per_hour_usd=float(_get(dev, "cost_per_hour_usd", 0.0) or 0.0),
            device_name=str(_get(dev, "name", n)), device=dev)
    return out


def fleet_view(fleet: Any) -> FleetView:
    """A FleetView of a resolved Fleet, a FleetSpec, or a FleetView (returned as is)."""
    if isinstance(fleet, FleetView):
        return fleet
    if isinstance(fleet, FleetSpec):
        return FleetView(_from_spec(fleet), fleet.name)
    if _get(fleet, "classes") is None:
        raise InputError(f"simulate: expected a Fleet or FleetSpec, got {type(fleet).__name__}")
    return FleetView(_from_resolved(fleet), str(_get(fleet, "name", "fleet")))
