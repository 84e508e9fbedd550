"""LiteRT backend: .tflite pieces run by ai-edge-litert's Interpreter (or tflite_runtime when installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tierplan.runtime.backends.base import Runner, TensorSpec

__all__ = ["LiteRtRunner", "interpreter_class", "tflite_io", "version"]


def interpreter_class():
    """The Interpreter class: ai_edge_litert's, else tflite_runtime's; ImportError when neither exists."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
    return Interpreter


def version() -> str:
    import importlib.metadata as md
    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "unknown"


def _specs(details: list[dict]) -> list[TensorSpec]:
    return [TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name) for d in details]


def tflite_io(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of a .tflite file by the names stored in it."""
    it = interpreter_class()(model_path=str(path))
    it.allocate_tensors()
    return _specs(it.get_input_details()), _specs(it.get_output_details())


class LiteRtRunner(Runner):
    """Runs a .tflite file; tensors are addressed by their names in the flatbuffer."""

    backend = "litert"

    def __init__(self, path: str | Path, inputs: Sequence[TensorSpec] = (), outputs: Sequence[TensorSpec] = (),
                 num_threads: int | None = None, label: str = ""):
        self.path = str(path)
        kwargs = {"num_threads": int(num_threads)} if num_threads else {}
        self._it = interpreter_class()(model_path=self.path, **kwargs)
        self._it.allocate_tensors()
        in_det = {d["name"]: d for d in self._it.get_input_details()}
        out_det = {d["name"]: d for d in self._it.get_output_details()}
        inputs = list(inputs) or _specs(list(in_det.values()))
        outputs = list(outputs) or _specs(list(out_det.values()))
        super().__init__(inputs, outputs, label or self.path)
        self._in_idx = [in_det[s.name]["index"] for s in self.inputs]
        self._out_idx = [out_det[s.name]["index"] for s in self.outputs]

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        for idx, a in zip(self._in_idx, arrays):
            self._it.set_tensor(idx, a)
        self._it.invoke()
        return [self._it.get_tensor(idx).copy() for idx in self._out_idx]

    def close(self) -> None:
        self._it = None
