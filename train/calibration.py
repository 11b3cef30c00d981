"""Calibrate raw LLM scores: temperature scaling (multi-class) or one isotonic curve per label (multi-label).

Both calibrators save to a JSON-safe dict (no pickle) and export to ONNX through
`textclassify.export.calibrator_onnx`. Temperature scaling is held as a scikit-learn
`LogisticRegression` with coefficients I/T (see `TemperatureCalibrator.to_sklearn`): a free
multinomial regression learns class priors and, measured here, stopped predicting a rare class.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import sklearn
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from textclassify.runtime import constants
from textclassify.runtime.decoding import scores_to_probabilities
from textclassify.runtime.errors import ConfigError, DataError, check_is_fitted
from textclassify.runtime.metrics import expected_calibration_error, log_loss
from textclassify.train import constants as TK

TEMPERATURE_KIND = "temperature"
ISOTONIC_KIND = "isotonic"


def _check_scores(raw_scores: Any, n_labels: int | None = None, min_labels: int = 1) -> np.ndarray:
    """Raw scores as float64 [n, C]: 2-D, finite, with the expected number of columns."""
    raw = np.asarray(raw_scores, dtype=np.float64)
    if raw.ndim != 2:
        raise DataError(f"'raw_scores' must be a 2-D array [n, C] (got shape {raw.shape}).")
    if n_labels is not None and raw.shape[1] != n_labels:
        raise DataError(f"'raw_scores' must have {n_labels} columns, one per label (got {raw.shape[1]}).")
    if raw.shape[1] < min_labels:
        raise DataError(f"'raw_scores' must have at least {min_labels} columns (got {raw.shape[1]}).")
    bad = np.argwhere(~np.isfinite(raw))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise DataError(f"'raw_scores' row {row}, column {col}: score must be finite (got {raw[row, col]}).")
    return raw


def _check_class_targets(y: Any, n_rows: int, n_labels: int) -> np.ndarray:
    """Class indices [n] in [0, C)."""
    arr = np.asarray(y)
    if arr.ndim != 1 or len(arr) != n_rows:
        raise DataError(f"'y' must be class indices of shape ({n_rows},) (got shape {arr.shape}).")
    for row, value in enumerate(arr.tolist()):
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                float(value).is_integer() and 0 <= value < n_labels):
            raise DataError(f"'y' row {row}: class index must be an int in [0, {n_labels}) (got {value!r}).")
    return arr.astype(np.int64)


def _check_label_targets(Y: Any, shape: tuple[int, int]) -> np.ndarray:
    """A 0/1 matrix [n, C]."""
    arr = np.asarray(Y)
    if arr.shape != shape:
        raise DataError(f"'Y' must be a 0/1 matrix of shape {shape} (got shape {arr.shape}).")
    bad = np.argwhere((arr != 0) & (arr != 1))
    if len(bad):
        row, col = (int(v) for v in bad[0])
        raise DataError(f"'Y' row {row}, column {col}: target must be 0 or 1 (got {arr[row, col].item()!r}).")
    return arr.astype(np.float64)


def _require(d: dict, key: str, kind: str) -> Any:
    if key not in d:
        raise ConfigError(f"The {kind} calibrator dict is missing the key {key!r} (has {sorted(d)}).")
    return d[key]


class _Calibrator:
    """What both calibrators share: the fitted check and the checked raw scores transform starts from."""

    _fitted_attribute = ""
    n_labels_: int

    def _check_fitted(self) -> None:
        check_is_fitted(self, self._fitted_attribute)

    def _fitted_scores(self, raw_scores: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return _check_scores(raw_scores, self.n_labels_)


class TemperatureCalibrator(_Calibrator):
    """Multi-class temperature scaling: softmax(log(clip(raw, eps, 1)) / T), one scalar T, argmax-preserving."""

    _fitted_attribute = "temperature_"

    def __init__(self, *, eps: float = constants.SCORE_EPS) -> None:
        self.eps = eps

    def _log_scores(self, raw: np.ndarray) -> np.ndarray:
        return np.log(np.clip(raw, self.eps, 1.0))

    def fit(self, raw_scores: np.ndarray, y: np.ndarray) -> TemperatureCalibrator:
        """Fit T by minimising the log loss of the calibrated scores on class indices `y`."""
        if not (isinstance(self.eps, float) and 0.0 < self.eps < 1.0):
            raise ConfigError(f"The 'eps' parameter must be a float in (0, 1). Got {self.eps!r} instead.")
        raw = _check_scores(raw_scores, min_labels=2)
        targets = _check_class_targets(y, len(raw), raw.shape[1])
        self.n_labels_ = int(raw.shape[1])
        logs = self._log_scores(raw)
        spread = np.ptp(logs, axis=1) if len(logs) else np.zeros(0)
        if len(raw) < 2 or not (spread > 0).any():
            warnings.warn(
                f"Temperature scaling needs at least 2 rows with unequal scores (got {len(raw)} rows, "
                f"{int((spread > 0).sum())} with unequal scores); using T=1 (no calibration).",
                UserWarning, stacklevel=2,
            )
            self.temperature_ = 1.0
            return self
        picked = logs[np.arange(len(logs)), targets]

        def nll(log_t: float) -> float:
            z = logs / np.exp(log_t)
            zmax = z.max(axis=1)
            lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
            return float((lse - picked / np.exp(log_t)).mean())

        low, high = TK.TEMPERATURE_BOUNDS
        result = minimize_scalar(nll, bounds=(np.log(low), np.log(high)), method="bounded",
                                 options={"xatol": 1e-6})
        self.temperature_ = float(np.exp(result.x))
        if nll(0.0) < float(result.fun):  # never worse than no calibration
            self.temperature_ = 1.0
        return self

    def transform(self, raw_scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, float32 [n, C]; rows sum to 1 and keep the raw argmax."""
        raw = self._fitted_scores(raw_scores)
        z = self._log_scores(raw) / self.temperature_
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def to_sklearn(self) -> LogisticRegression:
        """A fitted LogisticRegression whose predict_proba(log(clip(raw, eps, 1))) equals transform(raw)."""
        self._check_fitted()
        c, inv_t = self.n_labels_, 1.0 / self.temperature_
        lr = LogisticRegression()
        lr.classes_ = np.arange(c)
        if c == 2:
            # sklearn's binary form: P(class 1) = sigmoid(x @ coef_[0]) = softmax(x / T)[1].
            lr.coef_ = np.array([[-inv_t, inv_t]])
            lr.intercept_ = np.zeros(1)
        else:
            lr.coef_ = np.eye(c) * inv_t
            lr.intercept_ = np.zeros(c)
        lr.n_features_in_ = c
        lr.n_iter_ = np.zeros(1, dtype=np.int32)
        return lr

    def to_dict(self) -> dict:
        """JSON-safe state."""
        self._check_fitted()
        return {"kind": TEMPERATURE_KIND, "temperature": self.temperature_, "n_labels": self.n_labels_,
                "eps": self.eps}

    @classmethod
    def from_dict(cls, d: dict) -> TemperatureCalibrator:
        """Rebuild a fitted calibrator from `to_dict`'s output."""
        obj = cls(eps=float(_require(d, "eps", TEMPERATURE_KIND)))
        obj.temperature_ = float(_require(d, "temperature", TEMPERATURE_KIND))
        obj.n_labels_ = int(_require(d, "n_labels", TEMPERATURE_KIND))
        if not (np.isfinite(obj.temperature_) and obj.temperature_ > 0):
            raise ConfigError(f"The temperature calibrator's 'temperature' must be a positive float "
                              f"(got {obj.temperature_}).")
        return obj


def _isotonic_state(reg: IsotonicRegression) -> dict:
    return {
        "X_thresholds": [float(v) for v in reg.X_thresholds_],
        "y_thresholds": [float(v) for v in reg.y_thresholds_],
        "X_min": float(reg.X_min_), "X_max": float(reg.X_max_),
        "increasing": bool(reg.increasing_),
        "y_min": reg.y_min, "y_max": reg.y_max, "out_of_bounds": reg.out_of_bounds,
    }


def _isotonic_from_state(d: dict) -> IsotonicRegression:
    x = np.asarray(_require(d, "X_thresholds", ISOTONIC_KIND), dtype=np.float64)
    y = np.asarray(_require(d, "y_thresholds", ISOTONIC_KIND), dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0 or np.any(np.diff(x) <= 0):
        raise ConfigError("An isotonic regressor's 'X_thresholds' must be strictly increasing and as long "
                          f"as 'y_thresholds' (got {len(x)} and {len(y)} values).")
    reg = IsotonicRegression(y_min=d.get("y_min", 0.0), y_max=d.get("y_max", 1.0),
                             out_of_bounds=d.get("out_of_bounds", "clip"))
    # The pickle protocol (__setstate__) is scikit-learn's own way to restore a fitted
    # IsotonicRegression: it rebuilds the interpolation function from the thresholds.
    state = dict(reg.__dict__)
    state.update(X_thresholds_=x, y_thresholds_=y, X_min_=float(_require(d, "X_min", ISOTONIC_KIND)),
                 X_max_=float(_require(d, "X_max", ISOTONIC_KIND)),
                 increasing_=bool(_require(d, "increasing", ISOTONIC_KIND)), n_features_in_=1,
                 _sklearn_version=sklearn.__version__)
    reg.__setstate__(state)
    return reg


class IsotonicCalibrator(_Calibrator):
    """Multi-label calibration: one clipped IsotonicRegression per label, bounded by ISOTONIC_BOUNDS."""

    _fitted_attribute = "regressors_"

    def fit(self, raw_scores: np.ndarray, Y: np.ndarray) -> IsotonicCalibrator:
        """Fit one increasing isotonic curve per label on 0/1 targets `Y` [n, C]."""
        raw = _check_scores(raw_scores)
        if len(raw) == 0:
            raise DataError("'raw_scores' has no rows; isotonic calibration needs at least one.")
        targets = _check_label_targets(Y, raw.shape)
        self.n_labels_ = int(raw.shape[1])
        self.regressors_ = []
        for j in range(self.n_labels_):
            if targets[:, j].min() == targets[:, j].max():
                warnings.warn(f"Label column {j} is always {int(targets[0, j])} in the calibration data; "
                              "its calibrated score is that constant.", UserWarning, stacklevel=2)
            low, high = TK.ISOTONIC_BOUNDS
            reg = IsotonicRegression(out_of_bounds="clip", y_min=low, y_max=high, increasing=True)
            self.regressors_.append(reg.fit(raw[:, j], targets[:, j]))
        return self

    def transform(self, raw_scores: np.ndarray) -> np.ndarray:
        """Calibrated per-label probabilities, float32 [n, C]."""
        raw = self._fitted_scores(raw_scores)
        out = np.empty(raw.shape, dtype=np.float64)
        for j, reg in enumerate(self.regressors_):
            out[:, j] = reg.predict(raw[:, j])
        return out.astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-safe state: each regressor's thresholds and bounds as lists of floats."""
        self._check_fitted()
        return {"kind": ISOTONIC_KIND, "n_labels": self.n_labels_,
                "regressors": [_isotonic_state(reg) for reg in self.regressors_]}

    @classmethod
    def from_dict(cls, d: dict) -> IsotonicCalibrator:
        """Rebuild a fitted calibrator (real fitted IsotonicRegression objects) from `to_dict`'s output."""
        states = _require(d, "regressors", ISOTONIC_KIND)
        n_labels = int(_require(d, "n_labels", ISOTONIC_KIND))
        if len(states) != n_labels:
            raise ConfigError(f"The isotonic calibrator dict has {len(states)} regressors for "
                              f"{n_labels} labels.")
        obj = cls()
        obj.n_labels_ = n_labels
        obj.regressors_ = [_isotonic_from_state(s) for s in states]
        return obj


Calibrator = TemperatureCalibrator | IsotonicCalibrator


def fit_calibrator(raw_scores: np.ndarray, targets: np.ndarray, multi_label: bool) -> Calibrator:
    """Temperature scaling for multi-class (targets: class indices), isotonic per label for multi-label."""
    if multi_label:
        return IsotonicCalibrator().fit(raw_scores, targets)
    return TemperatureCalibrator().fit(raw_scores, targets)


def calibrator_from_dict(d: dict) -> Calibrator:
    """Rebuild whichever calibrator `d['kind']` names."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == TEMPERATURE_KIND:
        return TemperatureCalibrator.from_dict(d)
    if kind == ISOTONIC_KIND:
        return IsotonicCalibrator.from_dict(d)
    raise ConfigError(f"Unknown calibrator kind {kind!r}; expected {TEMPERATURE_KIND!r} or {ISOTONIC_KIND!r}.")


def calibration_report(raw_scores: np.ndarray, calibrated: np.ndarray, targets: np.ndarray,
                       multi_label: bool) -> dict:
    """Log loss and expected calibration error of the raw and the calibrated scores."""
    raw = _check_scores(raw_scores)
    cal = _check_scores(calibrated, raw.shape[1])
    before = scores_to_probabilities(raw, multi_label)
    return {
        "log_loss_before": log_loss(before, targets, multi_label),
        "log_loss_after": log_loss(cal, targets, multi_label),
        "ece_before": expected_calibration_error(before, targets, multi_label),
        "ece_after": expected_calibration_error(cal, targets, multi_label),
    }
