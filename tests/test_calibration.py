"""Tests for textclassify.train.calibration: temperature scaling, per-label isotonic, JSON state, report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from textclassify.runtime.decoding import softmax
from textclassify.runtime.errors import ConfigError, DataError, NotFittedError
from textclassify.train import constants as TK
from textclassify.train.calibration import (
    IsotonicCalibrator,
    TemperatureCalibrator,
    calibration_report,
    calibrator_from_dict,
    fit_calibrator,
)


def _overconfident(n: int, c: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores softmax(z * T) with labels drawn from softmax(z): the true temperature is T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 1.5
    probs = softmax(z).astype(np.float64)
    cum = probs.cumsum(axis=1)
    y = (rng.random((n, 1)) > cum).sum(axis=1).clip(0, c - 1)
    return softmax(z * temperature).astype(np.float64), y


def _multilabel(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three labels whose positives become likelier as the raw score grows (squared)."""
    rng = np.random.default_rng(seed)
    raw = rng.random((n, 3))
    return raw, (rng.random((n, 3)) < raw**2).astype(np.int64)


def test_temperature_recovers_known_temperature():
    """On scores sharpened by T=3, the fitted temperature is within 10% of 3."""
    raw, y = _overconfident(4000, 3, 3.0)
    cal = TemperatureCalibrator().fit(raw, y)
    assert cal.temperature_ == pytest.approx(3.0, rel=0.10)
    assert cal.n_labels_ == 3


def test_temperature_preserves_argmax_and_sums_to_one():
    """Calibrated rows keep the raw argmax and sum to 1, as float32."""
    raw, y = _overconfident(500, 4, 2.0, seed=1)
    out = TemperatureCalibrator().fit(raw, y).transform(raw)
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_array_equal(out.argmax(axis=1), raw.argmax(axis=1))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("c", [2, 3])
def test_to_sklearn_reproduces_transform(c):
    """LogisticRegression.predict_proba(log(clip(raw))) equals transform(raw) to 1e-6, zeros and ones included."""
    raw, y = _overconfident(300, c, 2.5, seed=c)
    raw[:5] = 0.0
    raw[5:10, 0] = 1.0
    cal = TemperatureCalibrator().fit(raw, y)
    lr = cal.to_sklearn()
    np.testing.assert_array_equal(lr.classes_, np.arange(c))
    proba = lr.predict_proba(np.log(np.clip(raw, cal.eps, 1.0)))
    np.testing.assert_allclose(proba, cal.transform(raw), atol=1e-6)


def test_temperature_dict_round_trip_is_json_safe():
    """to_dict survives json and from_dict gives the same transform."""
    raw, y = _overconfident(300, 3, 2.0, seed=2)
    cal = TemperatureCalibrator().fit(raw, y)
    back = calibrator_from_dict(json.loads(json.dumps(cal.to_dict())))
    assert isinstance(back, TemperatureCalibrator)
    assert back.temperature_ == cal.temperature_
    np.testing.assert_array_equal(back.transform(raw), cal.transform(raw))


@pytest.mark.parametrize("raw", [np.full((5, 3), 1 / 3), np.array([[0.7, 0.2, 0.1]])],
                         ids=["all-equal", "single-row"])
def test_temperature_degenerate_input_falls_back_to_one(raw):
    """All-equal scores or a single row give T=1 with a warning, not a crash."""
    with pytest.warns(UserWarning, match="using T=1"):
        cal = TemperatureCalibrator().fit(raw, np.zeros(len(raw), dtype=np.int64))
    assert cal.temperature_ == 1.0


def test_temperature_rejects_bad_input_with_clear_errors():
    """Wrong shapes, NaN scores and out-of-range classes name what is wrong and where."""
    cal = TemperatureCalibrator()
    with pytest.raises(DataError, match=r"'raw_scores' must be a 2-D array \[n, C\] \(got shape \(3,\)\)\."):
        cal.fit(np.ones(3), np.zeros(3, dtype=np.int64))
    raw = np.full((3, 2), 0.5)
    raw[1, 0] = np.nan
    with pytest.raises(DataError, match=r"'raw_scores' row 1, column 0: score must be finite \(got nan\)\."):
        cal.fit(raw, np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match=r"'y' row 2: class index must be an int in \[0, 2\) \(got 5\)\."):
        cal.fit(np.full((3, 2), 0.5), np.array([0, 1, 5]))
    with pytest.raises(NotFittedError, match="This TemperatureCalibrator instance is not fitted yet. "
                                             "Call 'fit' first."):
        cal.transform(np.full((3, 2), 0.5))


def test_report_log_loss_not_worse_after_temperature():
    """On overconfident scores the report shows lower log loss and ECE after calibration."""
    raw, y = _overconfident(2000, 3, 3.0, seed=3)
    cal = fit_calibrator(raw, y, multi_label=False)
    report = calibration_report(raw, cal.transform(raw), y, multi_label=False)
    assert set(report) == {"log_loss_before", "log_loss_after", "ece_before", "ece_after"}
    assert report["log_loss_after"] < report["log_loss_before"]
    assert report["ece_after"] < report["ece_before"]


def test_isotonic_fits_one_regressor_per_label_and_improves_log_loss():
    """One clipped IsotonicRegression per label; scores stay within ISOTONIC_BOUNDS and lower the log loss."""
    raw, Y = _multilabel(1500)
    cal = fit_calibrator(raw, Y, multi_label=True)
    assert isinstance(cal, IsotonicCalibrator) and len(cal.regressors_) == 3
    low, high = TK.ISOTONIC_BOUNDS
    assert all(r.out_of_bounds == "clip" and r.y_min == low and r.y_max == high for r in cal.regressors_)
    out = cal.transform(np.vstack([raw, [[-1.0, 2.0, 0.5]]]))
    assert out.dtype == np.float32 and out.min() >= low and out.max() <= high
    report = calibration_report(raw, out[:-1], Y, multi_label=True)
    assert report["log_loss_after"] <= report["log_loss_before"]


def test_isotonic_dict_round_trip_gives_equal_predictions():
    """from_dict(json(to_dict)) rebuilds fitted IsotonicRegressions whose predictions equal the originals."""
    raw, Y = _multilabel(400, seed=4)
    cal = IsotonicCalibrator().fit(raw, Y)
    back = calibrator_from_dict(json.loads(json.dumps(cal.to_dict())))
    probe = np.random.default_rng(5).random((2000, 3)) * 1.6 - 0.3
    probe[:3] = [r.X_thresholds_[1] for r in cal.regressors_]
    np.testing.assert_array_equal(back.transform(probe), cal.transform(probe))
    for orig, copy in zip(cal.regressors_, back.regressors_, strict=True):
        np.testing.assert_array_equal(copy.predict(probe[:, 0]), orig.predict(probe[:, 0]))


def test_isotonic_constant_label_does_not_crash():
    """A label that never occurs warns and calibrates to the constant lower bound."""
    raw, Y = _multilabel(200, seed=6)
    Y[:, 1] = 0
    with pytest.warns(UserWarning, match="Label column 1 is always 0"):
        cal = IsotonicCalibrator().fit(raw, Y)
    assert np.all(cal.transform(raw)[:, 1] == np.float32(TK.ISOTONIC_BOUNDS[0]))


def test_isotonic_rejects_non_binary_targets():
    """Targets other than 0/1 name the row and column."""
    raw, Y = _multilabel(10, seed=7)
    Y[4, 2] = 3
    with pytest.raises(DataError, match=r"'Y' row 4, column 2: target must be 0 or 1 \(got 3\)\."):
        IsotonicCalibrator().fit(raw, Y)


def test_calibrator_from_dict_rejects_unknown_kind():
    """An unknown kind says which kinds exist."""
    with pytest.raises(ConfigError, match="Unknown calibrator kind 'platt'; expected 'temperature' or 'isotonic'."):
        calibrator_from_dict({"kind": "platt"})
