"""Calibration: NNLS is correct, and a fit on measured models predicts held-out models better than the datasheet."""

from __future__ import annotations

import numpy as np
import pytest

from tierplan.devices.calibrate import SYNTHETIC_MODEL, Sample, _lawson_hanson, collect_samples, default_models, fit_calibration, nnls
from tierplan.devices.catalog import get_device
from tierplan.devices.costmodel import CostModel

pytestmark = pytest.mark.slow   # measures models on this CPU


def test_lawson_hanson_matches_scipy_and_kkt():
    """The numpy Lawson-Hanson NNLS satisfies the KKT conditions and agrees with scipy on random problems."""
    from scipy.optimize import nnls as scipy_nnls

    rng = np.random.default_rng(0)
    for _ in range(20):
        A = rng.standard_normal((30, 8))
        b = rng.standard_normal(30)
        x = _lawson_hanson(A, b, 400)
        assert (x >= 0).all()
        grad = A.T @ (A @ x - b)
        assert np.all(grad[x > 1e-9] == pytest.approx(0, abs=1e-7))   # stationary on the free set
        assert np.all(grad[x <= 1e-9] >= -1e-7)                        # no descent into the bound
        assert np.allclose(x, scipy_nnls(A, b)[0], atol=1e-7)


def test_nnls_recovers_known_coefficients():
    """Exact data generated from non-negative coefficients is fitted back exactly."""
    rng = np.random.default_rng(1)
    A = rng.uniform(0, 1, (50, 5))
    truth = np.array([2.0, 0.0, 0.5, 3.0, 0.0])
    assert np.allclose(nnls(A, A @ truth), truth, atol=1e-8)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Real onnxruntime measurements of small models from installed wheels, cut into pieces."""
    # models whose operator types the others cover: holding out a model with an op of its own (Inception's LRN,
    # Silero's LSTM) measures the missing data, not the calibration
    wanted = {"squeezenet", "ppocr_cls", "shufflenet", "mobilenet_v3_small", "ppocr_rec", "mobilenet_v2"}
    models = [m for m in default_models(tmp_path_factory.mktemp("zoo")) if m[0] in wanted]
    assert len(models) == len(wanted)
    return collect_samples(models, tmp_path_factory.mktemp("cal"), max_pieces=5, runs=7, min_time_s=0.05, passes=2)


def _noise(samples) -> float:
    """This machine's measurement noise right now: median relative gap between two independent medians of a piece."""
    return float(np.median([abs(s.repeat_ms / s.measured_ms - 1) for s in samples if s.repeat_ms]))


# What a calibration must achieve on models it never saw, at the median, beyond the measurement noise.
HELD_OUT_MEDIAN_ERROR = 0.35


def test_calibrated_beats_datasheet_on_held_out_models(measured):
    """Leave-one-model-out on this CPU, whatever it is: fitted on the other models, the calibration predicts the
    held-out models' pieces within 35% at the median and no worse than the detected datasheet roofline, both up
    to twice the measurement noise measured alongside (two independent passes)."""
    device = get_device("local")
    names = sorted({s.piece.model for s in measured} - {SYNTHETIC_MODEL})   # micro-benchmarks only train
    tol = max(2 * _noise(measured), 0.02)
    pooled_cal, pooled_raw = [], []
    for name in names:
        train = [s for s in measured if s.piece.model != name]
        test = [s for s in measured if s.piece.model == name]
        cal = CostModel(fit_calibration(train, device))
        pooled_cal += [abs(cal.piece_ms(s.piece, device) / s.measured_ms - 1) for s in test]
        pooled_raw += [abs(CostModel(False).piece_ms(s.piece, device) / s.measured_ms - 1) for s in test]
    assert np.median(pooled_cal) <= HELD_OUT_MEDIAN_ERROR + tol, (np.median(pooled_cal), tol)
    assert np.median(pooled_cal) <= np.median(pooled_raw) + tol, (np.median(pooled_cal), np.median(pooled_raw), tol)


def test_fit_reports_training_error_and_positive_coefficients(measured):
    """A fit has non-negative coefficients, records its models and this CPU, and fits its own data within 25% at
    the median."""
    from tierplan.devices.host import cpu_identity

    cal = fit_calibration(measured, get_device("local"))
    assert cal.cpu_key == cpu_identity().key and cal.cpu == cpu_identity().label
    assert all(v >= 0 for v in cal.ms_per_gflop.values()) and cal.op_overhead_us >= 0
    assert set(cal.models) == {s.piece.model for s in measured} and SYNTHETIC_MODEL in cal.models
    assert cal.fit["train_median_abs_rel_error"] < 0.25


def test_fit_needs_measurements():
    """Fewer than three measured pieces is an InputError, not a degenerate fit."""
    from tierplan.errors import InputError
    with pytest.raises(InputError, match="at least 3"):
        fit_calibration([], get_device("local"))


def test_synthetic_micro_benchmarks_cover_fixed_costs(tmp_path):
    """The micro-benchmark pieces are real ONNX files spanning tensor sizes, I/O counts and op chains."""
    from tierplan.devices.calibrate import SYNTHETIC_SIZES, synthetic_pieces
    from tierplan.devices.profile import measure_piece

    pieces = synthetic_pieces(tmp_path)
    assert {p.model for p in pieces} == {SYNTHETIC_MODEL}
    assert {len(p.inputs) for p in pieces} == {1, 3} and {len(p.outputs) for p in pieces} == {1, 3}
    assert {o.op_type for p in pieces for o in p.ops} >= {"Add", "Mul", "Relu", "Reshape", "Transpose", "Sigmoid"}
    sizes = sorted({p.inputs[0].nbytes for p in pieces})
    assert sizes == [4 * n for n in SYNTHETIC_SIZES]
    small, big = pieces[0], next(p for p in pieces if p.inputs[0].nbytes == sizes[-1] and len(p.ops) == len(pieces[0].ops))
    assert measure_piece(big, runs=5).cpu_median_ms > measure_piece(small, runs=5).cpu_median_ms
