"""Runners for pieces: the compile engineer's artifacts when available, else onnxruntime on the piece file.

A Runner has `run(dict[str, np.ndarray]) -> dict[str, np.ndarray]`, `input_names` and
`batchable` (True when the first dimension of every input is free, so requests can be
concatenated into one batch); `thread_safe` (True when several threads may call `run` at once:
a stage worker then runs requests side by side, else one at a time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from tierplan.errors import InputError

__all__ = ["Runner", "OrtRunner", "load_runner"]


class Runner(Protocol):
    input_names: list[str]
    batchable: bool
    thread_safe: bool

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtRunner:
    """One piece run with onnxruntime on the CPU (InferenceSession.run is thread-safe)."""

    thread_safe = True

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        # no busy-waiting: several site workers share the CPU cores, spinning threads starve them
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads > 0:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"{path}: onnxruntime cannot load the piece ({str(e).splitlines()[0]})") from e
        ins = self._sess.get_inputs()
        self.input_names = [i.name for i in ins]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self.batchable = bool(ins) and all(i.shape and not isinstance(i.shape[0], int) for i in ins)
        self._fast = _c_binding()

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self.output_names, {k: inputs[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))

    def run_into(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """`run`, each output written into the given C-contiguous array of its dtype and shape (no
        copy of the results: runtime.stage places them in shared memory); onnxruntime raises when
        a shape differs."""
        fast = self._fast
        if fast is not None:   # onnxruntime's C binding itself: its Python wrapper costs ~20 us per run here
            binding, device = fast
            io = binding(self._sess._sess)
            for k in self.input_names:
                io.bind_input(k, inputs[k])
            for k, a in outputs.items():
                io.bind_output(k, device, a.dtype, list(a.shape), a.ctypes.data)
            self._sess._sess.run_with_iobinding(io, None)
            return
        iob = self._sess.io_binding()
        for k in self.input_names:
            iob.bind_cpu_input(k, inputs[k])
        for k, a in outputs.items():
            iob.bind_output(k, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)
        self._sess.run_with_iobinding(iob)


def _c_binding() -> tuple | None:
    """(onnxruntime's C SessionIOBinding class, its CPU device) for `OrtRunner.run_into`; None when this
    onnxruntime lays them out otherwise (the public IOBinding is used then)."""
    try:
        from onnxruntime.capi import _pybind_state as C
        from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice
        return C.SessionIOBinding, OrtDevice.make("cpu", 0)._get_c_device()
    except (ImportError, AttributeError, TypeError):
        return None


class _Adapter:
    """Gives a compile-engineer Runner the attributes the stage worker reads."""

    def __init__(self, inner, input_names: list[str]) -> None:
        self._inner = inner
        self.input_names = list(getattr(inner, "input_names", None) or input_names)
        self.batchable = bool(getattr(inner, "batchable", False))
        self.thread_safe = bool(getattr(inner, "thread_safe", False))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self._inner.run(inputs))


def load_runner(entry: dict, input_names: list[str], threads: int = 0) -> Runner:
    """A runner for one manifest entry ({"piece", "backend", "file", ...}).

    ONNX files (and entries without a backend) run on onnxruntime here; other backends go
    through `runtime.backends.load_artifact` (TVM, LiteRT) when that package is present.
    """
    file = entry.get("file")
    backend = entry.get("backend", "onnxruntime")
    if backend in ("onnxruntime", "ort", None) and file and str(file).endswith(".onnx"):
        return OrtRunner(file, threads=threads)
    try:
        from tierplan.runtime.backends import load_artifact
    except ImportError as e:
        raise InputError(f"piece {entry.get('piece')}: backend {backend!r} needs runtime.backends ({e})") from e
    return _Adapter(load_artifact(entry), input_names)
