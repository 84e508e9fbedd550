"""Backends that run compiled pieces, and the one call the runtime uses to load them.

API for runtime/ execution (stable; add, never rename)
------------------------------------------------------
    from tierplan.runtime.backends import load_artifact
    runner = load_artifact(entry, root=out_dir)     # entry: one item of manifest["artifacts"]
    outputs = runner.run({"x": array, ...})         # dict[str, np.ndarray] -> dict[str, np.ndarray]
    runner.input_names, runner.output_names         # original tensor names, in order
    runner.backend                                  # "tvm" | "onnxruntime" | "litert"
    runner.close()

- Tensors are addressed by the piece's original tensor names (ONNX names; for .tflite pieces
  the names stored in the flatbuffer). Extra input names are ignored, so a caller may pass every
  tensor it holds; a missing one raises `tierplan.errors.InputError` naming it. Inputs are cast
  to the declared dtype and made contiguous.
- `run` is safe to call from several threads (TVM and LiteRT runners serialise calls with a
  lock; an onnxruntime session is itself thread-safe). Build one runner per worker thread when
  you want parallel TVM execution.
- Manifest entry fields used: `backend`, `file` (absolute path at compile time), `rel_file`
  (the same file relative to the store, i.e. the manifest's folder: pass `root` when the store
  was moved), `inputs`/`outputs` (`[{name, shape, dtype}]`), `options` (backend options, e.g.
  onnxruntime threads), `target`.
- A TVM artifact built for another CPU (a .tar for aarch64, or a .so for another x86 `mcpu`)
  cannot run here. Its entry also carries `host_file`: the same Relax module built for this
  machine and checked against onnxruntime at compile time. `load_artifact` runs that one (the
  runner's `emulated` is True) so a local deployment can stand in for the device; with
  `emulate=False` it raises `InputError` instead.
- `runtime.compile.load_manifest(out_dir)` reads manifest.json; `runtime.compile.compile_plan`
  writes it.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Mapping

from tierplan.runtime.backends.base import Runner, TensorSpec, host_arch, target_arch
from tierplan.errors import InputError

__all__ = ["BACKENDS", "Runner", "TensorSpec", "load_artifact", "artifact_path", "backend_module", "applicable"]


def _discover() -> dict[str, ModuleType]:
    """Every `*_backend` module of this package by its NAME, in RANK order: a backend is one file
    (NAME, FILE_KINDS, RANK, DIST, version(), build_piece(BuildJob) -> meta, load(...) -> Runner)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.endswith("_backend"):
            found.append(importlib.import_module(f"{__name__}.{info.name}"))
    return {m.NAME: m for m in sorted(found, key=lambda m: m.RANK)}


_MODULES = _discover()
#: every backend name a manifest entry may carry
BACKENDS: tuple[str, ...] = tuple(_MODULES)


def backend_module(name: str) -> ModuleType:
    """The module of backend `name` (InputError naming the choices for another name)."""
    if name not in _MODULES:
        raise InputError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return _MODULES[name]


def applicable(kind: str) -> tuple[str, ...]:
    """The backends that run a piece file of `kind` ("onnx", "tflite"), in RANK order."""
    return tuple(n for n, m in _MODULES.items() if kind in m.FILE_KINDS)


def artifact_path(entry: Mapping, root: str | Path | None = None) -> Path:
    """Where the entry's file is: `root/rel_file` when root is given, else `file`."""
    file = entry.get("file")
    if not file:
        raise InputError(f"artifact for piece {entry.get('piece')!r} on {entry.get('site')!r} has no file "
                         f"(it was rejected at compile time: {entry.get('fallback_reason') or 'no reason recorded'})")
    if root is not None and entry.get("rel_file"):
        return Path(root) / str(entry["rel_file"])
    return Path(file)


def _runs_here(target: Mapping) -> bool:
    """Whether a TVM build for `target` can run on this machine (same architecture and CPU)."""
    from tierplan.runtime.backends.tvm_backend import is_native
    return is_native(target)


def load_artifact(entry: Mapping, root: str | Path | None = None, emulate: bool = True) -> Runner:
    """Load one manifest entry as a Runner: `run({name: array}) -> {name: array}`."""
    backend = entry.get("backend")
    path = artifact_path(entry, root)
    emulated = False
    if backend == "tvm" and not _runs_here(entry.get("target") or {"kind": "llvm"}):
        host = entry.get("host_file")
        if not emulate or not host:
            arch = target_arch(entry.get("target") or {})
            raise InputError(f"{path}: {entry.get('piece')}@{entry.get('site')} is cross-compiled for "
                             f"{arch} {(entry.get('target') or {}).get('mcpu', '')}".rstrip() +
                             f"; this machine is {host_arch()}. To fix: load it on the device it was built for")
        path = Path(root) / str(entry["host_rel_file"]) if root is not None and entry.get("host_rel_file") \
            else Path(host)
        emulated = True
    label = f"{entry.get('piece', path.name)}@{entry.get('site', '?')} ({backend})"
    if not path.exists():
        raise InputError(f"{path}: artifact file not found for {label}. To fix: run `tierplan compile PLAN --out DIR` "
                         "and pass DIR as root")
    inputs = [TensorSpec.from_dict(d) for d in entry.get("inputs", [])]
    outputs = [TensorSpec.from_dict(d) for d in entry.get("outputs", [])]
    options = dict(entry.get("options") or {})
    if backend not in _MODULES:
        raise InputError(f"{label}: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    runner = _MODULES[backend].load(path, inputs, outputs, options,
                                    label + (" emulated by a host build" if emulated else ""))
    runner.emulated = emulated
    return runner
