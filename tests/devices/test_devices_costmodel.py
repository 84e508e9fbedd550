"""Cost model arithmetic: roofline monotonicity, exact transfer, money and energy, calibration and overrides."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierplan.devices.catalog import get_device
from tierplan.devices.costmodel import Calibration, CostModel
from tierplan.partition.types import OpCost, Piece
from tierplan.spec import DeviceSpec, LinkSpec, TransformSpec

RPI4 = get_device("rpi4")
T4 = get_device("mec-t4")
PHONE = get_device("pixel-8")


def piece(ops, measured=None) -> Piece:
    return Piece(id="m/p0", model="m", index=0, nodes=tuple(o.name for o in ops), inputs=(), outputs=(),
                 flops=sum(o.flops for o in ops), param_bytes=sum(o.param_bytes for o in ops), ops=tuple(ops),
                 measured_ms=measured or {})


def conv(flops=1e9, params=1_000_000, act=2_000_000, op="Conv") -> OpCost:
    return OpCost("c", op, flops, params, act)


@settings(max_examples=60, deadline=None)
@given(f=st.floats(1e3, 1e11), df=st.floats(1.0, 1e10), b=st.integers(0, 10**9), db=st.integers(1, 10**9),
       dev=st.sampled_from(["rpi4", "mec-t4", "aws-p5-h100", "pixel-8"]), op=st.sampled_from(["Conv", "Add", "Gemm"]))
def test_prediction_is_monotone_in_flops_and_bytes(f, df, b, db, dev, op):
    """More FLOPs or more bytes never makes an operator faster (datasheet roofline)."""
    cm, d = CostModel(False), get_device(dev)
    base = cm.op_ms(conv(f, b, b, op), d)
    assert cm.op_ms(conv(f + df, b, b, op), d) >= base
    assert cm.op_ms(conv(f, b + db, b, op), d) >= base
    assert cm.op_ms(conv(f, b, b + db, op), d) >= base


@settings(max_examples=40, deadline=None)
@given(f=st.floats(1e3, 1e11), df=st.floats(1.0, 1e10), b=st.integers(0, 10**9), db=st.integers(1, 10**9))
def test_calibrated_prediction_is_monotone(f, df, b, db):
    """A calibrated model (non-negative coefficients) is monotone in FLOPs and bytes as well."""
    cal = Calibration(device="rpi4", ms_per_gflop={"Conv": 10.0, "other": 50.0}, ms_per_mb={"Conv": 0.02},
                      op_overhead_us=3.0, run_overhead_us=5.0, cache_mb=16.0, ms_per_dram_mb=0.03)
    cm = CostModel(cal)
    base = cm.op_ms(conv(f, b, b), RPI4)
    assert cm.op_ms(conv(f + df, b, b), RPI4) >= base
    assert cm.op_ms(conv(f, b + db, b), RPI4) >= base


def test_roofline_hand_checked():
    """rpi4, 1 GFLOP Conv: 1e9 / (48e9 * 0.30) s = 69.444 ms + 25 us dispatch (compute-bound)."""
    ms = CostModel(False).op_ms(conv(1e9, 1_000_000, 2_000_000), RPI4)
    assert ms == pytest.approx(1e9 / (48e9 * 0.30) * 1e3 + 0.025, rel=1e-12)


def test_memory_bound_op_uses_bandwidth():
    """An Add moving 120 MB on rpi4: 120e6 / (12.8e9 * 0.6) s = 15.625 ms + 25 us."""
    ms = CostModel(False).op_ms(OpCost("a", "Add", 1e6, 0, 120_000_000), RPI4)
    assert ms == pytest.approx(120e6 / (12.8e9 * 0.6) * 1e3 + 0.025, rel=1e-12)


def test_batch_and_precision():
    """Batch scales FLOPs and activations; fp16 on a device with an fp16 peak is faster than fp32."""
    cm = CostModel(False)
    p = piece([conv()])
    assert cm.piece_ms(p, RPI4, batch=4) > 3.5 * cm.piece_ms(p, RPI4, batch=1)
    assert cm.piece_ms(p, PHONE, precision="fp16") < cm.piece_ms(p, PHONE, precision="fp32")
    # rpi4 has no fp16 peak: falls back to fp32 arithmetic (bytes still halve)
    assert cm.piece_ms(p, RPI4, precision="fp16") == pytest.approx(cm.piece_ms(p, RPI4), rel=1e-9)


def test_measured_latency_overrides_prediction():
    """A piece with measured_ms for the device returns the measurement at batch 1."""
    p = piece([conv()], measured={"rpi4": 12.5})
    assert CostModel(False).piece_ms(p, RPI4) == 12.5
    assert CostModel(False).piece_ms(p, T4) != 12.5


def test_calibrated_formula_hand_checked():
    """Calibrated op: a*GFLOP + m*MB + d*(MB beyond cache) + overhead, plus the run overhead per piece."""
    cal = Calibration(device="rpi4", ms_per_gflop={"Conv": 10.0}, ms_per_mb={"Conv": 0.5},
                      op_overhead_us=100.0, run_overhead_us=1000.0, cache_mb=2.0, ms_per_dram_mb=0.25)
    p = piece([conv(2e9, 1_000_000, 3_000_000)])   # 2 GFLOP, 4 MB (2 MB beyond the cache)
    assert CostModel(cal).piece_ms(p, RPI4) == pytest.approx(20.0 + 2.0 + 0.5 + 0.1 + 1.0, rel=1e-12)
    # another device is not affected by rpi4's calibration
    assert CostModel(cal).calibration_for(T4) is None


def test_transfer_hand_checked():
    """1 MB up an 8 Mbit/s link with 20 ms RTT: 10 + 1000 + 1e6/1.2e9 s (serialisation) ms."""
    link = LinkSpec(uplink_mbps=8, downlink_mbps=80, rtt_ms=20)
    assert CostModel.transfer_ms(1_000_000, link, "up") == pytest.approx(10 + 1000 + 1e6 / 1.2e9 * 1e3, rel=1e-12)
    assert CostModel.transfer_ms(1_000_000, link, "down") == pytest.approx(10 + 100 + 1e6 / 1.2e9 * 1e3, rel=1e-12)
    assert CostModel.transfer_ms(0, link) == 10


def test_transfer_pays_for_lost_packets():
    """At 20% loss the payload moves at 80% of the rate (resent packets), as runtime.links emulates."""
    link = LinkSpec(uplink_mbps=8, downlink_mbps=80, rtt_ms=20, loss_rate=0.2)
    assert CostModel.transfer_ms(1_000_000, link, "up") == pytest.approx(10 + 1250 + 1e6 / 1.2e9 * 1e3, rel=1e-12)


def test_money_hand_checked():
    """Egress: 2.5 GB at $0.09/GB = $0.225; compute: 1 h of aws-g5-xlarge = $1.006 list price."""
    link = LinkSpec(uplink_mbps=1000, downlink_mbps=1000, rtt_ms=1, egress_usd_per_gb=0.09)
    assert CostModel.egress_usd(2.5e9, link) == pytest.approx(0.225, rel=1e-12)
    assert CostModel.compute_usd(3.6e6, get_device("aws-g5-xlarge")) == pytest.approx(1.006, rel=1e-12)
    assert CostModel.compute_usd(1000, RPI4) == 0
    assert CostModel.hourly_usd(get_device("gcp-a2-highgpu-1g"), instances=3) == pytest.approx(3 * 3.673, rel=1e-12)


def test_energy_hand_checked():
    """Pixel 8: 200 ms at 5 W = 1 J; 1 MB over LTE at 3507 nJ/byte = 3.507 J; mains devices send for free."""
    assert CostModel.compute_energy_j(200, PHONE) == pytest.approx(1.0, rel=1e-12)
    assert CostModel.radio_energy_j(1e6, PHONE) == pytest.approx(3.507, rel=1e-12)
    assert CostModel.radio_energy_j(1e6, RPI4) == 0


def test_transform_scales_with_cpu_speed():
    """A transform declared at 10 ms on an edge CPU: 10 ms on rpi4, less on faster hosts, never below 2.5 ms."""
    spec = TransformSpec(function="m:f", cost_ms=10)
    cm = CostModel(False)
    assert cm.transform_ms(spec, RPI4) == pytest.approx(10.0)
    assert 2.5 <= cm.transform_ms(spec, PHONE) < 10.0
    assert cm.transform_ms(spec, T4) == pytest.approx(2.5)


def test_bad_arguments_are_input_errors():
    """Negative sizes, unknown directions, batch 0 and unknown precisions raise InputError."""
    from tierplan.errors import InputError
    link = LinkSpec(uplink_mbps=1, downlink_mbps=1, rtt_ms=1)
    for call in (lambda: CostModel.transfer_ms(-1, link), lambda: CostModel.transfer_ms(1, link, "sideways"),
                 lambda: CostModel(False).piece_ms(piece([conv()]), RPI4, batch=0),
                 lambda: CostModel(False).piece_ms(piece([conv()]), RPI4, precision="fp8")):
        with pytest.raises(InputError):
            call()


def test_calibration_roundtrip(tmp_path):
    """A calibration saved as JSON loads back equal and is picked up for its device from the directory."""
    cal = Calibration(device="rpi4", ms_per_gflop={"Conv": 10.0}, ms_per_mb={"Conv": 0.5},
                      op_overhead_us=1.0, run_overhead_us=2.0, models=("a", "b"))
    cal.save(tmp_path / "rpi4.json")
    assert Calibration.load(tmp_path / "rpi4.json") == cal
    assert CostModel(calibration_dir=tmp_path).calibration_for(RPI4) == cal
    assert CostModel(False, calibration_dir=tmp_path).calibration_for(RPI4) is None


def test_inline_device_works_without_calibration():
    """A device unknown to the catalog is predicted from its own figures."""
    d = DeviceSpec(name="box", tier="edge", peak_gflops={"fp32": 100}, memory_gb=1, memory_bandwidth_gbps=10,
                   power_idle_w=1, power_active_w=2)
    assert CostModel().piece_ms(piece([conv()]), d) > 0


def test_fusion_keys_follow_the_head():
    """BN/Relu right after a Conv (through other epilogues) get the fused key; after a Reshape they do not."""
    from tierplan.devices.constants import op_class, op_keys
    keys = op_keys(["Conv", "BatchNormalization", "Relu", "Reshape", "Relu", "MatMul", "Add"])
    assert keys == ["Conv", "BatchNormalization~fused", "Relu~fused", "view", "Relu", "MatMul", "Add~fused"]
    assert op_class("Relu~fused") == "fused" and op_class("Relu") == "elementwise" and op_class("Conv") == "conv"


def test_calibrated_fused_epilogue_uses_its_own_coefficients():
    """With a calibration that prices fused Relu at zero, a Conv+Relu piece costs only the Conv (+ run)."""
    cal = Calibration(device="rpi4", ms_per_gflop={"Conv": 10.0, "Relu": 100.0, "Relu~fused": 0.0},
                      ms_per_mb={"Conv": 0.0, "Relu": 1.0, "Relu~fused": 0.0}, op_overhead_us=0.0,
                      run_overhead_us=0.0, class_overhead_us={"conv": 0.0, "fused": 0.0, "elementwise": 50.0})
    p = piece([conv(1e9, 0, 0), OpCost("r", "Relu", 1e6, 0, 4_000_000)])
    assert CostModel(cal).piece_ms(p, RPI4) == pytest.approx(10.0, rel=1e-12)
    alone = piece([OpCost("r", "Relu", 1e6, 0, 4_000_000)])
    assert CostModel(cal).piece_ms(alone, RPI4) == pytest.approx(0.1 + 4.0 + 0.05, rel=1e-12)


def test_conv_shape_keys_tell_depthwise_and_gemv_apart():
    """A 3x3 depthwise conv keys as Conv@dw, a conv on a 1x1 map as Conv@gemv, a 3x3 dense conv as Conv."""
    from tierplan.devices.constants import conv_shape, op_class, op_keys
    c, hw = 64, 56 * 56
    dense = OpCost("d", "Conv", 2.0 * c * c * 9 * hw, 4 * c * c * 9, 4 * 2 * c * hw)
    depthwise = OpCost("w", "Conv", 2.0 * c * 9 * hw, 4 * c * 9, 4 * 2 * c * hw)
    gemv = OpCost("g", "Conv", 2.0 * c * 16, 4 * c * 16, 4 * (c + 16))
    assert [conv_shape(o) for o in (dense, depthwise, gemv)] == ["", "dw", "gemv"]
    assert op_keys([dense, depthwise, gemv]) == ["Conv", "Conv@dw", "Conv@gemv"]
    assert op_keys(["Conv", "Conv"]) == ["Conv", "Conv"]          # type strings carry no shape
    assert op_class("Conv@dw") == "conv" and op_class("Reshape") == "view"


def test_fused_epilogue_is_free_when_the_calibration_says_so():
    """With fused_epilogues_free, a Relu after a Conv costs only the fused-class overhead, whatever its bytes."""
    cal = Calibration(device="rpi4", ms_per_gflop={"Conv": 10.0, "Relu": 100.0}, ms_per_mb={"Conv": 0.0, "Relu": 1.0},
                      op_overhead_us=0.0, run_overhead_us=0.0, fused_epilogues_free=True,
                      class_overhead_us={"conv": 0.0, "fused": 2.0, "elementwise": 50.0})
    p = piece([conv(1e9, 0, 0), OpCost("r", "Relu", 1e6, 0, 4_000_000)])
    assert CostModel(cal).piece_ms(p, RPI4) == pytest.approx(10.0 + 0.002, rel=1e-12)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_matmul_absorbs_a_feeding_transpose_and_a_scalar_scale():
    """Transpose right before a MatMul and a scalar Mul right after it are fused; a tensor Mul is not."""
    from tierplan.devices.constants import op_keys
    t = OpCost("t", "Transpose", 0, 0, 16384)
    mm = OpCost("m", "MatMul", 262144, 0, 32768)
    scale = OpCost("s", "Mul", 4096, 4, 32768)
    tensor_mul = OpCost("x", "Mul", 4096, 0, 49152)
    assert op_keys([t, mm, scale]) == ["Transpose~fused", "MatMul", "Mul~fused"]
    assert op_keys([t, mm, tensor_mul]) == ["Transpose~fused", "MatMul", "Mul"]
    assert op_keys([t, scale]) == ["movement", "Mul"]
