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

from pathlib import Path
from typing import Iterable, Mapping

from tierplan.devices.constants import (
    BANDWIDTH_EFFICIENCY, BYTES_PER_GB, DEFAULT_EFFICIENCY, DEFAULT_OP_EFFICIENCY, MIN_TRANSFORM_SCALE,
    MS_PER_HOUR, PRECISION_BYTES_SCALE, PRECISION_EFFICIENCY_SCALE, REFERENCE_EDGE_CPU_GFLOPS, SERIALIZE_GBPS,
    blocked_key, op_class, op_keys,
)
from tierplan.devices.calibration import CALIBRATION_FORMAT, Calibration
from tierplan.partition.types import OpCost, Piece
from tierplan.errors import InputError
from tierplan.spec import DeviceSpec, LinkSpec, TransformSpec

__all__ = ["OTHER_OP", "CALIBRATION_FORMAT", "Calibration", "CostModel", "device_kind"]

OTHER_OP = "other"   # calibration bucket for op types seen too rarely to get their own coefficients
def device_kind(device: DeviceSpec) -> str:
    """'gpu' for CUDA targets, else 'cpu': which default efficiency table applies."""
    return "gpu" if str(device.tvm_target.get("kind", "llvm")) == "cuda" else "cpu"


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
