"""Helpers for the examples' tests: paths, importing an example's sample-input module, ORT sessions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnxruntime as ort

__all__ = ["ROOT", "EXAMPLES", "load_example_module", "session"]

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
