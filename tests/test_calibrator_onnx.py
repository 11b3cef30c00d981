"""Tests for textclassify.export.calibrator_onnx: calibrator.onnx parity and the IsotonicRegression converter."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.isotonic import IsotonicRegression

from textclassify.export import constants as EK
from textclassify.export.calibrator_onnx import calibrator_to_onnx
from textclassify.runtime import constants
from textclassify.runtime.errors import ExportError
from textclassify.train.calibration import IsotonicCalibrator, TemperatureCalibrator


def run_calibrator_onnx(model: onnx.ModelProto, raw_scores: np.ndarray) -> np.ndarray:
    """Run calibrator.onnx on the CPU with ONNX Runtime; float32 [n, C]."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {constants.CALIBRATOR_INPUT: np.ascontiguousarray(raw_scores, dtype=np.float32)}
    return session.run([constants.CALIBRATOR_OUTPUT], feed)[0]


def _io(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


def _probe(n: int, c: int, seed: int) -> np.ndarray:
    """Random float32 scores with exact zeros, ones and rows of each."""
    x = np.random.default_rng(seed).random((n, c)).astype(np.float32)
    x[:5] = 0.0
    x[5:10] = 1.0
    x[10:20, 0] = 0.0
    x[20:30, -1] = 1.0
    return x


@pytest.mark.parametrize("c", [2, 3, 6])
def test_temperature_graph_matches_transform(c):
    """The multi-class graph equals transform() within 1e-5, zeros and ones included, any batch size."""
    rng = np.random.default_rng(c)
    cal = TemperatureCalibrator().fit(rng.random((200, c)), rng.integers(0, c, 200))
    cal.temperature_ = 2.7  # a clearly non-trivial temperature
    model = calibrator_to_onnx(cal, c)
    assert _io(model) == ([constants.CALIBRATOR_INPUT], [constants.CALIBRATOR_OUTPUT])
    for n in (1, 7, 1000):
        x = _probe(n, c, seed=n) if n > 30 else np.random.default_rng(n).random((n, c)).astype(np.float32)
        out = run_calibrator_onnx(model, x)
        assert out.dtype == np.float32 and out.shape == (n, c)
        np.testing.assert_allclose(out, cal.transform(x), atol=1e-5)


def test_isotonic_calibrator_graph_matches_transform():
    """The multi-label graph equals transform() on values inside and outside the fitted range."""
    rng = np.random.default_rng(0)
    raw = rng.random((400, 3))
    Y = (rng.random((400, 3)) < raw).astype(np.int64)
    Y[:, 2] = 0
    with pytest.warns(UserWarning, match="Label column 2 is always 0"):
        cal = IsotonicCalibrator().fit(raw, Y)
    model = calibrator_to_onnx(cal, 3)
    assert _io(model) == ([constants.CALIBRATOR_INPUT], [constants.CALIBRATOR_OUTPUT])
    x = rng.random((3000, 3)).astype(np.float32) * 1.6 - 0.3
    np.testing.assert_allclose(run_calibrator_onnx(model, x), cal.transform(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("out_of_bounds", ["clip", "nan"])
def test_isotonic_converter_matches_sklearn_on_10000_inputs(out_of_bounds):
    """convert_sklearn on a bare IsotonicRegression (found in skl2onnx's registry) matches predict to 1e-6."""
    rng = np.random.default_rng(42)
    # Fit on float32-representable values so thresholds are exact float32 inputs too.
    x_fit = rng.random(2000).astype(np.float32).astype(np.float64)
    y_fit = (rng.random(2000) < x_fit**2).astype(np.float64)
    reg = IsotonicRegression(out_of_bounds=out_of_bounds).fit(x_fit, y_fit)
    assert len(reg.X_thresholds_) > 10
    model = convert_sklearn(reg, initial_types=[("X", FloatTensorType([None, 1]))],
                            target_opset=EK.ONNX_OPSET)
    onnx.checker.check_model(model)
    thresholds = reg.X_thresholds_.astype(np.float32)
    probe = np.concatenate([
        rng.uniform(-0.5, 1.5, 10_000 - len(thresholds) - 4).astype(np.float32),
        thresholds, [-3.0, reg.X_min_, reg.X_max_, 7.0],
    ]).astype(np.float32)
    assert len(probe) == 10_000 and (probe < reg.X_min_).any() and (probe > reg.X_max_).any()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"X": probe[:, None]})[0]
    want = reg.predict(probe.astype(np.float64))
    assert got.shape == (10_000, 1) and got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got[:, 0]), np.isnan(want))
    assert np.nanmax(np.abs(got[:, 0] - want)) < 1e-6
    # Computed in float64 with scipy's own formula, the graph is exact up to the final float32 cast.
    np.testing.assert_array_equal(got[:, 0], want.astype(np.float32))


def test_isotonic_converter_handles_single_threshold():
    """A regressor fitted on one distinct x (one threshold) predicts its constant everywhere."""
    reg = IsotonicRegression(out_of_bounds="clip").fit(np.full(5, 0.4), np.array([0, 1, 1, 0, 1.0]))
    assert len(reg.X_thresholds_) == 1
    model = convert_sklearn(reg, initial_types=[("X", FloatTensorType([None, 1]))], target_opset=17)
    probe = np.array([[-1.0], [0.4], [0.9]], dtype=np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"X": probe})[0]
    np.testing.assert_allclose(got[:, 0], reg.predict(probe[:, 0].astype(np.float64)), atol=1e-7)


def test_isotonic_converter_refuses_raise_mode():
    """out_of_bounds='raise' has no ONNX equivalent and says so."""
    reg = IsotonicRegression(out_of_bounds="raise").fit(np.arange(5.0), np.arange(5.0) / 4)
    with pytest.raises(ExportError, match="IsotonicRegression\\(out_of_bounds='raise'\\) cannot be expressed"):
        convert_sklearn(reg, initial_types=[("X", FloatTensorType([None, 1]))], target_opset=17)


def test_calibrator_to_onnx_checks_label_count_and_fit():
    """A label-count mismatch and an unfitted calibrator are clear ExportErrors."""
    rng = np.random.default_rng(1)
    cal = TemperatureCalibrator().fit(rng.random((50, 3)), rng.integers(0, 3, 50))
    with pytest.raises(ExportError, match="The calibrator was fitted on 3 labels, but n_labels=4."):
        calibrator_to_onnx(cal, 4)
    with pytest.raises(ExportError, match="This IsotonicCalibrator instance is not fitted yet."):
        calibrator_to_onnx(IsotonicCalibrator(), 3)
