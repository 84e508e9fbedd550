"""onnxruntime backend: the piece's ONNX file run by an InferenceSession with recorded options."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

import shutil
import time

from tierplan.runtime.backends.base import BuildJob, Runner, TensorSpec, compare

__all__ = ["NAME", "FILE_KINDS", "RANK", "OPT_LEVELS", "DEFAULT_OPTIONS", "OrtRunner", "session_options", "version",
           "build_piece", "load"]

NAME = "onnxruntime"
FILE_KINDS = ("onnx",)      # piece files it runs
RANK = 1                    # order among the backends (listing, messages)
DIST = "onnxruntime"        # the distribution whose version keys the artifact store

#: graph optimisation levels by the name recorded in the manifest
OPT_LEVELS = ("disable", "basic", "extended", "all")

#: options used when a compile call gives none; threads = 0 lets onnxruntime use every core
DEFAULT_OPTIONS: dict = {"intra_op_num_threads": 0, "graph_optimization_level": "all"}


def version() -> str:
    """The installed onnxruntime's version, from package metadata."""
    import importlib.metadata as md
    try:
        return md.version(DIST)
    except md.PackageNotFoundError:
        return "absent"


def session_options(options: Mapping | None = None):
    """onnxruntime.SessionOptions from a manifest `options` dict (threads, optimisation level)."""
    import onnxruntime as ort
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(opts["intra_op_num_threads"])
    so.inter_op_num_threads = 1
    level = str(opts["graph_optimization_level"])
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level if level in OPT_LEVELS else "all"]
    so.log_severity_level = 3
    return so


class OrtRunner(Runner):
    """Runs an ONNX piece with onnxruntime's CPU provider (session.run is thread-safe; no lock needed)."""

    backend = "onnxruntime"
    thread_safe = True     # a stage worker may run several requests through it at once

    def __init__(self, path: str | Path, inputs: Sequence[TensorSpec] = (), outputs: Sequence[TensorSpec] = (),
                 options: Mapping | None = None, label: str = ""):
        import onnxruntime as ort
        self.path = str(path)
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.session = ort.InferenceSession(self.path, sess_options=session_options(self.options),
                                            providers=["CPUExecutionProvider"])
        if not inputs:
            inputs = [TensorSpec(i.name, tuple(d if isinstance(d, int) else 0 for d in i.shape), _ort_dtype(i.type))
                      for i in self.session.get_inputs()]
        if not outputs:
            outputs = [TensorSpec(o.name, tuple(d if isinstance(d, int) else 0 for d in o.shape), _ort_dtype(o.type))
                       for o in self.session.get_outputs()]
        super().__init__(inputs, outputs, label or self.path)
        self._out_names = [o.name for o in self.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._prepare(inputs)
        outs = self.session.run(self._out_names, {s.name: a for s, a in zip(self.inputs, arrays)})
        return dict(zip(self._out_names, outs))

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._out_names, {s.name: a for s, a in zip(self.inputs, arrays)})

    def close(self) -> None:
        self.session = None


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _ort_dtype(t: str) -> str:
    return _ORT_TYPES.get(t, "float32")


def build_piece(job: BuildJob) -> dict:
    """The piece's ONNX file as it is, with onnxruntime's full graph optimisation: checked against the
    reference and timed here."""
    assert job.reference is not None, "an ONNX piece has a reference"
    dst = job.tmp / "piece.onnx"
    shutil.copyfile(job.src, dst)
    options = {"intra_op_num_threads": job.threads, "graph_optimization_level": "all"}
    t0 = time.perf_counter()
    runner = OrtRunner(dst, job.inputs, job.reference.output_specs(), options=options)
    build_s = time.perf_counter() - t0
    outs = runner.run(job.reference.feeds)
    ok, diff, note = compare(outs, job.reference.outputs, job.rtol, job.atol)
    meta = {"ok": ok, "file_name": dst.name, "verified": ok, "max_abs_diff": diff, "options": options,
            "build_s": build_s, "reason": note or None, "latency_source": "measured"}
    if ok:
        meta["latency_ms"], meta["runs"] = job.timed(runner, job.reference.feeds)
    runner.close()
    return meta


def load(path: str | Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], options: Mapping,
         label: str) -> Runner:
    """The runner of a built artifact (runtime.backends.load_artifact)."""
    return OrtRunner(path, inputs, outputs, options=options, label=label)
