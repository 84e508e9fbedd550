"""A device's fitted cost coefficients (`Calibration`), as `tierplan calibrate` writes them to JSON.

Its own module so that the cost model (which reads calibrations) and the per-host store (which checks
and files them, devices.calibstore) both import it without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tierplan.errors import InputError
from tierplan.spec import DeviceSpec

__all__ = ["CALIBRATION_FORMAT", "Calibration"]

# Version of the calibration file's op keys and terms: a calibration recording an older one was fitted with
# other keys and is refused as stale (devices.calibstore.checked), so the host recalibrates.
# 1: until the convs onnxruntime cannot block had their own keys (no `format_version` field); 2: `nchwc_block`
# and the `Conv@unblocked` / `Conv@dw-unblocked` keys (devices.constants.nchwc_runs).
CALIBRATION_FORMAT = 2


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
