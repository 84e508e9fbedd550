"""Cost model: latency of a piece on a device, transfer time over a link, money and energy per request.

Latency of one operator o of type t on device d at batch b and precision p (uncalibrated roofline):

    compute_ms(o) = b * flops(o) / (peak_gflops[d, p] * 1e9 * eff[kind(d), t] * scale[p]) * 1e3
    memory_ms(o)  = (param_bytes(o) + b * act_bytes(o)) * bytes_scale[p] / (bandwidth[d] * 1e9 * bw_eff[kind(d)]) * 1e3
    op_ms(o)      = max(compute_ms(o), memory_ms(o)) + dispatch_overhead_us[d] / 1e3

and a piece costs the sum over its operators. A calibrated device (its file in the user's cache, keyed
by CPU for `local`, see devices/calibstore.py; written by `tierplan calibrate`) replaces eff and the
overheads with fitted per-op-type coefficients:

    op_ms(o) = a[t] * b * GFLOP(o) + m[t] * MB(o) + d * max(0, MB(o) - cache_mb) + op_overhead_us[class] / 1e3

where t is the op's key (devices.constants.op_keys: `Conv@dw` for depthwise-like convolutions, `Conv@gemv`
for convolutions on a 1x1 map, `Conv@unblocked` / `Conv@dw-unblocked` for convolutions onnxruntime cannot run
in its NCHWc layout on the calibrated CPU (channels it cannot block, Calibration.nchwc_block), one `movement` key for every copy (Transpose, Split, Slice, Concat, ...) and
one `view` key for Reshape-like views) and an epilogue fused into the Conv/Gemm/MatMul before it (`Relu~fused`)
costs only the fused-class overhead;

    piece_ms = sum of op_ms + run_overhead_us / 1e3 + io_overhead_us / 1e3 * (inputs + outputs)
               + ms_per_output_mb * b * output MB + ms_per_input_mb * b * input MB

(a, m >= 0 fitted by non-negative least squares on measured runs; see devices/calibrate.py).
A piece carrying `measured_ms[device.name]`, or whose file the device's calibration measured
(`Calibration.piece_ms`, by file hash), uses that measurement instead (scaled by the predicted batch
ratio when batch > 1).

Transfer of n bytes over a link in one direction: RTT/2 + 8 n / (bandwidth (1 - loss)) + n / SERIALIZE_GBPS
(lost packets are sent again, so the payload moves at the goodput; runtime.links emulates the same).
Money: instance $/h x time, egress $/GB x bytes (decimal GB). Energy: active power x time, plus
radio nJ/byte x bytes sent on battery devices.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from tierplan.devices.constants import (
    BANDWIDTH_EFFICIENCY, BYTES_PER_GB, DEFAULT_EFFICIENCY, DEFAULT_OP_EFFICIENCY, MIN_TRANSFORM_SCALE,
    MS_PER_HOUR, PRECISION_BYTES_SCALE, PRECISION_EFFICIENCY_SCALE, REFERENCE_EDGE_CPU_GFLOPS, SERIALIZE_GBPS,
    blocked_key, op_class, op_keys,
)
from tierplan.partition.types import OpCost, Piece
from tierplan.errors import InputError
from tierplan.spec import DeviceSpec, LinkSpec, TransformSpec

__all__ = ["OTHER_OP", "CALIBRATION_FORMAT", "Calibration", "CostModel", "device_kind"]

OTHER_OP = "other"   # calibration bucket for op types seen too rarely to get their own coefficients
# Version of the calibration file's op keys and terms: a calibration recording an older one was fitted with
# other keys and is refused as stale (devices.calibstore.checked), so the host recalibrates.
# 1: until the convs onnxruntime cannot block had their own keys (no `format_version` field); 2: `nchwc_block`
# and the `Conv@unblocked` / `Conv@dw-unblocked` keys (devices.constants.nchwc_runs).
CALIBRATION_FORMAT = 2


def device_kind(device: DeviceSpec) -> str:
    """'gpu' for CUDA targets, else 'cpu': which default efficiency table applies."""
    return "gpu" if str(device.tvm_target.get("kind", "llvm")) == "cuda" else "cpu"


@dataclass(frozen=True)
class Calibration:
    """Fitted cost coefficients of one device (what `tierplan calibrate` writes as JSON).

    ms_per_gflop[op_type]: compute term; ms_per_mb[op_type]: memory term (MB = 1e6 bytes);
    op_overhead_us: per operator (class_overhead_us[op class] when fitted per class, see
    devices.constants.op_class); run_overhead_us: per piece run (session call, input copies);
    ms_per_dram_mb: extra cost per MB an operator touches beyond `cache_mb` (its working set spills
    out of the last-level cache and streams from DRAM, e.g. the 150 MB weights of AlexNet's fc6);
    io_overhead_us per input or output tensor of a piece run, ms_per_output_mb / ms_per_input_mb per MB
    handed out / in (copies and layout reorders at the piece boundary). With fused_epilogues_free, an
    epilogue fused into its head (op key `<op>~fused`, devices.constants.op_keys) costs only the `fused`
    class overhead: it runs inside the head's kernel, with no memory pass of its own.
    """

    device: str
    ms_per_gflop: Mapping[str, float]
    ms_per_mb: Mapping[str, float]
    op_overhead_us: float
    run_overhead_us: float
    class_overhead_us: Mapping[str, float] = field(default_factory=dict)
    cache_mb: float = 0.0
    ms_per_dram_mb: float = 0.0
    io_overhead_us: float = 0.0
    ms_per_output_mb: float = 0.0
    ms_per_input_mb: float = 0.0
    fused_epilogues_free: bool = False
    threads: int = 1
    precision: str = "fp32"
    backend: str = "onnxruntime"
    measured_at: str = ""
    host: str = ""
    cpu_key: str = ""        # devices.host.cpu_identity().key of the CPU it was measured on
    cpu: str = ""            # that CPU, for people
    models: tuple[str, ...] = ()
    fit: Mapping[str, Any] = field(default_factory=dict)
    # measured ms (one run, batch 1, `precision`) of piece files by their sha256: the pieces a quick
    # calibration measured because they were about to run (devices.calibrate.quick_calibration)
    piece_ms: Mapping[str, float] = field(default_factory=dict)
    # MLAS NCHWc block of the CPU measured (devices.host.nchwc_block): which convs got the unblocked keys
    nchwc_block: int = 0
    format_version: int = CALIBRATION_FORMAT

    def efficiency(self, device: DeviceSpec) -> dict[str, float]:
        """Fitted compute coefficients as a share of the device's fp32 peak, per op type."""
        peak = device.peak_gflops["fp32"]
        return {t: (1e3 / (a * peak) if a > 0 else float("inf")) for t, a in self.ms_per_gflop.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ms_per_gflop"] = dict(self.ms_per_gflop)
        d["ms_per_mb"] = dict(self.ms_per_mb)
        d["class_overhead_us"] = dict(self.class_overhead_us)
        d["models"] = list(self.models)
        d["fit"] = dict(self.fit)
        d["piece_ms"] = dict(self.piece_ms)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["models"] = tuple(known.get("models", ()))
        known.setdefault("format_version", 1)   # files written before the field existed
        return cls(**known)

    def save(self, path: str | Path) -> Path:
        """Write as JSON (atomically: a temporary file renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise InputError(f"{path}: not a readable calibration file ({e.__class__.__name__}: {e}). "
                             f"To fix: rerun `tierplan calibrate --out {path}`")


class CostModel:
    """Predicts latency, transfer time, money and energy; see the module docstring for the formulas.

    `calibration`: None (the one that applies here: `--calibration FILE`, else the user's cache,
    devices.calibstore.lookup), a Calibration, a mapping device name -> Calibration, or False (never
    calibrate: the datasheet roofline only). A calibration of `local` made on another CPU is refused
    with a StaleCalibrationWarning. `calibration_dir` replaces the cache directory.
    """

    def __init__(self, calibration: Calibration | Mapping[str, Calibration] | bool | None = None,
                 calibration_dir: str | Path | None = None):
        from tierplan.devices.calibstore import checked

        self._auto = calibration is None
        self._dir = Path(calibration_dir) if calibration_dir is not None else None
        self._cal: dict[str, Calibration | None] = {}
        if isinstance(calibration, Calibration):
            self._cal[calibration.device] = checked(calibration)
        elif isinstance(calibration, Mapping):
            self._cal.update({k: checked(v) if isinstance(v, Calibration) else v for k, v in calibration.items()})

    # ------------------------------------------------------------------ calibration lookup
    def calibration_for(self, device: DeviceSpec) -> Calibration | None:
        """The calibration used for `device`, or None (datasheet roofline)."""
        if device.name not in self._cal:
            from tierplan.devices.calibstore import lookup
            self._cal[device.name] = lookup(device, self._dir) if self._auto else None
        return self._cal[device.name]

    # ------------------------------------------------------------------ compute
    def op_ms(self, op: OpCost, device: DeviceSpec, batch: int = 1, precision: str = "fp32",
              key: str | None = None) -> float:
        """Predicted latency of one operator, milliseconds (includes its dispatch overhead).

        `key` is its calibration key (devices.constants.op_keys: e.g. `Relu~fused` after a Conv).
        """
        cal = self.calibration_for(device)
        if cal is not None:
            return self._op_ms_calibrated(op, device, cal, batch, precision,
                                          key or op_keys([op], cal.nchwc_block)[0])
        return self._op_ms_roofline(op, device, batch, precision)

    def piece_ms(self, piece: Piece, device: DeviceSpec, batch: int = 1, precision: str = "fp32") -> float:
        """Predicted (or measured) latency of one run of `piece` on `device`, milliseconds."""
        _check_batch_precision(batch, precision)
        measured = piece.measured_ms.get(device.name) if piece.measured_ms else None
        cal = self.calibration_for(device) if measured is None else None
        if cal is not None and cal.piece_ms and piece.file and precision == cal.precision:
            from tierplan.devices.calibstore import file_sha256
            measured = cal.piece_ms.get(file_sha256(piece.file))   # this very file, measured by the calibration
        if measured is not None:
            if batch == 1:
                return float(measured)
            return float(measured) * self._predict_piece(piece, device, batch, precision) / \
                max(self._predict_piece(piece, device, 1, precision), 1e-12)
        return self._predict_piece(piece, device, batch, precision)

    def ops_ms(self, ops: Iterable[OpCost], device: DeviceSpec, batch: int = 1, precision: str = "fp32") -> float:
        """Latency of a list of operators run as one piece (one run overhead), milliseconds."""
        _check_batch_precision(batch, precision)
        cal = self.calibration_for(device)
        ops = list(ops)
        keys = op_keys(ops, cal.nchwc_block if cal is not None else 0)
        total = sum(self.op_ms(o, device, batch, precision, k) for o, k in zip(ops, keys))
        return total + (cal.run_overhead_us / 1e3 if cal is not None else 0.0)

    def _predict_piece(self, piece: Piece, device: DeviceSpec, batch: int, precision: str) -> float:
        ops = piece.ops or (_lumped_op(piece),)
        total = self.ops_ms(ops, device, batch, precision)
        cal = self.calibration_for(device)
        if cal is not None:  # handing tensors in and out of a piece run
            total += (cal.io_overhead_us * (len(piece.inputs) + len(piece.outputs)) / 1e3
                      + cal.ms_per_output_mb * batch * piece.out_bytes / 1e6
                      + cal.ms_per_input_mb * batch * piece.in_bytes / 1e6)
        if not piece.ops and len(piece.nodes) > 1:  # a lumped piece still pays one dispatch per node
            total += (len(piece.nodes) - 1) * self._overhead_ms(device)
        return total

    def _overhead_ms(self, device: DeviceSpec) -> float:
        cal = self.calibration_for(device)
        return (cal.op_overhead_us if cal is not None else device.dispatch_overhead_us) / 1e3

    @staticmethod
    def _peak(device: DeviceSpec, precision: str) -> tuple[float, float]:
        """(peak GFLOP/s used, efficiency scale) at `precision`; falls back to fp32 when the device lacks it."""
        if precision in device.peak_gflops:
            return device.peak_gflops[precision], PRECISION_EFFICIENCY_SCALE[precision]
        return device.peak_gflops["fp32"], 1.0

    def _op_ms_roofline(self, op: OpCost, device: DeviceSpec, batch: int, precision: str) -> float:
        kind = device_kind(device)
        peak, scale = self._peak(device, precision)
        eff = DEFAULT_EFFICIENCY[kind].get(op.op_type, DEFAULT_OP_EFFICIENCY[kind]) * scale
        compute_ms = batch * op.flops / (peak * 1e9 * eff) * 1e3
        nbytes = (op.param_bytes + batch * op.act_bytes) * PRECISION_BYTES_SCALE[precision]
        memory_ms = nbytes / (device.memory_bandwidth_gbps * 1e9 * BANDWIDTH_EFFICIENCY[kind]) * 1e3
        return max(compute_ms, memory_ms) + device.dispatch_overhead_us / 1e3

    def _op_ms_calibrated(self, op: OpCost, device: DeviceSpec, cal: Calibration, batch: int,
                          precision: str, key: str) -> float:
        if cal.fused_epilogues_free and op_class(key) == "fused":
            return cal.class_overhead_us.get("fused", cal.op_overhead_us) / 1e3
        cls = op_class(op.op_type)
        t = next((g for g in (key, blocked_key(key), op.op_type, f"{OTHER_OP}:{cls}", OTHER_OP)
                  if g in cal.ms_per_gflop), None)
        cls = op_class(key)   # a fused epilogue pays the fused class's overhead
        if t is None:
            return self._op_ms_roofline(op, device, batch, precision)
        a, m = cal.ms_per_gflop[t], cal.ms_per_mb.get(t, 0.0)
        if precision != cal.precision:  # rescale by the datasheet ratio between the precisions
            p_new, s_new = self._peak(device, precision)
            p_cal, s_cal = self._peak(device, cal.precision)
            a *= (p_cal * s_cal) / (p_new * s_new)
            m *= PRECISION_BYTES_SCALE[precision] / PRECISION_BYTES_SCALE[cal.precision]
        nbytes = op.param_bytes + batch * op.act_bytes
        spill_mb = max(0.0, nbytes * PRECISION_BYTES_SCALE[precision] / 1e6 - cal.cache_mb)
        return (a * batch * op.flops / 1e9 + m * nbytes / 1e6 + cal.ms_per_dram_mb * spill_mb
                + cal.class_overhead_us.get(cls, cal.op_overhead_us) / 1e3)

    def transform_ms(self, spec: TransformSpec, device: DeviceSpec) -> float:
        """Host-side transform time: the declared edge-CPU cost scaled by the device's CPU speed."""
        if device_kind(device) == "gpu":  # GPU devices run transforms on a server-class host CPU
            scale = MIN_TRANSFORM_SCALE
        else:
            scale = min(1.0, max(MIN_TRANSFORM_SCALE, REFERENCE_EDGE_CPU_GFLOPS / device.peak_gflops["fp32"]))
        return spec.cost_ms * scale

    # ------------------------------------------------------------------ network, money, energy
    @staticmethod
    def transfer_ms(nbytes: float, link: LinkSpec, direction: str = "up") -> float:
        """One-way time to move `nbytes` over `link`: RTT/2 + bytes/goodput + serialisation, ms.

        Goodput is the link rate less the packets lost and resent: bandwidth x (1 - loss_rate).
        """
        if direction not in ("up", "down"):
            raise InputError(f"transfer direction must be 'up' or 'down', got {direction!r}")
        if nbytes < 0:
            raise InputError(f"transfer size must be >= 0 bytes, got {nbytes}")
        mbps = link.uplink_mbps if direction == "up" else link.downlink_mbps
        wire_ms = nbytes * 8 / (mbps * 1e6 * (1.0 - link.loss_rate)) * 1e3
        serialise_ms = nbytes / (SERIALIZE_GBPS * 1e9) * 1e3
        return link.rtt_ms / 2 + wire_ms + serialise_ms

    @staticmethod
    def egress_usd(nbytes: float, link: LinkSpec) -> float:
        """Egress charge of `nbytes` leaving the upper site over `link` ($/GB, decimal GB)."""
        return nbytes / BYTES_PER_GB * link.egress_usd_per_gb

    @staticmethod
    def compute_usd(ms: float, device: DeviceSpec) -> float:
        """Instance cost of `ms` of exclusive compute on `device` ($/h x time)."""
        return device.cost_per_hour_usd * ms / MS_PER_HOUR

    @staticmethod
    def hourly_usd(device: DeviceSpec, instances: int = 1) -> float:
        """Rent of `instances` instances of `device` for one hour ($/h; 0 for owned devices)."""
        return device.cost_per_hour_usd * instances

    @staticmethod
    def compute_energy_j(ms: float, device: DeviceSpec) -> float:
        """Energy of `ms` of inference on `device`: active power x time, joules."""
        return device.power_active_w * ms / 1e3

    @staticmethod
    def radio_energy_j(nbytes: float, device: DeviceSpec) -> float:
        """Radio energy to send `nbytes` from `device`: nJ/byte x bytes, joules (0 on mains power)."""
        return nbytes * device.radio_nj_per_byte * 1e-9


def _lumped_op(piece: Piece) -> OpCost:
    """A piece without per-op detail (profile tables) as one operator of unknown type."""
    return OpCost(name=piece.id, op_type=OTHER_OP, flops=piece.flops, param_bytes=piece.param_bytes,
                  act_bytes=piece.in_bytes + piece.out_bytes)


def _check_batch_precision(batch: int, precision: str) -> None:
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if precision not in PRECISION_BYTES_SCALE:
        raise InputError(f"precision must be one of fp32, fp16, int8, got {precision!r}")
