"""Typed values that leave partition/: tensors, per-op costs and pieces (the planner's unit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["TensorInfo", "ConvShape", "OpCost", "Piece"]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor crossing a piece boundary, by its original ONNX name."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"
    nbytes: int


@dataclass(frozen=True)
class ConvShape:
    """The shape facts of a convolution that decide which kernel runs it (onnxruntime's NCHWc layout needs
    channel counts it can block; devices.constants.nchwc_runs): channels in and out, groups, kernel, strides."""

    in_channels: int
    out_channels: int
    groups: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()


@dataclass(frozen=True)
class OpCost:
    """What the cost model needs of one operator: its type, FLOPs and the bytes it touches."""

    name: str
    op_type: str
    flops: float        # multiply-add counts 2
    param_bytes: int    # weights read
    act_bytes: int      # activations read + written
    conv: ConvShape | None = None   # a convolution's channels, groups and kernel (None: not a Conv, or unknown)


@dataclass(frozen=True)
class Piece:
    """A connected set of operators of one model that runs as one standalone ONNX file.

    `id` is "<model>/p<index>"; pieces of a model are numbered in a topological order.
    `measured_ms` holds latencies measured per device type (profile tables, calibration runs);
    when a device is listed there the cost model uses it instead of its prediction.
    """

    id: str
    model: str
    index: int
    nodes: tuple[str, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    flops: float
    param_bytes: int
    ops: tuple[OpCost, ...] = ()
    file: str | None = None
    measured_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def out_bytes(self) -> int:
        return sum(t.nbytes for t in self.outputs)

    @property
    def in_bytes(self) -> int:
        return sum(t.nbytes for t in self.inputs)
