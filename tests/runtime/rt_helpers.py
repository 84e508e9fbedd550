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


def packed_header(frames: list, codes: dict[str, int] | None = None, magic: bytes = b"TPD1", flags: int | None = None,
                  lengths: dict[int, int] | None = None) -> bytes:
    """A packed delivery's header (runtime.wire, `_PACKED_HEAD`) written independently of runtime.wire,
    from pb.Frame-like objects: the first gives the delivery's fields, each named one a tensor entry.
    Lets tests send what a well-behaved sender never writes: unknown dtype codes (`codes`, default
    runtime.wire's), another magic, any flags, text lengths that lie (`lengths`: index -> length)."""
    import struct

    from tierplan.runtime.wire import WIRE_DTYPES
    codes = codes if codes is not None else {n: i + 1 for i, n in enumerate(sorted(WIRE_DTYPES))}
    f0 = frames[0]
    texts = [str(getattr(f0, k)).encode("utf-8", "surrogatepass") for k in
             ("request_id", "src", "dst", "branch", "error", "trace")]
    lens = [(lengths or {}).get(i, len(t)) % 2 ** (16 if i < 4 else 32) for i, t in enumerate(texts)]
    named = [f for f in frames if getattr(f, "name", "")]
    out = [struct.pack("<4sddBHHHHHII", magic, f0.deadline_unix_ms, f0.sent_unix_ms,
                       (1 if f0.empty else 0) if flags is None else flags % 256, len(named) % 65536, *lens), *texts]
    for f in named:
        name = f.name.encode("utf-8", "surrogatepass")
        shape = [int(d) for d in f.shape][:255]
        out += [struct.pack("<HBB", len(name) % 65536, codes.get(f.dtype, 0) % 256, len(shape)),
                struct.pack(f"<{len(shape)}q", *[max(min(d, 2**63 - 1), -2**63) for d in shape]), name]
    return b"".join(out)
