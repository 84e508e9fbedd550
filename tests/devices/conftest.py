"""Shared fixtures of the devices tests: real model files from installed wheels (squeezenet: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="session")
def light_dir() -> Path:
    return LIGHT
