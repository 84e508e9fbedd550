"""Calibration: NNLS is correct, and a fit on measured models predicts held-out models better than the datasheet."""

from __future__ import annotations

import numpy as np
import pytest

from devices.calibrate import SYNTHETIC_MODEL, Sample, _lawson_hanson, collect_samples, default_models, fit_calibration, nnls
from devices.catalog import get_device
from devices.costmodel import CostModel


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
    wanted = {"squeezenet", "ppocr_cls", "silero_vad", "shufflenet", "inception_v1"}
    models = [m for m in default_models() if m[0] in wanted]
    assert len(models) == len(wanted)
    return collect_samples(models, tmp_path_factory.mktemp("cal"), max_pieces=5, runs=7, min_time_s=0.05)


def test_calibrated_beats_datasheet_on_held_out_models(measured):
    """Leave-one-model-out: fitted on the other models, the calibration predicts the held-out model's
    pieces better than the datasheet roofline (pooled median error, and in most folds)."""
    device = get_device("local")
    names = sorted({s.piece.model for s in measured} - {SYNTHETIC_MODEL})   # micro-benchmarks only train
    pooled_cal, pooled_raw, folds_better = [], [], 0
    for name in names:
        train = [s for s in measured if s.piece.model != name]
        test = [s for s in measured if s.piece.model == name]
        cal = CostModel(fit_calibration(train, device))
        err_cal = [abs(cal.piece_ms(s.piece, device) / s.measured_ms - 1) for s in test]
        err_raw = [abs(CostModel(False).piece_ms(s.piece, device) / s.measured_ms - 1) for s in test]
        folds_better += np.median(err_cal) < np.median(err_raw)
        pooled_cal += err_cal
        pooled_raw += err_raw
    assert np.median(pooled_cal) < 0.5 * np.median(pooled_raw)
    assert folds_better >= len(names) - 2


def test_fit_reports_training_error_and_positive_coefficients(measured):
    """A fit has non-negative coefficients, records its models, and fits its own data within 25% at the median."""
    cal = fit_calibration(measured, get_device("local"))
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
    from devices.calibrate import SYNTHETIC_SIZES, synthetic_pieces
    from devices.profile import measure_piece

    pieces = synthetic_pieces(tmp_path)
    assert {p.model for p in pieces} == {SYNTHETIC_MODEL}
    assert {len(p.inputs) for p in pieces} == {1, 3} and {len(p.outputs) for p in pieces} == {1, 3}
    assert {o.op_type for p in pieces for o in p.ops} >= {"Add", "Mul", "Relu", "Reshape", "Transpose", "Sigmoid"}
    sizes = sorted({p.inputs[0].nbytes for p in pieces})
    assert sizes == [4 * n for n in SYNTHETIC_SIZES]
    small, big = pieces[0], next(p for p in pieces if p.inputs[0].nbytes == sizes[-1] and len(p.ops) == len(pieces[0].ops))
    assert measure_piece(big, runs=5).cpu_median_ms > measure_piece(small, runs=5).cpu_median_ms
