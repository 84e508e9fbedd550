"""Shared fixtures of the partition tests: paths of real ONNX models shipped in installed wheels."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import onnx
import pytest


def _pkg_dir(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    assert spec is not None and spec.submodule_search_locations, f"{pkg} is not installed"
    return Path(list(spec.submodule_search_locations)[0])


LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="session")
def light() -> Path:
    """Folder of the onnx package's light classifier graphs."""
    return LIGHT


@pytest.fixture(scope="session")
def ocr_models() -> Path:
    """Folder of the PP-OCR ONNX models from rapidocr_onnxruntime."""
    return _pkg_dir("rapidocr_onnxruntime") / "models"


@pytest.fixture(scope="session")
def vad_models() -> Path:
    """Folder of the Silero VAD ONNX models (found without importing silero_vad, which imports torch)."""
    return _pkg_dir("silero_vad") / "data"


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    """The partition.zoo architectures written once per session."""
    from tierplan.partition import zoo
    d = tmp_path_factory.mktemp("zoo")
    zoo.save(zoo.mobilenet_v2(), d / "mobilenet_v2.onnx")
    zoo.save(zoo.transformer_encoder(), d / "transformer_encoder.onnx")
    zoo.save(zoo.tiny_detector(), d / "tiny_detector.onnx")
    return d
