"""Fleet resolution: devices from the catalog, routes up and down the attach chain, clear errors."""

from __future__ import annotations

import pytest

from tierplan.devices.fleet import resolve_fleet
from tierplan.errors import InputError, SpecError
from tierplan.spec import FleetSpec

FLEET = {
    "sites": {
        "phone": {"tier": "edge", "device": "pixel-8", "count": 5000, "attach": "bs", "link": "lte"},
        "cam": {"tier": "edge", "device": "rpi4", "count": 200, "attach": "bs", "link": "wifi"},
        "bs": {"tier": "base_station", "device": "mec-t4", "count": 100, "attach": "cloud", "link": "backhaul"},
        "cloud": {"tier": "cloud", "device": "aws-g5-xlarge"},
    },
    "links": {
        "lte": {"uplink_mbps": 10, "downlink_mbps": 50, "rtt_ms": 40},
        "wifi": {"uplink_mbps": 100, "downlink_mbps": 100, "rtt_ms": 5},
        "backhaul": {"uplink_mbps": 1000, "downlink_mbps": 1000, "rtt_ms": 10, "egress_usd_per_gb": 0.09},
    },
}


@pytest.fixture()
def fleet():
    return resolve_fleet(FleetSpec.model_validate(FLEET))


def test_classes_get_their_catalog_device(fleet):
    """Each site class resolves to the catalog DeviceSpec it names, with count and link."""
    assert fleet.classes["phone"].device.name == "pixel-8"
    assert fleet.classes["phone"].count == 5000
    assert fleet.classes["phone"].link.rtt_ms == 40
    assert fleet.classes["cloud"].link is None


def test_parents_and_edge_classes(fleet):
    """parents() walks the attach chain nearest first; edge_classes() lists edge tiers in order."""
    assert fleet.parents("phone") == ["bs", "cloud"]
    assert fleet.parents("cloud") == []
    assert fleet.edge_classes() == ["phone", "cam"]


def test_route_goes_up_then_down(fleet):
    """phone -> cloud crosses lte and backhaul up; cloud -> phone the same links down, reversed."""
    up = fleet.route("phone", "cloud")
    assert [(l.rtt_ms, d) for l, d in up] == [(40, "up"), (10, "up")]
    down = fleet.route("cloud", "phone")
    assert [(l.rtt_ms, d) for l, d in down] == [(10, "down"), (40, "down")]
    across = fleet.route("phone", "cam")
    assert [(l.rtt_ms, d) for l, d in across] == [(40, "up"), (5, "down")]
    assert fleet.route("bs", "bs") == []


def test_default_max_instances(fleet):
    """Rented cloud classes may scale out by default; owned sites default to one instance."""
    assert fleet.classes["cloud"].max_instances > 1
    assert fleet.classes["bs"].max_instances == 1


def test_unknown_device_names_the_yaml_path_and_suggests():
    """An unknown device raises SpecError naming sites.<class>.device with a did-you-mean."""
    bad = {**FLEET, "sites": {**FLEET["sites"], "phone": {**FLEET["sites"]["phone"], "device": "pixel8"}}}
    with pytest.raises(SpecError, match=r"sites\.phone\.device: unknown device 'pixel8' \(did you mean 'pixel-8'\?\)"):
        resolve_fleet(FleetSpec.model_validate(bad))


def test_inline_device_is_used_as_declared():
    """A device declared inline in the fleet needs no catalog entry."""
    spec = FleetSpec.model_validate({"sites": {"box": {"tier": "edge", "device": {
        "name": "my-box", "tier": "edge", "peak_gflops": {"fp32": 10}, "memory_gb": 1,
        "memory_bandwidth_gbps": 5, "power_idle_w": 1, "power_active_w": 2}}}})
    assert resolve_fleet(spec).classes["box"].device.name == "my-box"


def test_disconnected_classes_have_no_route():
    """Two roots without a common parent: route raises InputError, reachable says False."""
    spec = FleetSpec.model_validate({"sites": {"a": {"tier": "cloud", "device": "aws-g5-xlarge"},
                                               "b": {"tier": "cloud", "device": "gcp-a2-highgpu-1g"}}})
    f = resolve_fleet(spec)
    assert not f.reachable("a", "b")
    with pytest.raises(InputError, match="no route"):
        f.route("a", "b")


def test_spec_is_not_mutated():
    """Resolution leaves the FleetSpec untouched (device stays a name)."""
    spec = FleetSpec.model_validate(FLEET)
    before = spec.model_dump()
    resolve_fleet(spec)
    assert spec.model_dump() == before
