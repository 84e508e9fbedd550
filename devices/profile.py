"""Latency measurement on this machine: warm-up, then the median of N timed runs with a fixed thread count.

Backends: onnxruntime (default; CPU execution provider, all graph optimisations, sequential
execution), tvm (Relax from ONNX, compiled for `local`, this machine's detected target, untuned) and litert
(.tflite files through ai_edge_litert's interpreter). Inputs are deterministic random tensors
(partition.feeds.random_feeds) with the shapes the piece declares.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypedDict, Unpack

import numpy as np

from tierplan.partition.feeds import random_feeds
from tierplan.partition.types import Piece, TensorInfo
from tierplan.errors import InputError

if TYPE_CHECKING:
    import onnxruntime as ort

__all__ = ["BACKENDS", "Measurement", "measure", "measure_piece", "time_runs", "ort_session", "ort_node_times"]

BACKENDS: tuple[str, ...] = ("ort", "tvm", "litert")
DEFAULT_THREADS = 1          # one intra-op thread: stable figures on a shared machine; calibration records it


@dataclass(frozen=True)
class Measurement:
    """Measured latency of one file on this machine (milliseconds)."""

    id: str
    file: str
    backend: str
    threads: int
    runs: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    cpu_median_ms: float = 0.0   # CPU time of the calling thread (see time_runs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_runs(run: Callable[[], object], warmup: int = 3, runs: int = 20, min_time_s: float = 0.0,
              max_runs: int = 2000) -> tuple[list[float], list[float]]:
    """Call `run` `warmup` times, then at least `runs` times (and until `min_time_s` passed).

    Returns (wall ms, CPU ms of the calling thread) per run. With one intra-op thread onnxruntime
    computes in the calling thread, so its CPU time is the run's latency minus the time the OS
    gave the core to other processes: the figure to calibrate with on a shared machine.
    """
    for _ in range(max(0, warmup)):
        run()
    wall: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    while len(wall) < runs or (time.perf_counter() - start < min_time_s and len(wall) < max_runs):
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        run()
        wall.append((time.perf_counter_ns() - t0) / 1e6)
        cpu.append((time.thread_time_ns() - c0) / 1e6)
    return wall, cpu


def ort_session(path: str | Path, threads: int = DEFAULT_THREADS, profile_dir: str | None = None,
                ) -> ort.InferenceSession:
    """An onnxruntime CPU session with `threads` intra-op threads and sequential execution."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(profile_dir) / "ort")
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise InputError(f"{path}: onnxruntime cannot load it ({type(e).__name__}: {str(e).splitlines()[0]})")


def _feeds_for(inputs: Sequence[TensorInfo], seed: int) -> dict[str, np.ndarray]:
    return random_feeds(inputs, seed=seed)


def _session_inputs(sess: ort.InferenceSession) -> list[TensorInfo]:
    """A session's inputs as TensorInfo, dynamic dimensions taken as 1 and unknown types as float32."""
    out = []
    for i in sess.get_inputs():
        shape = tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in i.shape)
        dtype = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
                 "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
                 "tensor(bool)": "bool", "tensor(double)": "float64"}.get(i.type, "float32")
        out.append(TensorInfo(i.name, shape, dtype, int(np.prod(shape)) * np.dtype(dtype).itemsize))
    return out


def measure(path: str | Path, backend: str = "ort", threads: int = DEFAULT_THREADS, runs: int = 20,
            warmup: int = 3, min_time_s: float = 0.0, inputs: Sequence[TensorInfo] | None = None,
            piece_id: str | None = None, seed: int = 0) -> Measurement:
    """Measure one ONNX (or .tflite for litert) file on this machine; see the module docstring."""
    path = Path(path)
    if backend not in BACKENDS:
        raise InputError(f"--backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if backend == "ort":
        sess = ort_session(path, threads)
        feeds = _feeds_for(inputs or _session_inputs(sess), seed)
        names = [o.name for o in sess.get_outputs()]
        run = lambda: sess.run(names, feeds)  # noqa: E731
    elif backend == "tvm":
        run = _tvm_runner(path, threads, inputs, seed)
    else:
        run = _litert_runner(path, threads, seed)
    times, cpu = time_runs(run, warmup=warmup, runs=runs, min_time_s=min_time_s)
    q = np.percentile(times, [10, 90])
    return Measurement(id=piece_id or path.stem, file=str(path), backend=backend, threads=threads, runs=len(times),
                       median_ms=float(statistics.median(times)), p10_ms=float(q[0]), p90_ms=float(q[1]),
                       min_ms=float(min(times)), cpu_median_ms=float(statistics.median(cpu)))


class MeasureOptions(TypedDict, total=False):
    """The keyword arguments of `measure` that `measure_piece` passes on."""

    threads: int
    runs: int
    warmup: int
    min_time_s: float
    seed: int


def measure_piece(piece: Piece, backend: str = "ort", **kw: Unpack[MeasureOptions]) -> Measurement:
    """Measure a piece's standalone file with inputs of the shapes it declares (a .tflite piece runs on
    LiteRT, the one backend that runs it, unless another is asked for by name)."""
    if not piece.file:
        raise InputError(f"piece {piece.id}: has no file to run; profile tables cannot be measured")
    if backend == "ort" and str(piece.file).endswith(".tflite"):
        backend = "litert"
    return measure(piece.file, backend=backend, inputs=list(piece.inputs) or None, piece_id=piece.id, **kw)


def measure_in_sequence(pieces: Sequence[Piece], runs: int = 20, warmup: int = 2, min_time_s: float = 0.0,
                        threads: int = DEFAULT_THREADS, seed: int = 0) -> dict[str, float]:
    """CPU-time median (ms, calling thread) of each ONNX piece run one after another in the given order,
    round after round, as a stage worker runs a request's pieces: each piece starts with the caches its
    predecessors left. Alone in a loop a piece keeps its own weights and buffers hot; measured here,
    PP-OCR's recogniser pieces take 10-15% more CPU time in sequence. {piece.id: ms}; pieces onnxruntime
    cannot load (.tflite, symbolic shapes) are left out."""
    runners = []
    for p in pieces:
        if not p.file or not str(p.file).endswith(".onnx"):
            continue
        try:
            sess = ort_session(p.file, threads)
            feeds = _feeds_for(list(p.inputs) or _session_inputs(sess), seed)
            names = [o.name for o in sess.get_outputs()]
            sess.run(names, feeds)
        except Exception:  # a piece onnxruntime cannot run alone
            continue
        runners.append((p.id, sess, names, feeds))
    cpu: dict[str, list[float]] = {pid: [] for pid, *_ in runners}
    start, rounds = time.perf_counter(), 0
    while runners and (rounds < warmup + runs or (time.perf_counter() - start < min_time_s and rounds < 2000)):
        for pid, sess, names, feeds in runners:
            c0 = time.thread_time_ns()
            sess.run(names, feeds)
            if rounds >= warmup:
                cpu[pid].append((time.thread_time_ns() - c0) / 1e6)
        rounds += 1
    return {pid: float(statistics.median(v)) for pid, v in cpu.items() if v}


def ort_node_times(path: str | Path, threads: int = DEFAULT_THREADS, runs: int = 20, warmup: int = 3,
                   inputs: Sequence[TensorInfo] | None = None, seed: int = 0) -> dict[str, float]:
    """Median kernel time per ONNX node (ms) from onnxruntime's profiler; fused nodes report under
    the name onnxruntime gives the fused kernel."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(path, threads, profile_dir=tmp)
        feeds = _feeds_for(inputs or _session_inputs(sess), seed)
        names = [o.name for o in sess.get_outputs()]
        for _ in range(warmup + runs):
            sess.run(names, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[float]] = {}
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            per_node.setdefault(ev["name"][: -len("_kernel_time")], []).append(ev["dur"] / 1e3)
    return {k: float(statistics.median(v[-runs:])) for k, v in per_node.items()}


def _tvm_runner(path: Path, threads: int, inputs: Sequence[TensorInfo] | None, seed: int) -> Callable[[], object]:
    """Compile with TVM Relax for `local` (this machine's detected target, devices.host) and return a run closure."""
    import os

    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from tierplan.devices.catalog import get_device

    model = onnx.load(str(path))
    try:
        mod = from_onnx(model, keep_params_in_input=False)
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.LegalizeOps()(mod)
        exe = tvm.compile(mod, target=tvm.target.Target(dict(get_device("local").tvm_target)))
    except Exception as e:  # TVM's importer/compiler raise many types; report the model and fall back
        raise InputError(f"{path}: TVM cannot compile it ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         f"To fix: use --backend ort")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    init_names = {i.name for i in model.graph.initializer}
    if inputs is None:
        inputs = [TensorInfo(i.name, tuple(d.dim_value for d in i.type.tensor_type.shape.dim),
                             onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name, 0)
                  for i in model.graph.input if i.name not in init_names]
    feeds = _feeds_for(inputs, seed)
    args = [tvm.runtime.tensor(feeds[t.name]) for t in inputs]
    return lambda: vm["main"](*args)


def _litert_runner(path: Path, threads: int, seed: int) -> Callable[[], object]:
    """Load a .tflite file in ai_edge_litert's interpreter and return a run closure."""
    if path.suffix != ".tflite":
        raise InputError(f"{path}: the litert backend runs .tflite files; To fix: use --backend ort for ONNX")
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    rng = np.random.default_rng(seed)
    for d in interp.get_input_details():
        dt = np.dtype(d["dtype"])
        x = rng.standard_normal(d["shape"]).astype(dt) if np.issubdtype(dt, np.floating) else np.zeros(d["shape"], dt)
        interp.set_tensor(d["index"], x)
    return interp.invoke
