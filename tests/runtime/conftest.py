"""Shared fixtures of the runtime tests: SqueezeNet cut in 3 real pieces, a 3-tier fleet, one Ray cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rt_helpers import CUTS


@pytest.fixture(scope="session")
def sq_model(squeezenet_random: Path) -> Path:
    """SqueezeNet 1.1 (onnx light graph) with random weights, so outputs depend on the input."""
    return squeezenet_random


@pytest.fixture(scope="session")
def sq_files(sq_model, tmp_path_factory) -> list[Path]:
    """SqueezeNet 1.1 (onnx light) cut into 3 standalone ONNX pieces."""
    from tierplan.runtime.handplan import split_chain
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
    from tierplan.runtime.cluster import LocalCluster
    cluster = LocalCluster(["bs", "cloud"])
    yield cluster
    cluster.shutdown()
