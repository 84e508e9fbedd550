"""Helpers of the adaptation tests (a unique module name: other test folders have their own)."""

from __future__ import annotations

from tierplan.spec import FleetSpec

__all__ = ["CUTS", "phone_gw_fleet"]

CUTS = ["r9", "r39"]          # SqueezeNet's intermediate tensors of 1.55 MB and 260 KB


def phone_gw_fleet(uplink_mbps: float = 200.0, rtt_ms: float = 4.0) -> FleetSpec:
    """A phone attached to a gateway (base station) over one radio link."""
    return FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "pixel-8", "attach": "gw", "link": "radio"},
                  "gw": {"tier": "base_station", "device": "mec-t4"}},
        "links": {"radio": {"uplink_mbps": uplink_mbps, "downlink_mbps": uplink_mbps, "rtt_ms": rtt_ms}}})
