"""Op keys in the cost model: data movement and views share one calibrated rate, convs onnxruntime cannot block have their own."""

from __future__ import annotations

import pytest

from tierplan.devices.calibrate import Sample, fit_calibration
from tierplan.devices.catalog import get_device
from tierplan.devices.constants import SHARED_KEYS, op_class, op_keys
from tierplan.devices.costmodel import CostModel
from tierplan.partition.types import OpCost, Piece

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
    from tierplan.devices.pieces import piece_from_onnx
    from tierplan.partition import zoo

    cm = CostModel(calibration)
    ms = [cm.piece_ms(piece_from_onnx(zoo.save(zoo.shufflenet_v2(channel_split=s), tmp_path / f"{s}.onnx")), CPU)
          for s in ("Split", "Slice")]
    assert ms[1] == pytest.approx(ms[0], rel=0.03)


# ----------------------------------------------------------------------------- convs onnxruntime cannot block
def _dw(channels: int, hw: int = 28) -> OpCost:
    """A 3x3 depthwise conv on `channels` channels at hw x hw, stride 1."""
    from tierplan.partition.types import ConvShape

    return OpCost(f"dw{channels}", "Conv", 2.0 * 9 * channels * hw * hw, channels * 9 * 4, 2 * channels * hw * hw * 4,
                  conv=ConvShape(channels, channels, channels, (3, 3), (1, 1)))


def _dense(cin: int, cout: int, hw: int = 28, k: int = 3) -> OpCost:
    """A plain k x k conv from `cin` to `cout` channels at hw x hw."""
    from tierplan.partition.types import ConvShape

    return OpCost(f"conv{cin}_{cout}", "Conv", 2.0 * cin * cout * k * k * hw * hw, cin * cout * k * k * 4,
                  (cin + cout) * hw * hw * 4, conv=ConvShape(cin, cout, 1, (k, k), (1, 1)))


@pytest.mark.parametrize("block", [8, 16])
def test_convs_onnxruntime_cannot_block_get_the_unblocked_keys(block):
    """On an NCHWc host (block 8 or 16) a depthwise conv on 58 channels and a 3x3 conv reading 58 channels key as
    `Conv@dw-unblocked` / `Conv@unblocked`; on 60 or 64 channels, reading 3 (< block) or 1x1, they keep `Conv@dw` /
    `Conv`."""
    assert op_keys([_dw(58), _dense(58, 64)], block) == ["Conv@dw-unblocked", "Conv@unblocked"]
    assert op_keys([_dense(58, 64, k=1)], block) == ["Conv"]
    assert op_keys([_dw(60), _dw(64), _dense(64, 58), _dense(3, 16)], block) == ["Conv@dw", "Conv@dw", "Conv", "Conv"]


def test_no_unblocked_keys_without_an_nchwc_layout():
    """Without an NCHWc layout (Arm: block 1) or when the block is not given (0), no conv is told apart."""
    for block in (0, 1):
        assert op_keys([_dw(58), _dense(58, 64)], block) == ["Conv@dw", "Conv"]


def test_grouped_convs_need_whole_blocks_per_group():
    """A grouped (not depthwise) conv is blocked only when its channels per group are whole blocks."""
    from tierplan.devices.constants import nchwc_runs
    from tierplan.partition.types import ConvShape

    assert nchwc_runs(ConvShape(96, 96, 3, (1, 1), (1, 1)), 16)          # 32 per group
    assert not nchwc_runs(ConvShape(240, 60, 3, (1, 1), (1, 1)), 16)     # 20 out per group
    assert not nchwc_runs(ConvShape(58, 116, 58, (3, 3), (1, 1)), 16)    # depth multiplier 2


def test_host_block_follows_the_isa():
    """The host's NCHWc block is 16 with AVX-512F, 8 on other x86-64 and 1 on aarch64, as MLAS sets it."""
    from tierplan.devices.host import CpuIdentity, nchwc_block

    def cpu(arch, flags):
        return CpuIdentity(arch, "v", "m", None, None, None, tuple(flags), 2)
    assert nchwc_block(cpu("x86_64", ("avx2", "avx512f"))) == 16
    assert nchwc_block(cpu("x86_64", ("avx2", "fma"))) == 8
    assert nchwc_block(cpu("aarch64", ("asimd",))) == 1


def test_conv_shapes_are_carried_from_onnx_op_records_and_manifests(tmp_path):
    """A Conv's channels, groups, kernel and strides come from the ONNX file into its op record, survive a
    partition manifest, and pick ShuffleNetV2's 58-channel depthwise convs out as unblocked on a 16-block host."""
    import json

    from tierplan.devices.pieces import piece_from_onnx
    from tierplan.partition import zoo
    from tierplan.partition.api import load_manifest, piece_to_dict
    from tierplan.partition.types import ConvShape

    piece = piece_from_onnx(zoo.save(zoo.shufflenet_v2(), tmp_path / "sv2.onnx"))
    convs = [o for o in piece.ops if o.op_type == "Conv"]
    assert all(o.conv is not None for o in convs) and convs[0].conv == ConvShape(3, 24, 1, (3, 3), (2, 2))
    assert ConvShape(58, 58, 58, (3, 3), (1, 1)) in {o.conv for o in convs}
    keys = dict(zip((o.name for o in piece.ops), op_keys(piece.ops, 16)))
    assert {keys[o.name] for o in convs if o.conv.groups == 58} == {"Conv@dw-unblocked"}
    assert {keys[o.name] for o in convs if o.conv.groups == 232} == {"Conv@dw"}
    (tmp_path / "manifest.json").write_text(json.dumps({"model": "sv2", "pieces": [piece_to_dict(piece)]}))
    _, (loaded,) = load_manifest(tmp_path / "manifest.json")
    assert [o.conv for o in loaded.ops] == [o.conv for o in piece.ops]


def test_an_unblocked_conv_without_its_own_coefficients_costs_as_its_blocked_key(calibration):
    """A calibration with no `Conv@dw-unblocked` coefficients prices such a conv as `Conv@dw`, not as a dense Conv."""
    from dataclasses import replace

    cal = replace(calibration, nchwc_block=16, ms_per_gflop={**calibration.ms_per_gflop, "Conv@dw": 123.0},
                  ms_per_mb={**calibration.ms_per_mb, "Conv@dw": 0.0})
    cm = CostModel(cal)
    same_without_shape = replace(_dw(58), conv=None)   # keys as `Conv@dw`
    assert cm.op_ms(_dw(58), CPU) == pytest.approx(cm.op_ms(same_without_shape, CPU), rel=1e-9)
    assert cm.op_ms(_dw(58), CPU) > 123.0 * _dw(58).flops / 1e9


def test_a_calibration_in_an_older_format_is_stale(tmp_path):
    """A calibration file without the current format version (older op keys) is not used: warned and recalibrated."""
    import json
    import warnings

    from tierplan.devices.calibstore import StaleCalibrationWarning, checked, lookup
    from tierplan.devices.costmodel import CALIBRATION_FORMAT, Calibration

    d = Calibration(device="mec-xeon", ms_per_gflop={"Conv": 10.0}, ms_per_mb={}, op_overhead_us=1.0,
                    run_overhead_us=1.0).to_dict()
    assert d["format_version"] == CALIBRATION_FORMAT and checked(Calibration.from_dict(d)) is not None
    del d["format_version"]
    (tmp_path / "mec-xeon.json").write_text(json.dumps(d))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lookup(CPU, tmp_path) is None
    assert any(issubclass(w.category, StaleCalibrationWarning) and "older format" in str(w.message) for w in caught)
