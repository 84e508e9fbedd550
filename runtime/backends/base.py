"""Shared pieces of every backend: tensor specs, the Runner base class, timing and random inputs."""

from __future__ import annotations

import platform
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from tierplan.errors import InputError

__all__ = ["TensorSpec", "Runner", "median_ms", "random_inputs", "host_arch", "target_arch"]


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
