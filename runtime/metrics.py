"""Classification metrics in numpy alone, so training and the torch-free runtime report alike."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return precision, recall, f1


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], multi_label: bool
) -> dict[str, Any]:
    """Accuracy, macro/micro F1 and per-label P/R/F1; hamming loss and subset accuracy for multi-label.

    y_true/y_pred are class indices [n] (multi-class) or 0/1 matrices [n, C] (multi-label).
    """
    c = len(labels)
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if not multi_label:
        t = np.eye(c, dtype=np.int64)[y_true] if len(y_true) else np.zeros((0, c), np.int64)
        p = np.eye(c, dtype=np.int64)[y_pred] if len(y_pred) else np.zeros((0, c), np.int64)
    else:
        t, p = y_true.astype(np.int64), y_pred.astype(np.int64)
    tp = (t & p).sum(axis=0).astype(float)
    fp = ((1 - t) & p).sum(axis=0).astype(float)
    fn = (t & (1 - p)).sum(axis=0).astype(float)
    precision, recall, f1 = _prf(tp, fp, fn)
    mp, mr, mf1 = _prf(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))
    n = max(len(t), 1)
    out: dict[str, Any] = {
        "n": int(len(t)),
        "macro_f1": float(f1.mean()) if c else 0.0,
        "micro_f1": float(mf1[0]),
        "per_label": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(t[:, i].sum())}
            for i, name in enumerate(labels)
        },
    }
    if multi_label:
        out["subset_accuracy"] = float((t == p).all(axis=1).sum() / n)
        out["hamming_loss"] = float((t != p).sum() / (n * max(c, 1)))
        out["accuracy"] = out["subset_accuracy"]
    else:
        out["accuracy"] = float((y_true == y_pred).sum() / n)
    return out


def log_loss(probabilities: np.ndarray, y_true: np.ndarray, multi_label: bool, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood: categorical (multi-class) or mean binary (multi-label)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    if not multi_label:
        return float(-np.log(p[np.arange(len(p)), y_true]).mean()) if len(p) else 0.0
    y = np.asarray(y_true, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(p) else 0.0


def expected_calibration_error(
    probabilities: np.ndarray, y_true: np.ndarray, multi_label: bool, n_bins: int = 10
) -> float:
    """ECE over confidence bins: top-class confidence (multi-class) or every label score (multi-label)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if len(p) == 0:
        return 0.0
    if not multi_label:
        conf = p.max(axis=1)
        correct = (p.argmax(axis=1) == y_true).astype(float)
    else:
        conf = p.ravel()
        correct = np.asarray(y_true, dtype=float).ravel()
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)
