"""Shared fixtures of the runtime tests: SqueezeNet cut in 3 real pieces, a 3-tier fleet, one Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from tierplan.spec import FleetSpec

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


@pytest.fixture(scope="session")
def sq_model(tmp_path_factory) -> Path:
    """SqueezeNet 1.1 (onnx light graph) with random weights, so outputs depend on the input."""
    from runtime.handplan import with_random_weights
    return with_random_weights(SQUEEZENET, tmp_path_factory.mktemp("sqw") / "squeezenet.onnx")


@pytest.fixture(scope="session")
def sq_files(sq_model, tmp_path_factory) -> list[Path]:
    """SqueezeNet 1.1 (onnx light) cut into 3 standalone ONNX pieces."""
    from runtime.handplan import split_chain
    return split_chain(sq_model, CUTS, tmp_path_factory.mktemp("sq"), "sq")


@pytest.fixture(scope="session")
def sq_input() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)}


@pytest.fixture(scope="session")
def sq_reference(sq_model, sq_input) -> np.ndarray:
    """The whole model's output on sq_input (onnxruntime, one process)."""
    import onnxruntime as ort
    s = ort.InferenceSession(str(sq_model), providers=["CPUExecutionProvider"])
    return s.run(None, {"data_0": sq_input["input"]})[0]


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole session: a head plus nodes for sites bs and cloud."""
    from runtime.cluster import LocalCluster
    cluster = LocalCluster(["bs", "cloud"])
    yield cluster
    cluster.shutdown()


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
