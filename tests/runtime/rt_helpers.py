"""Helpers of the runtime tests (a unique module name: other test folders have their own conftest)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from tierplan.spec import FleetSpec

__all__ = ["SQUEEZENET", "CUTS", "three_tier_fleet", "descendants", "processes_with_env"]

SQUEEZENET = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
CUTS = ["r9", "r39"]          # intermediate tensors of 1.55 MB and 260 KB (DESIGN.md peer table)


def three_tier_fleet(uplink_mbps: float = 800.0, rtt_ms: float = 2.0) -> FleetSpec:
    """phone -> bs -> cloud with fast links (tests) unless told otherwise."""
    return FleetSpec.model_validate({
        "sites": {"phone": {"tier": "edge", "device": "pixel-8", "attach": "bs", "link": "radio"},
                  "bs": {"tier": "base_station", "device": "mec-t4", "attach": "cloud", "link": "backhaul"},
                  "cloud": {"tier": "cloud", "device": "aws-g5-xlarge"}},
        "links": {"radio": {"uplink_mbps": uplink_mbps, "downlink_mbps": uplink_mbps, "rtt_ms": rtt_ms},
                  "backhaul": {"uplink_mbps": 2000, "downlink_mbps": 2000, "rtt_ms": rtt_ms}}})


def descendants(pid: int) -> list[int]:
    """Live processes below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def processes_with_env(marker: str) -> list[int]:
    """Processes whose environment holds TIERPLAN_TEST_MARK=<marker> (they outlived their parent if any)."""
    out = []
    needle = f"TIERPLAN_TEST_MARK={marker}".encode()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if needle in (d / "environ").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out
