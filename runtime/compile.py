"""Compile every piece of a plan for the device of the site that runs it, verify it, and store it.

For each (piece, site class) of the plan:

1. candidates = the backends that apply to the piece's file (.onnx: tvm, onnxruntime; .tflite:
   litert), in the order the site's device lists them, narrowed by `backends=`;
2. each candidate is built into the content-addressed store (runtime/store.py) unless an
   identical build is already there; a build is checked numerically against onnxruntime on the
   piece (random inputs of the declared shapes; |a - b| <= atol max(1, max|b|) + rtol |b| per
   output: the absolute tolerance scales with the output's magnitude, since float32 rounding does:
   an SSD's boxes in pixels differ by 7e-4 between onnxruntime's optimised and plain graphs) and
   rejected on a mismatch;
3. the choice: every candidate is built. On a device that is this machine (`local`) or shares its
   architecture, each is timed (median of N runs) and the fastest verified one wins. On other
   devices (a Jetson, a Raspberry Pi 5, an IP camera) the one the cost model predicts fastest
   wins: the cost model's latency of the piece on the device times each backend's time on this
   machine over onnxruntime's (a cross-compiled TVM build is timed through its host build), each
   alternative's `predicted_ms` and the entry's `choice` saying so. Backends the backends/ package
   provides each build a file kind (runtime/backends/*_backend.py: `build_piece(BuildJob)`); a
   backend the device lists that cannot run the file (LiteRT for an ONNX piece) is recorded among
   the alternatives with what it would need;
4. a candidate that fails (TVM frontend or codegen error, mismatch) is recorded with its reason
   and the next one is used: `fallback_reason` says why.

A TVM artifact for another architecture (aarch64) is exported as a .tar the device links; it
cannot run here, so it is `verified: false` ('cross-compiled, not runnable here'), but the same
Relax module is also compiled for this machine and checked, and a mismatch there rejects it.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from tierplan.runtime.backends import BACKENDS, applicable, backend_module
from tierplan.runtime.backends.base import BuildJob, TensorSpec, first_line, host_arch, random_inputs, target_arch
from tierplan.runtime.backends.litert_backend import ONNX_NOTE
from tierplan.runtime.backends.tvm_backend import CROSS_NOTE
from tierplan.runtime.backends.tvm_tune import TuneSettings
from tierplan.runtime.store import MANIFEST_NAME, ArtifactStore, artifact_key, file_sha256
from tierplan.errors import InputError
from tierplan.planner.plan import PlanPiece
from tierplan.spec import DeviceSpec

__all__ = ["CompileOptions", "CompileResult", "compile_plan", "compile_piece", "load_manifest",
           "resolve_site_devices", "piece_io", "compiler_versions", "CROSS_NOTE"]

#: bump when the build or check logic changes so old store entries stop matching
STORE_SCHEMA = 1

# piece file kind -> backends that can run it


@dataclass(frozen=True)
class CompileOptions:
    """Knobs of a compile run. Tolerances are the acceptance test against onnxruntime."""

    tune: TuneSettings = field(default_factory=TuneSettings)
    backends: tuple[str, ...] | None = None
    measure_runs: int = 10
    measure_budget_s: float = 3.0
    threads: int = 0                    # onnxruntime intra-op threads (0 = every core)
    rtol: float = 1e-4
    atol: float = 1e-4
    seed: int = 0


@dataclass
class CompileResult:
    """What `compile_plan` did: the manifest (also written as manifest.json) and its location."""

    manifest: dict
    out_dir: Path
    manifest_path: Path
    compile_s: float

    @property
    def artifacts(self) -> list[dict]:
        return self.manifest["artifacts"]

    @property
    def cached(self) -> int:
        """How many artifacts came entirely from the store (no build, no measurement)."""
        return sum(1 for a in self.artifacts if a["cached"])

    def entry(self, piece: str, site: str) -> dict:
        """The manifest entry of one piece on one site class."""
        for a in self.artifacts:
            if a["piece"] == piece and a["site"] == site:
                return a
        raise KeyError(f"{piece}@{site}")

    def to_json(self) -> dict:
        return self.manifest


# ----------------------------------------------------------------------------- inputs
def compiler_versions() -> dict[str, str]:
    """Versions of every compiler/runtime whose output lands in the store (part of each key): each
    backend's (its module's `version()`, which reads package metadata, not the package) and onnx's."""
    import importlib.metadata as md

    from tierplan.runtime.backends import BACKENDS, backend_module

    def dist(name: str) -> str:   # metadata, not imports: importing tvm alone takes seconds
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "absent"
    return {**{b: backend_module(b).version() for b in BACKENDS}, "tvm_ffi": dist("apache-tvm-ffi"),
            "onnx": dist("onnx"), "store_schema": str(STORE_SCHEMA)}


def _declared_shapes(declared: Iterable[Mapping]) -> dict[str, list]:
    return {str(d.get("name")): list(d.get("shape") or []) for d in declared}


def piece_io(path: str | Path, declared_inputs: Sequence[Mapping] = (), label: str = "") -> tuple[
        list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of a piece file; symbolic input dims are filled from `declared_inputs`.

    Inputs must end up fully concrete (TVM compiles static shapes; checks need real tensors).
    Output shapes may stay 0 where unknown; they are taken from the reference run.
    """
    path = Path(path)
    label = label or str(path)
    if path.suffix == ".tflite":
        from tierplan.runtime.backends.litert_backend import tflite_io
        try:
            return tflite_io(path)
        except Exception as e:  # LiteRT raises ValueError/RuntimeError for files it cannot read
            raise InputError(f"{label}: {path.name} is not a loadable .tflite file ({first_line(e)})") from e
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / OSError variants
        raise InputError(f"{path}: not a readable ONNX file ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    g = model.graph
    init = {i.name for i in g.initializer}
    declared = _declared_shapes(declared_inputs)

    def spec(vi, fill: Mapping[str, list], is_input: bool) -> TensorSpec:
        tt = vi.type.tensor_type
        dims = []
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
                continue
            given = fill.get(vi.name)
            if given is not None and k < len(given) and isinstance(given[k], int) and given[k] > 0:
                dims.append(int(given[k]))
            elif is_input:
                raise InputError(
                    f"{label}: input tensor {vi.name!r} has unknown dimension {k} "
                    f"({d.dim_param or '?'}). To fix: give the model's `dims` in app.yaml so pieces carry "
                    "concrete shapes")
            else:
                dims.append(0)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        return TensorSpec(vi.name, tuple(dims), dtype)

    inputs = [spec(vi, declared, True) for vi in g.input if vi.name not in init]
    outputs = [spec(vi, {}, False) for vi in g.output]
    return inputs, outputs


def resolve_site_devices(plan, sites: Iterable[str]) -> dict[str, DeviceSpec]:
    """The device of every site class, from the fleet the plan embeds (Plan.fleet_model(): every
    device inline, no catalog, no fleet.yaml). A plan without one, or a site class its fleet lacks,
    is an InputError saying how to fix it."""
    classes = plan.fleet_model().classes
    out: dict[str, DeviceSpec] = {}
    for s in dict.fromkeys(sites):
        if s not in classes:
            raise InputError(f"site class {s!r}: not in the plan's fleet ({', '.join(classes) or 'none'}). "
                             "To fix: re-run `tierplan plan` with the fleet that has it")
        out[s] = classes[s].device
    return out


def load_manifest(out_dir: str | Path) -> dict:
    """Read `<out_dir>/manifest.json` as written by `compile_plan`."""
    import json
    path = Path(out_dir) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no manifest. To fix: run `tierplan compile PLAN --out {out_dir}`")
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e})")


# ----------------------------------------------------------------------------- checks
class _Reference:
    """Lazy onnxruntime reference outputs of one ONNX piece (graph optimisations off)."""

    def __init__(self, path: Path, inputs: Sequence[TensorSpec], seed: int):
        self.path, self.specs, self.seed = path, list(inputs), seed
        self._feeds: dict[str, np.ndarray] | None = None
        self._outs: dict[str, np.ndarray] | None = None

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        if self._feeds is None:
            self._feeds = random_inputs(self.specs, self.seed)
        return self._feeds

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        if self._outs is None:
            from tierplan.runtime.backends.ort_backend import OrtRunner
            try:
                ref = OrtRunner(self.path, self.specs, (), options={"graph_optimization_level": "disable",
                                                                      "intra_op_num_threads": 0})
                self._outs = ref.run(self.feeds)
            except InputError:
                raise
            except Exception as e:  # onnxruntime raises its own exception types for invalid graphs
                raise InputError(f"{self.path}: onnxruntime cannot run the piece ({first_line(e)}), so it cannot be "
                                 "checked. To fix: re-run `tierplan partition` on the model") from e
            ref.close()
        return self._outs

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec(n, tuple(a.shape), a.dtype.name) for n, a in self.outputs.items()]


@dataclass(frozen=True)
class _Job:
    piece: PlanPiece
    site: str
    device: DeviceSpec


def _predicted_ms(piece: PlanPiece, device: DeviceSpec, cost_model) -> float | None:
    """The cost model's latency of the piece on the device, or None when it has no figure."""
    if cost_model is None:
        return None
    from tierplan.partition.types import Piece, TensorInfo

    def tinfos(ts) -> tuple:
        return tuple(TensorInfo(str(t.get("name")), tuple(int(x) for x in (t.get("shape") or [])),
                                str(t.get("dtype", "float32")), int(t.get("nbytes", 0))) for t in ts)
    p = Piece(id=piece.id, model=piece.model or piece.id.split("/")[0], index=0, nodes=(),
              inputs=tinfos(piece.inputs), outputs=tinfos(piece.outputs), flops=float(piece.flops),
              param_bytes=int(piece.param_bytes), file=piece.file)
    try:
        return float(cost_model.piece_ms(p, device))
    except InputError:
        return None


def _predicted_fastest(usable: list[dict], device_ms: float | None, device: str) -> tuple[dict, str]:
    """The alternative the cost model predicts fastest on a device that cannot run here, and why.

    The cost model gives one latency per device (`device_ms`, from the calibration of onnxruntime runs);
    each backend's share of it is its build's time on this machine over onnxruntime's (a cross build is
    timed through its host build): predicted(b) = device_ms x host_ms(b) / host_ms(onnxruntime). Each
    alternative records its `predicted_ms`. Without a figure to compare, the device's first listed
    backend that builds and checks wins, and the reason says so."""
    host = {a["backend"]: a["latency_ms"] if a["latency_ms"] is not None else a.get("host_latency_ms") for a in usable}
    base = host.get("onnxruntime")
    timed = [a for a in usable if host.get(a["backend"])]
    if device_ms is None or not timed or (base is None and len(timed) > 1):
        return usable[0], (f"first listed backend of {device} that builds and checks (device not runnable here; "
                           + ("no cost-model figure for it)" if device_ms is None else "no host timing to rank them)"))
    for a in timed:
        a["predicted_ms"] = device_ms * (host[a["backend"]] / base if base else 1.0)
    chosen = min(timed, key=lambda a: a["predicted_ms"])
    return chosen, (f"predicted fastest on {device} (not runnable here): cost model {device_ms:.2f} ms x each "
                    "backend's time here over onnxruntime's: " +
                    ", ".join(f"{a['backend']} {a['predicted_ms']:.2f} ms ({host[a['backend']]:.2f} ms here)"
                              for a in sorted(timed, key=lambda a: a["predicted_ms"])))


def _resolve_file(piece, base_dir: Path | None) -> Path:
    if not piece.file:
        raise InputError(f"plan: piece {piece.id!r} has no file. To fix: re-run `tierplan plan` on a partitioned app")
    f = Path(piece.file)
    for cand in ([f] if f.is_absolute() else [f, *([base_dir / f] if base_dir else [])]):
        if cand.is_file():
            return cand.resolve()
    raise InputError(f"plan: piece {piece.id!r}: file not found {piece.file!r}. "
                     "To fix: re-run `tierplan partition`/`tierplan plan` so the piece files exist")


def compile_piece(job: _Job, store: ArtifactStore, opts: CompileOptions, versions: Mapping[str, str],
                  base_dir: Path | None = None, cost_model=None,
                  progress: Callable[[str], None] = lambda s: None) -> dict:
    """Build, check and choose the artifact of one piece on one site class; returns its manifest entry."""
    piece, site, device = job.piece, job.site, job.device
    label = f"{piece.id}@{site}"
    src = _resolve_file(piece, base_dir)
    kind = "tflite" if src.suffix == ".tflite" else "onnx"
    runs_it = applicable(kind)
    order: list[str] = [b for b in device.backends if b in runs_it]
    # the device's backends that cannot run this file: said in the manifest (LiteRT for an ONNX piece: what it needs)
    not_here = [b for b in device.backends if b in BACKENDS and b not in runs_it]
    if opts.backends is not None:
        asked = [b for b in opts.backends if b in runs_it]
        if not asked:
            why = ONNX_NOTE if kind == "onnx" and "litert" in opts.backends else \
                f"{', '.join(opts.backends)} cannot run a .{kind} file (these can: {', '.join(runs_it)})"
            raise InputError(f"{label}: --backend {','.join(opts.backends)}: {why}. To fix: choose --backend "
                             f"{' or '.join(runs_it)} for this piece")
        order = [b for b in order if b in opts.backends] or asked
        not_here = [b for b in not_here if b in opts.backends]
    if not order:
        raise InputError(f"{label}: device {device.name} lists backends {list(device.backends)}, none of which runs a "
                         f".{kind} piece ({', '.join(runs_it)}). To fix: place the piece on another site or add "
                         f"one of {list(runs_it)} to devices/catalog/{device.name}.yaml")
    target = dict(device.tvm_target)
    # measurable here: this machine, or a CPU (llvm) target of this machine's architecture
    measured_here = device.name == "local" or (str(target.get("kind", "llvm")) == "llvm"
                                               and target_arch(target) == host_arch())
    piece_sha = file_sha256(src)
    io_cache: list = []

    def io() -> tuple[list[TensorSpec], list[TensorSpec], _Reference | None]:
        """Specs and reference, computed on the first build only (a cached plan never reads the files)."""
        if not io_cache:
            specs, out_decl = piece_io(src, piece.inputs, label)
            io_cache.extend([specs, out_decl, _Reference(src, specs, opts.seed) if kind == "onnx" else None])
        return io_cache[0], io_cache[1], io_cache[2]
    predicted = _predicted_ms(piece, device, cost_model)

    alternatives: list[dict] = []

    def attempt(backend: str) -> dict:
        settings: dict = {"seed": opts.seed, "rtol": opts.rtol, "atol": opts.atol}
        if backend == "tvm":
            settings["tune"] = opts.tune.key()
            btarget = target
        else:
            settings["threads"] = opts.threads
            btarget = {"backend": backend}   # onnx / tflite files are target-independent
        key = artifact_key(piece_sha, btarget, backend, versions, settings)
        meta = store.get(key)
        cached = meta is not None
        if meta is None:
            progress(f"{backend}: building")

            def build(tmp: Path) -> dict:
                specs, out_decl, ref = io()
                return backend_module(backend).build_piece(BuildJob(
                    tmp=tmp, src=src, inputs=specs, outputs=out_decl, reference=ref, target=target,
                    threads=opts.threads, seed=opts.seed, rtol=opts.rtol, atol=opts.atol,
                    measure_runs=opts.measure_runs, measure_budget_s=opts.measure_budget_s, tune=opts.tune,
                    progress=lambda s: progress(f"{backend}: {s}")))
            meta = store.put(key, lambda tmp: _with_io(build(tmp), *io()))
        alt = {"backend": backend, "ok": bool(meta.get("ok")), "verified": bool(meta.get("verified")),
               "latency_ms": meta.get("latency_ms"), "host_latency_ms": meta.get("host_latency_ms"),
               "max_abs_diff": meta.get("max_abs_diff"),
               "reason": meta.get("reason"), "cached": cached, "key": key,
               "file": str(store.file(key, meta)) if meta.get("ok") else None, "_meta": meta}
        alternatives.append(alt)
        return alt

    for backend in order:   # every candidate: the device's TVM, onnxruntime and LiteRT builds are all compared
        attempt(backend)
    if kind == "onnx" and "onnxruntime" not in order and not any(a["ok"] for a in alternatives):
        attempt("onnxruntime")   # the reference runtime is the last resort for any ONNX piece

    usable = [a for a in alternatives if a["ok"]]
    if not usable:
        reasons = "; ".join(f"{a['backend']}: {a['reason']}" for a in alternatives)
        raise InputError(f"{label}: no backend could build the piece ({reasons})")
    if measured_here:
        chosen = min(usable, key=lambda a: (a["latency_ms"] if a["latency_ms"] is not None else float("inf")))
        choice = "fastest measured on this machine: " + ", ".join(
            f"{a['backend']} {a['latency_ms']:.2f} ms" for a in usable if a["latency_ms"] is not None)
    else:
        chosen, choice = _predicted_fastest(usable, predicted, device.name)
    failed = [a for a in alternatives if not a["ok"]]
    fallback = "; ".join(f"{a['backend']}: {a['reason']}" for a in failed) or None
    for b in not_here:   # listed by the device, but not for this file: what it would need
        alternatives.append({"backend": b, "ok": False, "verified": False, "latency_ms": None, "host_latency_ms": None,
                             "max_abs_diff": None, "cached": True, "key": None, "file": None, "_meta": {},
                             "reason": ONNX_NOTE if b == "litert" else f"{b} does not run a .{kind} file"})
    meta = chosen["_meta"]
    key = chosen["key"]
    path = store.file(key, meta)
    entry = {
        "piece": piece.id, "site": site, "device": device.name, "backend": chosen["backend"],
        "file": str(path), "rel_file": str(path.relative_to(store.root.resolve())),
        "key": key, "piece_sha256": piece_sha, "source": str(src),
        "target": target if chosen["backend"] == "tvm" else {"backend": chosen["backend"]},
        "versions": dict(versions),
        "latency_ms": meta.get("latency_ms") if measured_here else chosen.get("predicted_ms", predicted),
        "latency_source": meta.get("latency_source") if measured_here else "predicted (cost model)",
        "predicted_ms": predicted,
        "host_latency_ms": meta.get("latency_ms") if meta.get("latency_ms") is not None else meta.get("host_latency_ms"),
        "verified": bool(meta.get("verified")), "max_abs_diff": meta.get("max_abs_diff"),
        "verify_note": meta.get("verify_note"), "fallback_reason": fallback, "choice": choice,
        "cached": all(a["cached"] for a in alternatives),
        "options": meta.get("options") or {},
        "tune": next((a["_meta"].get("tune") for a in alternatives if a["backend"] == "tvm"), None),
        "build_s": meta.get("build_s"),
        "inputs": meta.get("inputs") or [s.to_dict() for s in io()[0]],
        "outputs": meta.get("outputs") or [s.to_dict() for s in io()[1]],
        "alternatives": [{k: v for k, v in a.items() if k != "_meta"} | {"chosen": a is chosen}
                         for a in alternatives],
    }
    if meta.get("host_check_max_abs_diff") is not None:
        entry["host_check_max_abs_diff"] = meta["host_check_max_abs_diff"]
    if meta.get("host_file_name"):
        host = store.dir(key).resolve() / str(meta["host_file_name"])
        entry["host_file"] = str(host)
        entry["host_rel_file"] = str(host.relative_to(store.root.resolve()))
        entry["host_target"] = meta.get("host_target")
    return entry


def _with_io(meta: dict, specs: Sequence[TensorSpec], out_decl: Sequence[TensorSpec],
             ref: _Reference | None) -> dict:
    """Record the input and output specs (outputs from the reference run for ONNX pieces) in a build's meta."""
    if meta.get("ok"):
        meta["inputs"] = [s.to_dict() for s in specs]
        meta["outputs"] = [s.to_dict() for s in (ref.output_specs() if ref is not None else out_decl)]
    return meta


# ----------------------------------------------------------------------------- the plan
def _jobs(plan, devices: Mapping[str, DeviceSpec]) -> list[_Job]:
    pieces = {p.id: p for p in plan.pieces if p.kind == "piece"}
    pairs: list[tuple[str, str]] = []
    for pid, site in plan.assignment.items():
        if pid in pieces:
            pairs.append((pid, site))
    for per in plan.per_class.values():
        for pid, site in per.items():
            if pid in pieces:
                pairs.append((pid, site))
    order = {pid: i for i, pid in enumerate(pieces)}
    pairs = sorted(dict.fromkeys(pairs), key=lambda ps: (order[ps[0]], ps[1]))
    return [_Job(pieces[pid], site, devices[site]) for pid, site in pairs]


def _plan_sites(plan) -> list[str]:
    pieces = {p.id for p in plan.pieces if p.kind == "piece"}
    sites = [s for pid, s in plan.assignment.items() if pid in pieces]
    sites += [s for per in plan.per_class.values() for pid, s in per.items() if pid in pieces]
    return list(dict.fromkeys(sites))


def compile_plan(plan, out_dir: str | Path, tune_trials: int = 0, backends: Sequence[str] | None = None,
                 progress: bool = True, *, tune_tasks: int | None = None,
                 tune_db: str | Path | None = None, base_dir: str | Path | None = None,
                 options: CompileOptions | None = None,
                 cost_model=None) -> CompileResult:
    """Compile every (piece, site class) of `plan` into `out_dir`; write and return the manifest.

    `tune_trials` > 0 tunes TVM builds for native targets (meta-schedule, `tune_trials` per task,
    the `tune_tasks` heaviest tasks, database in `tune_db`, default `<out_dir>/tuning`).
    `backends` narrows the candidates (e.g. ["onnxruntime"]). `progress` draws a rich progress bar
    on stderr. `base_dir` resolves relative piece files (the plan file's folder).
    """
    t0 = time.perf_counter()
    if backends is not None:
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise InputError(f"--backend: unknown backend(s) {unknown}; expected one of {', '.join(BACKENDS)}")
    if tune_trials < 0:
        raise InputError(f"--tune-trials: must be >= 0, got {tune_trials}")
    out = Path(out_dir)
    opts = options or CompileOptions()
    tune = TuneSettings(trials=tune_trials, max_tasks=tune_tasks,
                        db_root=str(Path(tune_db) if tune_db else (out / "tuning").resolve()))
    opts = CompileOptions(**{**opts.__dict__, "tune": tune,
                             "backends": tuple(backends) if backends is not None else opts.backends})
    if plan.status == "infeasible":
        raise InputError(f"plan is infeasible ({plan.reason or 'no reason given'}); nothing to compile. "
                         "To fix: relax the SLO or the constraints and re-run `tierplan plan`")
    devices = resolve_site_devices(plan, _plan_sites(plan))
    jobs = _jobs(plan, devices)
    # pieces of profile-table models have no file: nothing to build, say so in the manifest
    skipped = [{"piece": j.piece.id, "site": j.site, "reason": "no model file (profile-table model)"}
               for j in jobs if not j.piece.file]
    jobs = [j for j in jobs if j.piece.file]
    if cost_model is None:
        from tierplan.devices.costmodel import CostModel
        cost_model = CostModel()
    store = ArtifactStore(out)
    versions = compiler_versions()
    base = Path(base_dir) if base_dir else None
    entries: list[dict] = []
    with _progress_bar(progress, len(jobs)) as step:
        for i, job in enumerate(jobs):
            label = f"{job.piece.id}@{job.site}"
            step(i, label, "")
            def on_step(s: str, i: int = i, label: str = label) -> None:
                step(i, label, s)
            entries.append(compile_piece(job, store, opts, versions, base, cost_model, progress=on_step))
            step(i + 1, label, "done")
    compile_s = time.perf_counter() - t0
    manifest = {
        "artifacts": entries,
        "skipped": skipped,
        "versions": versions,
        "host": {"arch": host_arch()},
        "plan": {"status": plan.status, "app_path": plan.app_path, "fleet_path": plan.fleet_path,
                 "inputs_sha256": dict(plan.inputs_sha256)},
        "tune": {"trials": tune.trials, "max_tasks": tune.max_tasks, "database": tune.db_root},
        "compile_s": round(compile_s, 3),
        "cached": sum(1 for e in entries if e["cached"]),
        "built": sum(1 for e in entries if not e["cached"]),
    }
    path = store.write_manifest(manifest)
    return CompileResult(manifest=manifest, out_dir=out, manifest_path=path, compile_s=compile_s)


class _progress_bar:
    """A rich progress bar on stderr (or nothing): `step(done, label, status)` updates it."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled, total
        self._p: Any = None

    def __enter__(self):
        if not self.enabled:
            return lambda done, label, status: None
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        from tierplan.console import progress
        self._cm = progress(True, TextColumn("[bold]compile"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.description}"))
        self._p = self._cm.__enter__()
        task = self._p.add_task("", total=self.total)

        def step(done: int, label: str, status: str) -> None:
            self._p.update(task, completed=done, description=f"{label} {status}".strip())
        return step

    def __exit__(self, *exc):
        if self._p is not None:
            self._cm.__exit__(*exc)
        return False
