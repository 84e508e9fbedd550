"""Op classes in the cost model: data movement and views share one calibrated rate, whatever their op type."""

from __future__ import annotations

import pytest

from devices.calibrate import Sample, fit_calibration
from devices.catalog import get_device
from devices.constants import SHARED_KEYS, op_class, op_keys
from devices.costmodel import CostModel
from partition.types import OpCost, Piece

CPU = get_device("mec-xeon")
# The "true" machine the synthetic measurements come from: per-op costs by class, ms.
CONV_MS_PER_GFLOP, COPY_MS_PER_MB, OP_US, RUN_US = 12.0, 0.05, 1.0, 4.0


def _true_ms(ops) -> float:
    ms = RUN_US / 1e3
    for o in ops:
        if op_class(o.op_type) == "conv":
            ms += CONV_MS_PER_GFLOP * o.flops / 1e9
        elif op_class(o.op_type) == "movement":
            ms += COPY_MS_PER_MB * (o.param_bytes + o.act_bytes) / 1e6
        ms += OP_US / 1e3
    return ms


def _piece(model: str, k: int, ops) -> Piece:
    return Piece(id=f"{model}/p{k}", model=model, index=k, nodes=tuple(o.name for o in ops), inputs=(), outputs=(),
                 flops=sum(o.flops for o in ops), param_bytes=sum(o.param_bytes for o in ops), ops=tuple(ops))


def _copy(op: str, mb: float) -> OpCost:
    return OpCost(f"{op}_{mb}", op, 0.0, 0, int(mb * 1e6))


def _conv(gflop: float) -> OpCost:
    return OpCost(f"conv_{gflop}", "Conv", gflop * 1e9, int(gflop * 4e6), int(gflop * 2e6))


@pytest.fixture(scope="module")
def calibration():
    """A calibration fitted on pieces whose only copies are Transposes and Concats (exact synthetic timings)."""
    samples = []
    for m, scale in enumerate((1.0, 1.7, 2.9, 4.3)):
        for k, (g, t_mb, c_mb) in enumerate(((0.01, 0.5, 0.2), (0.05, 2.0, 1.0), (0.002, 4.0, 3.0), (0.1, 0.1, 6.0))):
            ops = [_conv(g * scale), _copy("Transpose", t_mb * scale), _copy("Concat", c_mb * scale)]
            p = _piece(f"model{m}", k, ops)
            samples.append(Sample(p, _true_ms(ops)))
    return fit_calibration(samples, CPU)


def test_copy_ops_share_the_movement_key_and_views_the_view_key():
    """Transpose, Split, Slice, Concat, Gather key as `movement`; Reshape, Flatten, Squeeze as `view`; Resize keeps its own."""
    keys = op_keys(["Transpose", "Split", "Slice", "Concat", "Gather", "Reshape", "Flatten", "Squeeze", "Resize"])
    assert keys == ["movement"] * 5 + ["view"] * 3 + ["Resize"]
    assert op_class("movement") == "movement" and op_class("view") == "view"
    assert all(op_class(t) == c for t, c in SHARED_KEYS.items())


def test_transpose_feeding_matmul_stays_fused():
    """The shared key does not undo fusions: a Transpose feeding a MatMul is still absorbed into it."""
    assert op_keys(["Transpose", "MatMul", "Transpose"]) == ["Transpose~fused", "MatMul", "movement"]


@pytest.mark.parametrize("op", ["Slice", "Split", "Gather", "Pad"])
def test_a_copy_op_the_calibration_never_saw_costs_the_fitted_copy_rate(calibration, op):
    """A copy op type absent from calibration is priced by the copy rate fitted on the others (within 15%)."""
    ops = [_conv(0.02), _copy(op, 3.0)]
    predicted = CostModel(calibration).piece_ms(_piece("new", 0, ops), CPU)
    assert predicted == pytest.approx(_true_ms(ops), rel=0.15)


def test_shufflenet_v2_channel_split_as_split_or_slices_costs_alike(calibration, tmp_path):
    """ShuffleNetV2 with its channel split as one Split or as two Slices moves the same bytes: same price (3%)."""
    from devices.pieces import piece_from_onnx
    from partition import zoo

    cm = CostModel(calibration)
    ms = [cm.piece_ms(piece_from_onnx(zoo.save(zoo.shufflenet_v2(channel_split=s), tmp_path / f"{s}.onnx")), CPU)
          for s in ("Split", "Slice")]
    assert ms[1] == pytest.approx(ms[0], rel=0.03)
