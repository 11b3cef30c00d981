"""Per-label decision thresholds for multi-label models, tuned on cross-fitted probabilities.

`macro_f1` (the default) tunes each label's threshold for its own F1, which maximises their mean;
`subset_accuracy` tunes them in turn (coordinate ascent, two passes) for the share of rows whose whole
label set is right. Candidates are a fixed grid; a tie keeps the threshold nearest 0.5.
"""
from __future__ import annotations

import numpy as np

GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred & truth).sum())
    denom = float(pred.sum() + truth.sum())
    return 2 * tp / denom if denom else 1.0


def _best(scores: list[float]) -> float:
    top = max(scores)
    ties = [g for g, s in zip(GRID, scores) if s >= top - 1e-12]
    return float(min(ties, key=lambda g: (abs(g - 0.5), g)))


def tune_thresholds(probabilities: np.ndarray, targets: np.ndarray, objective: str = "macro_f1") -> list[float]:
    """One threshold per label, in label order."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(targets).astype(bool)
    n_labels = p.shape[1]
    if objective == "macro_f1":
        return [_best([_f1(p[:, j] >= g, y[:, j]) for g in GRID]) for j in range(n_labels)]
    if objective != "subset_accuracy":
        raise ValueError(f"objective must be 'macro_f1' or 'subset_accuracy' (got {objective!r})")
    thr = np.full(n_labels, 0.5)
    for _ in range(2):
        for j in range(n_labels):
            others = ((p >= thr) == y)
            others[:, j] = True
            rest = others.all(axis=1)
            thr[j] = _best([float((rest & ((p[:, j] >= g) == y[:, j])).mean()) for g in GRID])
    return [float(t) for t in thr]
