"""The per-row gate of the cascade: how sure the no-LLM answer is, and which rows may skip the LLM.

Confidence of a row's no-LLM answer (the fusion head with llm_present = 0), on its probabilities:
multi-class, the top probability; multi-label, the smallest distance of any label's probability from
its threshold (the label closest to flipping decides). Both lie in [0, 1]; a row whose confidence
reaches the gate threshold is answered without the LLM. Training (train/gate.py) chooses the threshold
on held-out predictions with this same function, so the rule served is the rule measured.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GATE_CHOICES = ("manifest", "off")


def confidence(probabilities: np.ndarray, multi_label: bool, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Per-row confidence in [0, 1] of the answer these probabilities give."""
    p = np.asarray(probabilities, dtype=np.float64)
    if len(p) == 0:
        return np.zeros(0)
    if not multi_label:
        return p.max(axis=1)
    thr = np.full(p.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return np.abs(p - thr).min(axis=1)


def skips_llm(confidences: np.ndarray, threshold: float | None) -> np.ndarray:
    """Boolean mask of the rows the gate answers without the LLM (none when the threshold is None)."""
    conf = np.asarray(confidences, dtype=np.float64)
    if threshold is None:
        return np.zeros(len(conf), dtype=bool)
    return conf >= threshold
