"""K-fold cross-fitting: out-of-fold predictions, and the cross-validated choice of the combiner that serves.

Every row of the fusion split gets predictions from models that never saw its label; all candidates
(the fusion MLP, the logistic-regression stacker, each component alone) are compared on the same
folds by log-loss, the best is kept (a tie goes to the simpler), then refitted on the whole split.
Choosing on a 60-text fusion-val slice, as before, picked the wrong model often enough to ship a
fused model below the stacker.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TIE_TOLERANCE = 0.002  # CV log-loss differences below this are a tie (the simpler combiner wins)


def make_folds(targets: np.ndarray, k: int, seed: int, multi_label: bool) -> list[np.ndarray]:
    """k disjoint test-index arrays covering every row: stratified by class where each class has k rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(targets)
    k = max(2, min(k, n))
    rows = np.zeros(n)
    if not multi_label:
        counts = np.bincount(targets)
        present = counts[counts > 0]
        if len(present) > 1 and present.min() >= k:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            return [test for _, test in splitter.split(rows, targets)]
    splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(rows)]


def complement(test_idx: np.ndarray, n: int) -> np.ndarray:
    return np.setdiff1d(np.arange(n), test_idx)


def out_of_fold(fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int,
                folds: Sequence[np.ndarray]) -> np.ndarray:
    """Rows predicted by `fit_predict(train_idx, test_idx)` fitted without them; [n, ...] in row order."""
    out: np.ndarray | None = None
    for test_idx in folds:
        pred = np.asarray(fit_predict(complement(test_idx, n), test_idx))
        if out is None:
            out = np.zeros((n, *pred.shape[1:]), dtype=pred.dtype)
        out[test_idx] = pred
    assert out is not None
    return out


def log_loss_of_logits(logits: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """Mean cross-entropy (softmax) or mean binary cross-entropy per label (sigmoid) of logits."""
    z = np.asarray(logits, dtype=np.float64)
    if multi_label:
        y = np.asarray(targets, dtype=np.float64)
        return float(np.mean(np.logaddexp(0, z) - y * z))
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(z)), targets].mean())


@dataclass
class CVResult:
    """One candidate's cross-fitted predictions and scores."""

    name: str
    complexity: int
    oof_logits: np.ndarray
    oof_no_llm_logits: np.ndarray | None
    log_loss: float
    accuracy: float
    macro_f1: float
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"combiner": self.name, "cv_log_loss": round(self.log_loss, 5), "cv_accuracy": round(self.accuracy, 5),
                "cv_macro_f1": round(self.macro_f1, 5)}


def score_logits(name: str, complexity: int, logits: np.ndarray, no_llm: np.ndarray | None, targets: np.ndarray,
                 multi_label: bool, labels: Sequence[str]) -> CVResult:
    from textclassify.runtime.metrics import classification_metrics

    pred = (logits >= 0).astype(np.int64) if multi_label else logits.argmax(axis=1)
    m = classification_metrics(targets, pred, list(labels), multi_label)
    acc = m["subset_accuracy"] if multi_label and "subset_accuracy" in m else m["accuracy"]
    return CVResult(name, complexity, logits, no_llm, log_loss_of_logits(logits, targets, multi_label), float(acc),
                    float(m["macro_f1"]))


def choose(results: Sequence[CVResult]) -> CVResult:
    """Lowest CV log-loss; candidates within TIE_TOLERANCE of it go to the simplest."""
    best = min(r.log_loss for r in results)
    tied = [r for r in results if r.log_loss <= best + TIE_TOLERANCE]
    return min(tied, key=lambda r: (r.complexity, r.log_loss))
