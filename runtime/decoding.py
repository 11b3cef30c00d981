"""Turn logits into probabilities and label predictions; shared by training and serving."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from textclassify.runtime import constants as K
from textclassify.runtime.errors import DataError


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stability, returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def logits_to_probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """Softmax for multi-class, independent sigmoids for multi-label."""
    return sigmoid(logits) if multi_label else softmax(logits)


def scores_to_probabilities(raw_scores: np.ndarray, multi_label: bool) -> np.ndarray:
    """Uncalibrated LLM scores read as probabilities ("LLM alone (raw)" everywhere): multi-label scores clipped
    to [0, 1]; multi-class rows floored at SCORE_EPS and renormalised to sum 1 (an all-zero row is uniform)."""
    raw = np.asarray(raw_scores, dtype=np.float64)
    if multi_label:
        return np.clip(raw, 0.0, 1.0).astype(np.float32)
    p = np.maximum(raw, K.SCORE_EPS)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def label_thresholds(thresholds: Sequence[float] | None, n_labels: int) -> np.ndarray:
    """The multi-label decision threshold of each label: the given ones, else DEFAULT_THRESHOLD for all."""
    if thresholds is None:
        return np.full(n_labels, K.DEFAULT_THRESHOLD, dtype=np.float64)
    return np.asarray(thresholds, dtype=np.float64)


def decide(probabilities: np.ndarray, multi_label: bool, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """The one decision rule: class index per row [n] (argmax), or a 0/1 matrix [n, C] where a label is on
    when its probability reaches its threshold (`label_thresholds`)."""
    p = np.asarray(probabilities)
    if not multi_label:
        return p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    return (p >= label_thresholds(thresholds, p.shape[1])).astype(np.int64)


def decode_predictions(
    probabilities: np.ndarray,
    labels: Sequence[str],
    multi_label: bool,
    thresholds: Sequence[float] | None = None,
) -> list[Any]:
    """Argmax label per row (multi-class) or the labels whose probability reaches its threshold (`decide`)."""
    p = np.asarray(probabilities)
    if not multi_label and len(p) == 0:
        return []
    targets = decide(p.reshape(len(p), len(labels)), multi_label, thresholds)
    if not multi_label:
        return [labels[int(i)] for i in targets]
    return [[labels[j] for j in np.flatnonzero(row)] for row in targets]


def encode_targets(targets: Sequence[Any], labels: Sequence[str], multi_label: bool) -> np.ndarray:
    """Label strings (or lists of them) to class indices [n] or a 0/1 matrix [n, C]."""
    index = {name: i for i, name in enumerate(labels)}

    def lookup(row: int, name: Any) -> int:
        if name not in index:
            raise DataError(f"labels[{row}]: unknown label {name!r}; expected one of {list(labels)}.")
        return index[name]

    if not multi_label:
        return np.array([lookup(i, t) for i, t in enumerate(targets)], dtype=np.int64)
    out = np.zeros((len(targets), len(labels)), dtype=np.int64)
    for i, row in enumerate(targets):
        names = [row] if isinstance(row, str) else list(row)
        for name in names:
            out[i, lookup(i, name)] = 1
    return out


def encode_true_labels(labels: Sequence[Any] | None, n_texts: int, label_names: Sequence[str],
                       multi_label: bool) -> np.ndarray | None:
    """The true labels of `predict(texts, labels)` as targets, checked before any model runs; None for no labels.

    One label per text: a class name, or for multi-label a list of names or a 0/1 row in `label_names` order.
    """
    from textclassify.runtime.types import indicator_rows_to_names  # types imports this module

    if labels is None:
        return None
    if isinstance(labels, (str, bytes)):
        raise DataError("labels: expected a list with one label (or label list) per text, got a single string.")
    labels = list(labels)
    if len(labels) != n_texts:
        raise DataError(f"labels: {len(labels)} labels for {n_texts} texts; they must match.")
    if multi_label:
        labels = indicator_rows_to_names(labels, list(label_names)) or labels
    return encode_targets(labels, list(label_names), multi_label)
