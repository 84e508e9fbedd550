"""Fixtures for the compile tests: real models (random-weight SqueezeNet split in two, PP-OCR, BlazeFace)."""

from __future__ import annotations

from pathlib import Path

import pytest
from compile_fixtures import SPLIT_TENSOR
from onnx.utils import extract_model


@pytest.fixture(scope="session")
def squeezenet_pieces(squeezenet_random: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(whole model, piece 0 = input -> fire2, piece 1 = fire2 -> softmax), random weights."""
    d = tmp_path_factory.mktemp("squeezenet_pieces")
    whole = squeezenet_random
    p0, p1 = d / "p0.onnx", d / "p1.onnx"
    extract_model(str(whole), str(p0), ["data_0"], [SPLIT_TENSOR])
    extract_model(str(whole), str(p1), [SPLIT_TENSOR], ["softmaxout_1"])
    return whole, p0, p1
