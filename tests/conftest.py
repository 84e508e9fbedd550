"""Fixtures shared by every test folder: the real SqueezeNet 1.1 graph that the onnx wheel ships."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="session")
def squeezenet() -> Path:
    """onnx's light_squeezenet.onnx as shipped (its weights are constant fills: output ignores input)."""
    return LIGHT / "light_squeezenet.onnx"


@pytest.fixture(scope="session")
def squeezenet_random(squeezenet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SqueezeNet 1.1 with He-initialised random weights (seed 0), so outputs depend on the input;
    written once per session."""
    from tierplan.runtime.handplan import with_random_weights
    return with_random_weights(squeezenet, tmp_path_factory.mktemp("squeezenet") / "squeezenet.onnx")
