"""TVM Relax backend: ONNX piece -> Relax -> `tvm.compile` for a catalog target -> .so (native) or .tar.

Native targets give a shared library loaded into a relax VirtualMachine; cross targets (e.g.
aarch64) give the exported object archive the device links and loads itself. Tuning lives in
runtime/backends/tvm_tune.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tierplan.runtime.backends.base import Runner, TensorSpec, host_arch, target_arch

__all__ = ["TvmRunner", "make_target", "import_onnx", "build", "is_native", "version", "artifact_ext"]


def version() -> str:
    import tvm
    return tvm.__version__


def make_target(target: Mapping):
    """A `tvm.target.Target` from a catalog dict (a bare dict or CLI string fails in tvm 0.27)."""
    import tvm
    return tvm.target.Target(dict(target))


def is_native(target: Mapping) -> bool:
    """True when an artifact built for `target` can be loaded and run on this machine.

    Same architecture, and no `mcpu` other than this machine's (an AVX-512 build would fault here).
    """
    if target_arch(target) != host_arch():
        return False
    mcpu = target.get("mcpu")
    if mcpu:
        from tvm.target import codegen
        return str(mcpu) == str(codegen.llvm_get_system_cpu())
    return True


def artifact_ext(target: Mapping) -> str:
    """File extension of the artifact for `target`: so when loadable here, tar otherwise."""
    return "so" if is_native(target) else "tar"


def import_onnx(onnx_path: str | Path, inputs: Sequence[TensorSpec]):
    """Relax IRModule of an ONNX piece with concrete input shapes; weights become constants."""
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    shape_dict = {t.name: list(t.shape) for t in inputs}
    dtype_dict = {t.name: t.dtype for t in inputs}
    with warnings.catch_warnings():
        # "Renaming name a.b to a_b": Relax variable names only; inputs are passed by position
        warnings.filterwarnings("ignore", message="Renaming name", category=UserWarning)
        mod = from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict, keep_params_in_input=False)
    return relax.transform.DecomposeOpsForInference()(mod)


def build(mod, target: Mapping, dest: str | Path, database=None) -> Path:
    """Compile a Relax module for `target` and export it to `dest` (.so or .tar by the suffix).

    With a meta-schedule `database`, tuned schedules are applied before the default lowering.
    """
    import tvm
    from tvm import relax

    tgt = make_target(target)
    if database is not None:
        with tgt, database, tvm.transform.PassContext(opt_level=3):
            mod = relax.get_pipeline("zero")(mod)
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    ex = tvm.compile(mod, target=tgt)
    dest = Path(dest)
    ex.export_library(str(dest))
    return dest


class TvmRunner(Runner):
    """Runs a native TVM artifact (.so) in a relax VirtualMachine; calls are serialised by a lock."""

    backend = "tvm"

    def __init__(self, path: str | Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], label: str = ""):
        import tvm
        from tvm import relax

        super().__init__(inputs, outputs, label or str(path))
        self.path = str(path)
        self._lib = tvm.runtime.load_module(self.path)
        self._dev = tvm.cpu()
        self._vm = relax.VirtualMachine(self._lib, self._dev)
        self._main = self._vm["main"]
        self._tensor = tvm.runtime.tensor

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        out = self._main(*[self._tensor(a, self._dev) for a in arrays])
        if hasattr(out, "numpy"):
            return [out.numpy()]
        return [o.numpy() for o in out]

    def close(self) -> None:
        self._main = self._vm = self._lib = None
