"""Calibration: fit a device's per-op-type cost coefficients and overheads to measured piece latencies.

Model (the calibrated form in devices/costmodel.py), for a piece P measured at m(P) ms:

    m(P) ~ run_overhead + io_overhead * (inputs + outputs of P) + out_copy * output MB(P) + in_copy * input MB(P)
           + sum_{o in P} ( a[t(o)] * GFLOP(o) + mb[t(o)] * MB(o) + d * max(0, MB(o) - cache_mb)
                            + op_overhead[class(o)] )

Unknowns x = (a[t], mb[t] for each op-type group t, d, op_overhead, run_overhead) >= 0, found by
non-negative least squares on relative errors (each row divided by m(P)), with ridge rows that pull
each coefficient towards the datasheet roofline prior (a = 1e3 / (peak * eff[t]) ms/GFLOP,
mb = 1e3 / (bandwidth * bw_eff) ms/MB) rescaled by the one factor s that best fits the data, with weight
`prior_weight`, so rare op types and held-out models fall back to sensible figures:

    minimise  sum_P ((A_P x - m(P)) / m(P))^2 + prior_weight^2 * sum_j ((x_j - s prior_j) / (s prior_j))^2,  x >= 0

t(o) is the op's key (devices.constants.op_keys: depthwise-like and matrix-vector convolutions get
their own `Conv@dw` / `Conv@gemv` coefficients, convolutions onnxruntime cannot run in its NCHWc layout on
this CPU `Conv@unblocked` / `Conv@dw-unblocked`, falling back to the blocked key when seen too rarely); an epilogue fused into the operator before it
(`Relu~fused`, a Transpose feeding a MatMul, a scalar scale after one) has no compute or memory
columns, only the `fused` class overhead. The synthetic micro-benchmarks (synthetic_pieces) pin the
fixed costs. Op types seen fewer than `min_ops` times share the `other` group. scipy.optimize.nnls is used when
scipy is installed, else the Lawson-Hanson active-set method below (same algorithm). The cache size
`cache_mb` (the working set above which an operator streams from DRAM) and `prior_weight` are
picked from CACHE_MB_GRID x PRIOR_WEIGHT_GRID by the lowest leave-one-model-out error (mean of relative
errors clipped at CV_ERROR_CLIP) on the samples.
"""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from tierplan.devices.constants import (
    BANDWIDTH_EFFICIENCY, DEFAULT_EFFICIENCY, DEFAULT_OP_EFFICIENCY, OP_CLASSES, blocked_key, op_class, op_keys,
)
from tierplan.devices.costmodel import OTHER_OP, Calibration, device_kind
from tierplan.partition.types import OpCost, Piece
from tierplan.errors import InputError
from tierplan.spec import DeviceSpec

__all__ = ["SYNTHETIC_MODEL", "synthetic_pieces", "Sample", "CalibrationModel", "DEFAULT_MODELS", "default_models", "nnls", "fit_calibration",
           "collect_samples", "run_calibration"]

CLASSES: tuple[str, ...] = tuple(OP_CLASSES) + ("elementwise", "fused")
DEFAULT_MIN_OPS = 2          # an op type needs this many occurrences in the data for its own coefficients
# Candidate ridge weights towards the (rescaled) roofline prior, relative units; picked by cross-validation.
PRIOR_WEIGHT_GRID: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
# The adaptive ridge's first pass uses this fraction of the prior weight (see _solve).
ADAPTIVE_RIDGE_FRACTION = 0.01
# Candidate last-level-cache sizes, MB (L2 per core is 0.5-2 MB, L3 slices 4-32 MB on the catalog's CPUs).
CACHE_MB_GRID: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# Cross-validation scores relative errors clipped here (50%: beyond it a prediction is simply wrong).
CV_ERROR_CLIP = 0.5

# Real models shipped in installed wheels: (name, "pkg:PACKAGE/PATH", dims).
DEFAULT_MODELS: tuple[tuple[str, str, Mapping[str, int]], ...] = (
    ("squeezenet", "pkg:onnx/backend/test/data/light/light_squeezenet.onnx", {}),
    ("shufflenet", "pkg:onnx/backend/test/data/light/light_shufflenet.onnx", {}),
    ("resnet50", "pkg:onnx/backend/test/data/light/light_resnet50.onnx", {}),
    ("densenet121", "pkg:onnx/backend/test/data/light/light_densenet121.onnx", {}),
    ("inception_v1", "pkg:onnx/backend/test/data/light/light_inception_v1.onnx", {}),
    ("inception_v2", "pkg:onnx/backend/test/data/light/light_inception_v2.onnx", {}),
    ("alexnet", "pkg:onnx/backend/test/data/light/light_bvlc_alexnet.onnx", {}),
    ("zfnet512", "pkg:onnx/backend/test/data/light/light_zfnet512.onnx", {}),
    ("ppocr_det", "pkg:rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
     {"p2o.DynamicDimension.0": 1, "p2o.DynamicDimension.1": 480, "p2o.DynamicDimension.2": 480}),
    ("ppocr_cls", "pkg:rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     {"x[0]": 1, "x[2]": 48, "x[3]": 192}),
    ("ppocr_rec", "pkg:rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
     {"p2o.DynamicDimension.0": 1, "x[2]": 48, "p2o.DynamicDimension.1": 320}),
    ("silero_vad", "pkg:silero_vad/data/silero_vad_16k_sequence.onnx", {"sequence_length": 16}),
)


@dataclass(frozen=True)
class Sample:
    """One measured piece: the piece (with per-op costs) and its median latency on the device."""

    piece: Piece
    measured_ms: float
    repeat_ms: float | None = None   # an independent second measurement, when taken


def resolve_pkg_path(p: str) -> Path:
    """'pkg:PACKAGE/PATH' -> the file inside the installed package (without importing it)."""
    import importlib.util

    if not p.startswith("pkg:"):
        return Path(p)
    pkg, _, rel = p[4:].partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{p}: package {pkg!r} is not installed; To fix: pip install {pkg.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0]) / rel


REPO_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Real architectures in the repo (random weights): examples/<dir>/<file>, with dims.
EXAMPLE_MODELS: tuple[tuple[str, str, Mapping[str, int]], ...] = (
    ("ssdlite_mnv3", "smart-city/detector.onnx", {}),
    ("mobilenet_v3_small", "smart-city/classifier.onnx", {"batch": 1}),
)
# Reference architectures built by partition.zoo (random weights, generated on first use): name -> (builder,
# its keyword arguments). mobilenet_v2_w095 and _w130 have the odd channel counts of a width multiplier without
# rounding (or of channel pruning): convs onnxruntime cannot block, so their keys (`Conv@dw-unblocked`) get
# fitted, each model's from the other's when one is held out.
ZOO_MODELS: dict[str, tuple[str, Mapping[str, object]]] = {
    "mobilenet_v2": ("mobilenet_v2", {}), "transformer_encoder": ("transformer_encoder", {}),
    "tiny_detector": ("tiny_detector", {}), "mobilenet_v2_w095": ("mobilenet_v2", {"width": 0.95, "divisor": 1}),
    "mobilenet_v2_w130": ("mobilenet_v2", {"width": 1.3, "divisor": 1, "resolution": 160}),
}


def default_models(zoo_dir: str | Path | None = None) -> list[tuple[str, Path, Mapping[str, int]]]:
    """The calibration models found here: DEFAULT_MODELS from installed wheels, the repo's example
    models, and partition.zoo architectures written to `zoo_dir` (skipped when zoo_dir is None)."""
    out = []
    for name, p, dims in DEFAULT_MODELS:
        try:
            path = resolve_pkg_path(p)
        except InputError:
            continue
        if path.is_file():
            out.append((name, path, dims))
    for name, rel, dims in EXAMPLE_MODELS:
        if (REPO_EXAMPLES / rel).is_file():
            out.append((name, REPO_EXAMPLES / rel, dims))
    if zoo_dir is not None:
        try:
            from tierplan.partition import zoo
        except ImportError:
            return out
        Path(zoo_dir).mkdir(parents=True, exist_ok=True)
        for name, (builder_name, kwargs) in ZOO_MODELS.items():
            builder = getattr(zoo, builder_name, None)
            if builder is None:
                continue
            path = Path(zoo_dir) / f"{name}.onnx"
            if not path.is_file():
                zoo.save(builder(**kwargs), path)
            out.append((name, path, {}))
    return out


# ----------------------------------------------------------------------------- NNLS
def nnls(A: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """argmin ||A x - b||_2 subject to x >= 0 (scipy.optimize.nnls when available, else Lawson-Hanson)."""
    A = np.asarray(A, dtype=float)
    b = np.asarray(b, dtype=float)
    try:
        from scipy.optimize import nnls as _scipy_nnls
        return _scipy_nnls(A, b, maxiter=max_iter or 50 * A.shape[1])[0]
    except ImportError:
        return _lawson_hanson(A, b, max_iter or 50 * A.shape[1])


def _lawson_hanson(A: np.ndarray, b: np.ndarray, max_iter: int, tol: float = 1e-10) -> np.ndarray:
    """Lawson & Hanson (1974), 'Solving Least Squares Problems', ch. 23: active-set NNLS."""
    n = A.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = A.T @ (b - A @ x)
    it = 0
    while (~passive).any() and w[~passive].max(initial=-np.inf) > tol and it < max_iter:
        j = np.argmax(np.where(passive, -np.inf, w))
        passive[j] = True
        while it < max_iter:
            it += 1
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > tol).all():
                x = z
                break
            mask = passive & (z <= tol)
            alpha = np.min(x[mask] / (x[mask] - z[mask]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = A.T @ (b - A @ x)
    return x


# ----------------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class CalibrationModel:
    """The columns of the fit: op-type groups, and how a piece becomes a feature row."""

    groups: tuple[str, ...]   # op types with their own coefficients, then `other:<class>` buckets
    cache_mb: float = 0.0
    classes: tuple[str, ...] = CLASSES
    nchwc_block: int = 0      # the measured CPU's MLAS NCHWc block: which convs get the unblocked keys

    @property
    def n(self) -> int:
        return 2 * len(self.groups) + 1 + len(self.classes) + 4

    def group(self, op: OpCost, key: str) -> str:
        """The column group of an operator: its key (op_keys), the key it has when blocked (an unblocked
        conv seen too rarely), its op type, else its class's bucket."""
        if key in self.groups:
            return key
        if blocked_key(key) in self.groups:
            return blocked_key(key)
        return op.op_type if op.op_type in self.groups else f"{OTHER_OP}:{op_class(op.op_type)}"

    def row(self, piece: Piece) -> np.ndarray:
        """[GFLOP per group..., MB per group..., MB beyond the cache, op count per class...,
        I/O tensors, output MB, 1]."""
        k, c = len(self.groups), len(self.classes)
        idx = {g: i for i, g in enumerate(self.groups)}
        cidx = {g: i for i, g in enumerate(self.classes)}
        r = np.zeros(self.n)
        for o, key in zip(piece.ops, op_keys(piece.ops, self.nchwc_block)):
            if op_class(key) == "fused":   # runs inside its head's kernel: only the fused-class overhead
                r[2 * k + 1 + cidx["fused"]] += 1
                continue
            i = idx[self.group(o, key)]
            r[i] += o.flops / 1e9
            mb = (o.param_bytes + o.act_bytes) / 1e6
            r[k + i] += mb
            r[2 * k] += max(0.0, mb - self.cache_mb)
            r[2 * k + 1 + cidx[op_class(key)]] += 1
        r[2 * k + 1 + c] = len(piece.inputs) + len(piece.outputs)
        r[2 * k + 2 + c] = piece.out_bytes / 1e6
        r[2 * k + 3 + c] = piece.in_bytes / 1e6
        r[2 * k + 4 + c] = 1.0
        return r

    def prior(self, device: DeviceSpec) -> np.ndarray:
        """Datasheet roofline figures for every column (ms/GFLOP, ms/MB, ms per op, ms per run)."""
        kind = device_kind(device)
        peak = device.peak_gflops["fp32"]
        bw_ms_per_mb = 1e3 / (device.memory_bandwidth_gbps * 1e3 * BANDWIDTH_EFFICIENCY[kind])
        # depthwise-like / matrix-vector convolutions (`Conv@dw`, `Conv@gemv`) are memory-bound: the
        # element-wise prior efficiency, not the GEMM-like Conv one
        a = [1e3 / (peak * DEFAULT_EFFICIENCY[kind].get(blocked_key(g), DEFAULT_OP_EFFICIENCY[kind]))
             for g in self.groups]
        mb = [bw_ms_per_mb] * len(self.groups)
        over = [device.dispatch_overhead_us / 1e3] * len(self.classes)
        io = [device.dispatch_overhead_us / 1e3, bw_ms_per_mb, bw_ms_per_mb, device.dispatch_overhead_us / 1e3]
        return np.array(a + mb + [bw_ms_per_mb] + over + io)


def _groups(samples: Sequence[Sample], min_ops: int, nchwc_block: int = 0) -> tuple[str, ...]:
    counts: dict[str, int] = {}
    for s in samples:
        for key in op_keys(s.piece.ops, nchwc_block):
            counts[key] = counts.get(key, 0) + 1
    own = sorted(t for t, c in counts.items()
                 if c >= min_ops and not t.startswith(OTHER_OP) and op_class(t) != "fused")
    return tuple(own) + tuple(f"{OTHER_OP}:{c}" for c in CLASSES if c != "fused")


def _solve(rows: np.ndarray, y: np.ndarray, prior: np.ndarray, prior_weight: float) -> np.ndarray:
    """NNLS on relative errors with ridge rows pulling each coefficient towards `prior`.

    The ridge is adaptive: a coefficient the data puts far above its prior (a slow kernel such as
    onnxruntime's LRN, 80x the roofline) is penalised relative to that data-driven value, not to
    the prior, so a well-measured outlier is kept while unmeasured coefficients stay at the prior.
    """
    data_A, data_b = rows / y[:, None], np.ones(len(y))

    def ridge(scale: np.ndarray, weight: float) -> np.ndarray:
        A = np.vstack([data_A, np.diag(weight / scale)])
        b = np.concatenate([data_b, weight * prior / scale])
        return nnls(A, b)

    x0 = ridge(prior, prior_weight * ADAPTIVE_RIDGE_FRACTION)
    return ridge(np.maximum(prior, x0), prior_weight)


def _prior_scale(rows: np.ndarray, y: np.ndarray, prior: np.ndarray) -> float:
    """The one factor s minimising sum(((s * rows @ prior) - y) / y)^2: how far off the datasheet is overall."""
    r = rows @ prior / y
    return float(r.sum() / max((r * r).sum(), 1e-30))


def _cv_error(rows: np.ndarray, y: np.ndarray, models: np.ndarray, prior: np.ndarray,
              prior_weight: float) -> tuple[float, float]:
    """(score, median) of the relative errors of leave-one-model-out predictions (in-sample when there
    is one model). The score is their mean, each clipped at CV_ERROR_CLIP: unlike the median it sees
    every piece (a setting that ruins a quarter of a model still scores badly), and the clip keeps one
    unpredictable model from deciding alone."""
    errs: list[np.ndarray] = []
    names = [m for m in np.unique(models) if m != SYNTHETIC_MODEL]   # micro-benchmarks always train
    for m in names if len(names) > 1 else [None]:
        train = models != m if m is not None else np.ones(len(y), dtype=bool)
        test = ~train if m is not None else train
        p = prior * _prior_scale(rows[train], y[train], prior)
        x = _solve(rows[train], y[train], p, prior_weight)
        errs.append(np.abs(rows[test] @ x / y[test] - 1))
    every = np.concatenate(errs)
    return float(np.mean(np.minimum(every, CV_ERROR_CLIP))), float(np.median(every))


def fit_calibration(samples: Sequence[Sample], device: DeviceSpec, *, min_ops: int = DEFAULT_MIN_OPS,
                    prior_weight: float | None = None, cache_mb: float | None = None, threads: int = 1,
                    backend: str = "onnxruntime", precision: str = "fp32", nchwc_block: int | None = None) -> Calibration:
    """Fit a Calibration of `device` to measured samples (see the module docstring for the problem).

    `prior_weight` and `cache_mb` default to the values from PRIOR_WEIGHT_GRID x CACHE_MB_GRID with
    the lowest leave-one-model-out clipped mean error (_cv_error) on the samples themselves.
    `nchwc_block` (default: this CPU's, devices.host.nchwc_block) tells which convs onnxruntime ran unblocked.
    """
    from tierplan.devices.host import cpu_identity, nchwc_block as host_block

    cpu = cpu_identity()   # the samples were measured here: the calibration belongs to this CPU
    block = host_block(cpu) if nchwc_block is None else nchwc_block
    samples = [s for s in samples if s.measured_ms > 0 and s.piece.ops]
    if len(samples) < 3:
        raise InputError(f"calibration needs at least 3 measured pieces with operators, got {len(samples)}")
    groups = _groups(samples, min_ops, block)
    y = np.array([s.measured_ms for s in samples])
    models = np.array([s.piece.model for s in samples])
    best: tuple[float, float, CalibrationModel, float, np.ndarray, np.ndarray] | None = None
    for c in ([cache_mb] if cache_mb is not None else CACHE_MB_GRID):
        cm = CalibrationModel(groups, c, nchwc_block=block)
        prior = cm.prior(device)
        rows = np.array([cm.row(s.piece) for s in samples])
        for pw in ([prior_weight] if prior_weight is not None else PRIOR_WEIGHT_GRID):
            err, med = _cv_error(rows, y, models, prior, pw)
            if best is None or err < best[0]:
                best = (err, med, cm, pw, rows, prior)
    assert best is not None, "CACHE_MB_GRID and PRIOR_WEIGHT_GRID are not empty"
    cv_err, cv_med, cm, pw, rows, prior = best
    scale = _prior_scale(rows, y, prior)
    x = _solve(rows, y, prior * scale, pw)
    k = len(cm.groups)
    rel = np.abs(rows @ x - y) / y
    return Calibration(
        device=device.name,
        ms_per_gflop={g: float(x[i]) for i, g in enumerate(cm.groups)},
        ms_per_mb={g: float(x[k + i]) for i, g in enumerate(cm.groups)},
        cache_mb=cm.cache_mb, ms_per_dram_mb=float(x[2 * k]),
        class_overhead_us={c: float(x[2 * k + 1 + i] * 1e3) for i, c in enumerate(cm.classes)},
        op_overhead_us=float(np.median(x[2 * k + 1: 2 * k + 1 + len(cm.classes)]) * 1e3),
        io_overhead_us=float(x[2 * k + 1 + len(cm.classes)] * 1e3),
        ms_per_output_mb=float(x[2 * k + 2 + len(cm.classes)]),
        ms_per_input_mb=float(x[2 * k + 3 + len(cm.classes)]),
        run_overhead_us=float(x[2 * k + 4 + len(cm.classes)] * 1e3),
        fused_epilogues_free=True,
        threads=threads, precision=precision, backend=backend,
        measured_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        host=f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        cpu_key=cpu.key, cpu=cpu.label, nchwc_block=block,
        models=tuple(sorted({s.piece.model for s in samples})),
        fit={"samples": len(samples), "min_ops": min_ops, "prior_weight": pw, "prior_scale": scale,
             "cv_clipped_mean_abs_rel_error": cv_err, "cv_median_abs_rel_error": cv_med,
             "train_within_10pct": float(np.mean(rel <= 0.10)), "train_within_25pct": float(np.mean(rel <= 0.25)),
             "train_median_abs_rel_error": float(np.median(rel))},
    )


# ----------------------------------------------------------------------------- measuring
# Synthetic micro-benchmarks (model name SYNTHETIC_MODEL): tiny graphs that pin down the fixed costs
# real pieces mix together: the run overhead, per input / output tensor, per element-wise and
# shape-only operator at tensor sizes from 64 B (pure dispatch) to 1 MB (memory-bound). Without
# them the fit attributes L1-resident ops' cache speed to a per-op overhead 3-5x too high and
# over-predicts pieces of a few microseconds (a transformer block's attention at 16 us).
# They are always in the training set and never a held-out model.
SYNTHETIC_MODEL = "synthetic"
SYNTHETIC_SIZES: tuple[int, ...] = (16, 2048, 32768, 262144)                 # fp32 elements
SYNTHETIC_IO: tuple[tuple[int, int], ...] = ((1, 1), (3, 1), (1, 3))           # (inputs, outputs)
SYNTHETIC_CHAINS: tuple[tuple[str, ...], ...] = ((), ("Add",) * 4, ("Relu",) * 4, ("Mul", "Add") * 4,
                                                 ("Reshape",) * 4, ("Transpose",) * 2)
SYNTHETIC_OPSET = 17


def _micro_model(n_in: int, n_out: int, chain: Sequence[str], size: int, path: Path) -> Path:
    """A chain of `chain` ops over [1, size] fp32 tensors with n_in inputs and n_out outputs."""
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, size]) for i in range(n_in)]
    nodes, inits, cur = [], [], "x0"
    for i, op in enumerate(chain):
        if op in ("Add", "Mul"):
            nodes.append(helper.make_node(op, [cur, f"x{(i + 1) % n_in}"], [f"a{i}"]))
        elif op == "Reshape":
            inits.append(helper.make_tensor(f"s{i}", TensorProto.INT64, [2], [1, size]))
            nodes.append(helper.make_node(op, [cur, f"s{i}"], [f"a{i}"]))
        elif op == "Transpose":   # a transpose and back
            nodes.append(helper.make_node(op, [cur], [f"t{i}"], perm=[1, 0]))
            nodes.append(helper.make_node(op, [f"t{i}"], [f"a{i}"], perm=[1, 0]))
        else:
            nodes.append(helper.make_node(op, [cur], [f"a{i}"]))
        cur = f"a{i}"
    outs = []
    for j in range(n_out):
        nodes.append(helper.make_node("Relu" if j else "Sigmoid", [cur], [f"y{j}"]))
        outs.append(helper.make_tensor_value_info(f"y{j}", TensorProto.FLOAT, [1, size]))
    graph = helper.make_graph(nodes, "micro", ins, outs, initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", SYNTHETIC_OPSET)]), path)
    return path


def synthetic_pieces(work_dir: str | Path) -> list[Piece]:
    """The micro-benchmark graphs (SYNTHETIC_SIZES x SYNTHETIC_CHAINS, I/O counts on the Add chain) as pieces."""
    from tierplan.devices.pieces import piece_from_onnx

    out_dir = Path(work_dir) / SYNTHETIC_MODEL
    out_dir.mkdir(parents=True, exist_ok=True)
    pieces: list[Piece] = []
    for size in SYNTHETIC_SIZES:
        for n_in, n_out in SYNTHETIC_IO:
            for chain in SYNTHETIC_CHAINS:
                if (n_in, n_out) != (1, 1) and chain not in ((), ("Add",) * 4):
                    continue
                k = len(pieces)
                path = _micro_model(n_in, n_out, chain, size, out_dir / f"micro{k}.onnx")
                pieces.append(piece_from_onnx(path, f"{SYNTHETIC_MODEL}/p{k}", model=SYNTHETIC_MODEL, index=k))
    return pieces


def model_pieces(name: str, path: Path, dims: Mapping[str, int], work_dir: Path, max_pieces: int) -> list[Piece]:
    """The model cut by the partitioner (partition.api.partition_model, as the planner sees it), or by
    devices.pieces.slice_model when the partitioner refuses the model; ids are `<name>/p<k>`."""
    from tierplan.devices.pieces import slice_model

    try:
        from tierplan.partition.api import partition_model

        res = partition_model(path, max_pieces, out_dir=work_dir / name, dims=dims or None, model_name=name,
                              use_cache=False)
        pieces = [p for p in res.pieces if p.ops and p.file]
        if pieces:
            return pieces
    except (ImportError, InputError, ValueError, KeyError):
        pass
    return [_renamed(p, name) for p in slice_model(path, work_dir / f"{name}-sliced", max_pieces, dims=dims)]


def collect_samples(models: Iterable[tuple[str, Path, Mapping[str, int]]], work_dir: str | Path, *,
                    max_pieces: int = 12, threads: int = 1, runs: int = 15, min_time_s: float = 0.3,
                    include_whole: bool = True, passes: int = 1, synthetic: bool = True,
                    progress: Callable[[str], None] | None = None) -> list[Sample]:
    """Cut each model into pieces, measure every piece (and the whole model) with onnxruntime.

    With one thread the figure is the median CPU time of the run (immune to other processes taking
    the core on a shared machine, see devices.profile.time_runs); with more, the median wall time.

    With `synthetic`, the micro-benchmarks (synthetic_pieces) are measured too.

    With passes > 1 every file is measured again after all others were (a second, independent
    median: `Sample.repeat_ms`), which shows how noisy this machine is right now.
    """
    from tierplan.devices.pieces import piece_from_onnx
    from tierplan.devices.profile import measure_piece

    work_dir = Path(work_dir)
    pieces: list[Piece] = []
    for name, path, dims in models:
        if max_pieces > 1:
            pieces += model_pieces(name, path, dims, work_dir, max_pieces)
        if include_whole:
            pieces.append(piece_from_onnx(path, f"{name}/whole", model=name, dims=dims or None))
    if synthetic:
        pieces += synthetic_pieces(work_dir)
    medians: list[list[float]] = [[] for _ in pieces]
    for k in range(max(1, passes)):
        for i, p in enumerate(pieces):
            m = measure_piece(p, threads=threads, runs=runs, min_time_s=min_time_s)
            medians[i].append(m.cpu_median_ms if threads == 1 else m.median_ms)
            if progress:
                progress(f"{p.id}: {medians[i][-1]:.3f} ms {'CPU' if threads == 1 else 'wall'} ({len(p.ops)} ops)"
                         + (f", pass {k + 1}" if passes > 1 else ""))
    return [Sample(p, ms[0], ms[1] if len(ms) > 1 else None) for p, ms in zip(pieces, medians)]


def _renamed(p: Piece, model: str) -> Piece:
    from dataclasses import replace
    return replace(p, id=f"{model}/p{p.index}", model=model)


def run_calibration(out: str | Path | None = None, device_name: str = "local", threads: int = 1,
                    max_pieces: int = 12, runs: int = 15, work_dir: str | Path | None = None,
                    models: Sequence[str] | None = None,
                    progress: Callable[[str], None] | None = None) -> tuple[Calibration, list[Sample], Path]:
    """Measure the default models (or those named) on this machine, fit, save (default: the user's
    cache, devices.calibstore.default_path: keyed by this CPU for `local`)."""
    import tempfile

    from tierplan.devices.catalog import get_device, suggest

    device = get_device(device_name)
    zoo_dir = Path(work_dir or tempfile.gettempdir()) / "tierplan-zoo"
    available = default_models(zoo_dir)
    if models:
        names = [m[0] for m in available]
        for m in models:
            if m not in names:
                raise InputError(f"--model: unknown calibration model {m!r}{suggest(m, names)}; "
                                 f"choose from {', '.join(names)}")
        available = [m for m in available if m[0] in models]
    if not available:
        raise InputError("no calibration models found: install onnx, rapidocr-onnxruntime or silero-vad")
    with tempfile.TemporaryDirectory() as tmp:
        samples = collect_samples(available, work_dir or tmp, max_pieces=max_pieces, threads=threads, runs=runs,
                                  progress=progress)
    cal = fit_calibration(samples, device, threads=threads)
    from tierplan.devices.calibstore import default_path

    path = cal.save(Path(out) if out else default_path(device.name))
    return cal, samples, path


# ----------------------------------------------------------------------------- first run on a new host
# The quick calibration `tierplan run` / `plan` / `estimate` make when no calibration fits this CPU:
# the pieces about to run first, the micro-benchmarks, then calibration models in QUICK_MODELS order
# until QUICK_BUDGET_S of wall time has gone (the fit follows, ~5 s). On this 2-vCPU host at load 2
# the whole set (232 pieces, runs=7, 0.05 s each) took 24 s to measure and 5 s to fit, so the budget
# keeps most of it on a quiet machine and the small, typical models on a loaded one.
QUICK_BUDGET_S = 30.0
QUICK_RUNS = 7
QUICK_MIN_TIME_S = 0.05
QUICK_MAX_PIECES = 12
QUICK_RUN_MIN_TIME_S = 0.2   # the pieces about to run are timed longer: their figure is used as it is
QUICK_SEQUENCE_S = 1.0       # ... and then one after another, as a site runs them (devices.profile.measure_in_sequence)
# small and typical first (depthwise mobile nets, OCR, VAD), big classic CNNs last
QUICK_MODELS: tuple[str, ...] = ("ppocr_cls", "squeezenet", "shufflenet", "mobilenet_v3_small", "silero_vad",
                                 "mobilenet_v2", "mobilenet_v2_w095", "mobilenet_v2_w130", "ppocr_rec", "tiny_detector",
                                 "transformer_encoder", "ppocr_det",
                                 "inception_v1", "ssdlite_mnv3", "resnet50", "densenet121", "inception_v2",
                                 "alexnet", "zfnet512")


def quick_calibration(pieces: Sequence[Piece] = (), *, device_name: str = "local", budget_s: float = QUICK_BUDGET_S,
                      runs: int = QUICK_RUNS, min_time_s: float = QUICK_MIN_TIME_S,
                      work_dir: str | Path | None = None,
                      step: Callable[[int, int, str], None] | None = None) -> tuple[Calibration, list[Sample]]:
    """A calibration of this machine within about `budget_s` (+ the fit): `pieces` (those about to run;
    any that cannot be measured are skipped; their measured times are also kept in
    `Calibration.piece_ms` by file hash, as the fit leaves some 25-30% off (PP-OCR's detector pieces
    among 259 samples), so the cost model gives exactly these files their measurement), the
    micro-benchmarks, then QUICK_MODELS until the budget is spent. One intra-op thread, CPU-time
    medians, as run_calibration. `step(done, total, label)`
    reports progress."""
    import tempfile
    import time as _time

    from tierplan.devices.catalog import get_device
    from tierplan.devices.profile import measure_piece

    device = get_device(device_name)
    t0 = _time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tierplan-cal-") as tmp:
        work = Path(work_dir or tmp)
        found = {m[0]: m for m in default_models(work / "zoo")}
        models = [found[n] for n in QUICK_MODELS if n in found]
        total = len(models) + 2
        if step:
            step(0, total, "pieces about to run")
        samples: list[Sample] = []
        for p in pieces:
            try:
                m = measure_piece(p, runs=runs, min_time_s=max(min_time_s, QUICK_RUN_MIN_TIME_S))
            except Exception:  # a piece onnxruntime cannot run alone (symbolic dims, .tflite): not a sample
                continue
            samples.append(Sample(p, m.cpu_median_ms))
        n_run = len(samples)
        if step:
            step(1, total, "micro-benchmarks")
        samples += collect_samples([], work, runs=runs, min_time_s=min_time_s)
        for k, model in enumerate(models):
            if _time.monotonic() - t0 > budget_s:
                break
            if step:
                step(2 + k, total, model[0])
            try:
                samples += collect_samples([model], work, max_pieces=QUICK_MAX_PIECES, runs=runs,
                                           min_time_s=min_time_s, synthetic=False)
            except InputError:
                continue
        if step:
            step(total, total, "fitting")
    cal = fit_calibration(samples, device)
    from dataclasses import replace

    from tierplan.devices.calibstore import file_sha256
    from tierplan.devices.profile import measure_in_sequence
    # the figure kept for a piece about to run is its CPU time run one after another with the others, as
    # a site runs them (caches as its predecessors leave them); its time alone is a sample of the fit
    seq = measure_in_sequence([s.piece for s in samples[:n_run]], runs=runs, min_time_s=QUICK_SEQUENCE_S)
    measured = {file_sha256(s.piece.file) if s.piece.file else "": seq.get(s.piece.id, s.measured_ms) for s in samples[:n_run]}
    return replace(cal, fit={**cal.fit, "quick": True, "wall_s": round(_time.monotonic() - t0, 1)},
                   piece_ms={k: v for k, v in measured.items() if k}), samples


def _with_pieces(cal: Calibration, pieces: Sequence[Piece], progress: bool) -> Calibration:
    """`cal` plus the measured times of the pieces about to run that it has not measured (a calibration
    made for another app predicts those by its fit alone, 25-45% off for small pieces here), timed as
    quick_calibration times them and kept: in the cache file, or in this process for --calibration."""
    from dataclasses import replace

    from tierplan.devices.calibstore import _OVERRIDES, file_sha256, local_calibration_path
    from tierplan.devices.profile import measure_in_sequence

    missing: dict[str, Piece] = {}
    for p in pieces:
        sha = file_sha256(p.file) if p.file else ""
        if sha and sha not in cal.piece_ms:
            missing.setdefault(sha, p)
    if not missing:
        return cal
    if progress:
        from tierplan.console import console
        console(stderr=True).print(f"measuring {len(missing)} pieces about to run that this CPU's calibration has "
                                   f"not timed (~{QUICK_SEQUENCE_S + 1:.0f} s, once)", highlight=False)
    # one after another with the others about to run, as a site runs them (and quick_calibration keeps them)
    seq = measure_in_sequence(list(pieces), runs=QUICK_RUNS, min_time_s=QUICK_SEQUENCE_S)
    measured = {sha: seq[p.id] for sha, p in missing.items() if p.id in seq}
    if not measured:
        return cal
    new = replace(cal, piece_ms={**cal.piece_ms, **measured})
    if _OVERRIDES.get(cal.device) is cal:
        _OVERRIDES[cal.device] = new
    else:
        new.save(local_calibration_path())
    return new


def ensure_local_calibration(pieces: Sequence[Piece] = (), *, progress: bool = True,
                             budget_s: float = QUICK_BUDGET_S) -> Calibration:
    """The calibration of `local` that applies here; when there is none (first use on this CPU), make a
    quick one (quick_calibration within `budget_s`), say so on stderr in one line with a progress bar,
    and cache it."""
    from tierplan.devices.calibstore import local_calibration_path, lookup
    from tierplan.devices.catalog import get_device
    device = get_device("local")
    cal = lookup(device)
    if cal is not None:
        return _with_pieces(cal, pieces, progress)
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from tierplan.console import console, progress as progress_bar

    path = local_calibration_path()
    what = f"first run on this CPU: calibrating (~{budget_s + 10:.0f} s, once)"
    if not progress:
        console(stderr=True).print(what, highlight=False)
    with progress_bar(progress, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[label]}"), TimeElapsedColumn()) as bar:
        task = bar.add_task(what, total=None, label="")

        def step(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, label=label)
        cal, samples = quick_calibration(pieces, step=step, budget_s=budget_s)
        bar.update(task, description=f"calibrated this CPU in {cal.fit['wall_s']:.0f} s ({len(samples)} pieces, "
                                     f"cached)", label="")
    cal.save(path)
    return cal
