"""Shared fixtures for the examples' tests: paths, the examples' sample-input modules, ORT sessions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load_example_module(example: str, name: str = "inputs"):
    """Import examples/<example>/<name>.py under a unique module name (examples are not packages)."""
    path = EXAMPLES / example / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{example.replace('-', '_')}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def session(path: Path) -> ort.InferenceSession:
    """A quiet single-threaded onnxruntime session (the CPU is shared)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def read_text_app():
    from tierplan.loader import load_app
    return load_app(EXAMPLES / "read-text" / "app.yaml")


@pytest.fixture(scope="session")
def smart_city_app():
    from tierplan.loader import load_app
    return load_app(EXAMPLES / "smart-city" / "app.yaml")


@pytest.fixture(scope="session")
def ocr_sessions(read_text_app):
    """onnxruntime sessions of the read-text models, by model name, plus the recogniser's path."""
    app = read_text_app
    return {name: session(app.resolve_path(m.onnx)) for name, m in app.models.items()}


@pytest.fixture(scope="session")
def city_sessions(smart_city_app):
    app = smart_city_app
    return {name: session(app.resolve_path(m.onnx)) for name, m in app.models.items()}
