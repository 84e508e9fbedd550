"""LiteRT backend: .tflite pieces run by ai-edge-litert's Interpreter (or tflite_runtime when installed)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tierplan.runtime.backends.base import BuildJob, Runner, TensorSpec, first_line, random_inputs

NAME = "litert"
FILE_KINDS = ("tflite",)    # piece files it runs
RANK = 2                    # order among the backends (listing, messages)
LITERT_NOTE = "no ONNX reference for a .tflite piece; ran on random inputs, outputs finite and of declared shapes"
#: what an ONNX piece needs to run on LiteRT (compile says so when it is a candidate or asked for)
ONNX_NOTE = ("LiteRT runs .tflite files and this piece is ONNX: converting it needs onnx2tf and TensorFlow "
             "(pip install onnx2tf tensorflow; not tierplan dependencies), or give the model as `tflite:` in app.yaml")

__all__ = ["NAME", "FILE_KINDS", "RANK", "LiteRtRunner", "interpreter_class", "tflite_io", "version", "build_piece",
           "load", "ONNX_NOTE", "LITERT_NOTE"]


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


def build_piece(job: BuildJob) -> dict:
    """The .tflite file as it is: run on random inputs of the declared shapes (outputs finite and of the
    declared shapes; no ONNX reference to compare with) and timed here."""
    dst = job.tmp / "piece.tflite"
    shutil.copyfile(job.src, dst)
    options = {"num_threads": job.threads or None}
    feeds = random_inputs(job.inputs, job.seed)
    try:
        runner = LiteRtRunner(dst, job.inputs, job.outputs, num_threads=options["num_threads"])
        outs = runner.run(feeds)
    except Exception as e:  # LiteRT raises RuntimeError/ValueError for models it cannot prepare
        return {"ok": False, "reason": f"LiteRT could not run the piece ({first_line(e)})"}
    bad = [n for s in job.outputs for n in [s.name]
           if tuple(outs[n].shape) != tuple(s.shape) or (outs[n].dtype.kind == "f" and not np.isfinite(outs[n]).all())]
    meta = {"ok": not bad, "file_name": dst.name, "verified": False, "max_abs_diff": None, "options": options,
            "build_s": 0.0, "verify_note": LITERT_NOTE, "latency_source": "measured",
            "reason": f"outputs not finite or of the wrong shape: {bad}" if bad else None}
    if not bad:
        meta["latency_ms"], meta["runs"] = job.timed(runner, feeds)
    runner.close()
    return meta


def load(path: str | Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], options: Mapping,
         label: str) -> Runner:
    """The runner of a built artifact (runtime.backends.load_artifact)."""
    return LiteRtRunner(path, inputs, outputs, num_threads=options.get("num_threads"), label=label)
