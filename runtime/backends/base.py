"""Shared pieces of every backend: tensor specs, the Runner base class, timing, random inputs, and the one
build signature (`BuildJob` -> a backend module's `build_piece`) with the numerical check against onnxruntime."""

from __future__ import annotations

import platform
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from tierplan.errors import InputError

__all__ = ["TensorSpec", "Runner", "median_ms", "random_inputs", "host_arch", "target_arch", "Reference", "BuildJob",
           "compare", "first_line"]


@dataclass(frozen=True)
class TensorSpec:
    """A piece input or output by its original tensor name; `shape` is concrete (ints >= 0)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        return cls(name=str(d["name"]), shape=tuple(int(x) for x in d.get("shape", ())),
                   dtype=str(d.get("dtype", "float32")))


class Runner:
    """A loaded artifact: `run({name: array}) -> {name: array}` by original tensor names.

    Subclasses implement `_run(list of arrays in input order) -> list of arrays in output order`.
    `run` checks names, casts dtypes, makes arrays contiguous, and serialises calls with a lock
    (the TVM VM and the LiteRT interpreter are not re-entrant); extra input names are ignored so a
    caller may pass every tensor it has.
    """

    backend: str = ""
    emulated: bool = False   # True when a host build stands in for an artifact made for another CPU

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], label: str = ""):
        self.inputs: tuple[TensorSpec, ...] = tuple(inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(outputs)
        self.label = label
        self._lock = threading.Lock()

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def _prepare(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = []
        for spec in self.inputs:
            if spec.name not in inputs:
                raise InputError(f"{self.label}: input tensor {spec.name!r} missing "
                                 f"(got {sorted(inputs)}). To fix: pass every input of the piece: {self.input_names}")
            arrays.append(np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype))
        return arrays

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the artifact once; returns outputs by original tensor name."""
        arrays = self._prepare(inputs)
        with self._lock:
            outs = self._run(arrays)
        return {spec.name: np.asarray(o) for spec, o in zip(self.outputs, outs)}

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} does not implement _run")

    def close(self) -> None:
        """Release native resources (sessions, VMs); the runner is unusable afterwards."""


def median_ms(fn: Callable[[], object], runs: int, budget_s: float, warmup: int = 1) -> tuple[float, int]:
    """Median wall time of `fn` in ms over up to `runs` timed calls, stopping early past `budget_s`.

    At least one timed call is always made. Returns (median_ms, number of timed calls).
    """
    for _ in range(warmup):
        fn()
    times_ms: list[float] = []
    start = time.perf_counter()
    while len(times_ms) < max(1, runs):
        t0 = time.perf_counter()
        fn()
        times_ms.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times_ms), len(times_ms)


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs of the declared shapes and dtypes.

    Floats are uniform in [0, 1) (image-like); integers are 0/1 so index-like inputs stay in range.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for s in specs:
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out[s.name] = rng.random(s.shape, dtype=np.float32).astype(dt)
        elif dt.kind == "b":
            out[s.name] = rng.integers(0, 2, s.shape).astype(bool)
        else:
            out[s.name] = rng.integers(0, 2, s.shape).astype(dt)
    return out


_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def host_arch() -> str:
    """This machine's architecture, normalised (x86_64, aarch64, ...)."""
    m = platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def target_arch(target: Mapping) -> str:
    """Architecture a TVM target dict compiles for: its mtriple's first field, else this machine's."""
    triple = str(target.get("mtriple", "") or "")
    if not triple:
        return host_arch()
    arch = triple.split("-")[0].lower()
    return _ARCH_ALIASES.get(arch, arch)


# ----------------------------------------------------------------------------- builds
class Reference(Protocol):
    """An ONNX piece's reference run (onnxruntime, no graph optimisation): the feeds every build is
    checked with and the outputs it must match."""

    @property
    def feeds(self) -> dict[str, np.ndarray]: ...

    @property
    def outputs(self) -> dict[str, np.ndarray]: ...

    def output_specs(self) -> list[TensorSpec]: ...


@dataclass(frozen=True)
class BuildJob:
    """Everything one backend's `build_piece` gets: the one signature every backend implements.

    The build writes its artifact into `tmp` (the store keeps the folder) and returns its meta:
    `ok`, `reason` when not, `file_name`, `verified`, `max_abs_diff`, `verify_note`, `options`,
    `build_s`, `latency_ms` (measured here) or `host_latency_ms` (a host stand-in's, for an artifact
    that cannot run here), `latency_source`."""

    tmp: Path
    src: Path                             # the piece file (.onnx or .tflite)
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]         # declared outputs (a .tflite piece's; ONNX ones come from the reference)
    reference: Reference | None           # ONNX pieces: what the build must match
    target: Mapping                       # the device's TVM target (TVM only)
    threads: int = 0
    seed: int = 0
    rtol: float = 1e-4
    atol: float = 1e-4
    measure_runs: int = 10
    measure_budget_s: float = 3.0
    tune: Any = None                      # runtime.backends.tvm_tune.TuneSettings (TVM only)
    progress: Callable[[str], None] = lambda s: None

    def timed(self, runner: "Runner", feeds: Mapping[str, np.ndarray]) -> tuple[float, int]:
        """Median ms of `runner.run(feeds)` and the number of runs (the job's runs and time budget)."""
        return median_ms(lambda: runner.run(feeds), self.measure_runs, self.measure_budget_s, warmup=0)


def compare(outs: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], rtol: float, atol: float
            ) -> tuple[bool, float, str]:
    """(all close, max |a - b|, note) over the reference's outputs; the absolute tolerance scales with each
    output's magnitude, as float32 rounding does: |a - b| <= atol max(1, max|b|) + rtol |b|."""
    worst = 0.0
    for name, r in ref.items():
        if name not in outs:
            return False, float("inf"), f"output {name!r} missing"
        a = np.asarray(outs[name])
        if a.shape != r.shape:
            return False, float("inf"), f"output {name!r} has shape {a.shape}, reference {r.shape}"
        if r.size == 0:
            continue
        if r.dtype.kind in "fc":
            diff = float(np.max(np.abs(a.astype(np.float64) - r.astype(np.float64))))
            finite = np.abs(r[np.isfinite(r)])
            scale = max(1.0, float(finite.max())) if finite.size else 1.0
            ok = bool(np.allclose(a, r, rtol=rtol, atol=atol * scale, equal_nan=True))
        else:
            diff = float(np.max(np.abs(a.astype(np.int64) - r.astype(np.int64))))
            ok = diff == 0
        worst = max(worst, diff)
        if not ok:
            return False, worst, (f"output {name!r} differs from onnxruntime by up to {diff:.3g} "
                                  f"(rtol {rtol}, atol {atol} x max(1, max|ref|))")
    return True, worst, ""


def first_line(e: BaseException) -> str:
    """One line of an exception for a manifest's reason (TVM's C++ tracebacks put the useful line last)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
    msg = lines[-1] if "Traceback" in str(e) else lines[0]
    return f"{type(e).__name__}: {msg}"[:300]
