"""TVM Relax backend: ONNX piece -> Relax -> `tvm.compile` for a catalog target -> .so (native) or .tar.

Native targets give a shared library loaded into a relax VirtualMachine; cross targets (e.g.
aarch64) give the exported object archive the device links and loads itself. Tuning lives in
runtime/backends/tvm_tune.py.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tierplan.runtime.backends.base import BuildJob, Runner, TensorSpec, compare, first_line, host_arch, target_arch

__all__ = ["NAME", "FILE_KINDS", "RANK", "TvmRunner", "make_target", "import_onnx", "build", "is_native", "version",
           "artifact_ext", "build_piece", "load", "CROSS_NOTE", "HOST_BUILD_NAME"]

NAME = "tvm"
FILE_KINDS = ("onnx",)      # piece files it builds
RANK = 0                    # order among the backends (listing, messages)
DIST = "apache-tvm"         # the distribution whose version keys the artifact store
CROSS_NOTE = "cross-compiled, not runnable here"
HOST_BUILD_NAME = "piece.host.so"   # the same Relax module built for this machine (checks, local emulation)


def version() -> str:
    """The installed TVM's version, from package metadata (importing tvm takes seconds)."""
    import importlib.metadata as md
    try:
        return md.version(DIST)
    except md.PackageNotFoundError:
        return "absent"


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


def _host_target() -> dict:
    """This machine's TVM target: the detected `local` device's (devices.host: LLVM's host CPU and triple)."""
    from tierplan.devices.host import local_device

    target = dict(local_device().tvm_target)
    if "mcpu" not in target:   # detected while TVM was not importable
        from tvm.target import codegen
        target["mcpu"] = str(codegen.llvm_get_system_cpu())
    return target


def build_piece(job: BuildJob) -> dict:
    """Build with TVM Relax for the device's target: a native target (this machine) is checked and timed
    here; a same-architecture target for another CPU, or a cross target (aarch64: a .tar the device
    links), is also built for this machine, and that host build is checked (a mismatch rejects the
    artifact) and timed (`host_latency_ms`, what compile ranks backends by: runtime.compile)."""
    from tierplan.runtime.backends.tvm_tune import tune_module, tuning_target

    tmp, src, specs, ref, progress = job.tmp, job.src, job.inputs, job.reference, job.progress
    assert ref is not None, "an ONNX piece has a reference"
    target = dict(job.target)
    if str(target.get("kind", "llvm")) != "llvm":
        return {"ok": False,
                "reason": f"TVM target kind {target.get('kind')!r} is not built here (llvm CPU targets only)"}
    native = is_native(target)
    same_arch = target_arch(target) == host_arch()
    ext = "so" if same_arch else "tar"
    dst = tmp / f"piece.{ext}"
    meta: dict = {"file_name": dst.name, "options": {}, "latency_source": "measured"}
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):   # the frontend prints failing ops; keep --json stdout clean
            mod = import_onnx(src, specs)
    except Exception as e:  # the Relax ONNX frontend raises TypeError/ValueError/TVMError/... per op
        return {"ok": False, "reason": f"TVM frontend rejected the piece ({first_line(e)})"}
    try:
        database = None
        if job.tune is not None and job.tune.enabled and native:
            from tvm import relax
            progress("tuning")
            mod = relax.get_pipeline("zero")(mod)
            database, report = tune_module(mod, target, job.tune)
            meta["tune"] = report.to_dict()
        elif job.tune is not None and job.tune.enabled:
            meta["tune"] = {"skipped": "tuning needs the target device; not runnable here"}
        progress("compiling")
        build_target = tuning_target(target) if database is not None else target
        build(mod, build_target, dst, database=database)
        check_path = dst
        if not native:
            check_path = tmp / HOST_BUILD_NAME   # kept: local emulation of the device runs it
            build(mod, _host_target(), check_path)
            meta["host_file_name"] = check_path.name
            meta["host_target"] = _host_target()
    except Exception as e:  # codegen / lowering failures surface as TVMError, ValueError, RuntimeError
        return {"ok": False, "reason": f"TVM build failed ({first_line(e)})"}
    meta["build_s"] = time.perf_counter() - t0
    if not dst.is_file() or dst.stat().st_size == 0:
        return {"ok": False, "reason": f"TVM export wrote no {dst.name}"}
    progress("checking")
    runner = TvmRunner(check_path, specs, ref.output_specs())
    try:
        outs = runner.run(ref.feeds)
    except Exception as e:  # a VM run failure is a rejection, not a crash of the whole compile
        runner.close()
        return {"ok": False, "reason": f"TVM artifact failed to run ({first_line(e)})"}
    ok, diff, note = compare(outs, ref.outputs, job.rtol, job.atol)
    meta.update(ok=ok, max_abs_diff=diff, reason=(f"TVM output mismatch: {note}" if not ok else None))
    if ok:
        meta["latency_ms"], meta["runs"] = job.timed(runner, ref.feeds)
    runner.close()
    if native:
        meta["verified"] = ok
    elif same_arch:
        meta["verified"] = ok
        meta["verify_note"] = (f"checked and timed on a build for this machine's CPU ({_host_target()['mcpu']}); "
                               f"the artifact targets mcpu={target.get('mcpu')}")
        meta["latency_source"] = "measured (host build)"
    else:
        meta["verified"] = False
        meta["verify_note"] = CROSS_NOTE
        meta["host_check_max_abs_diff"] = diff
        meta["latency_source"] = "predicted"
        if meta.get("latency_ms") is not None:   # the host build's time: ranks TVM against the other backends
            meta["host_latency_ms"] = meta["latency_ms"]
        meta.pop("latency_ms", None)
        meta.pop("runs", None)
    return meta


# ----------------------------------------------------------------------------- one piece


def load(path: str | Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], options: Mapping,
         label: str) -> Runner:
    """The runner of a built artifact (runtime.backends.load_artifact: a host build stands in for a cross one)."""
    from tierplan.errors import InputError
    if not inputs or not outputs:
        raise InputError(f"{label}: manifest entry lacks inputs/outputs; recompile with `tierplan compile`")
    return TvmRunner(path, inputs, outputs, label=label)
