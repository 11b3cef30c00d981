"""The int8 recheck: rows whose int8 decision is too close to call are answered again by the fp32 graph.

Dynamic int8 moves each logit by a few hundredths (the export measures by how much), so it can only
change a decision whose margin is that small. A row's margin is the gap between its top two logits
(multi-class) or the smallest distance of a label's logit from its threshold (multi-label). The export
records the largest margin change it saw on the parity texts, times RECHECK_SAFETY, for fused_logits
and for the no-LLM answer (fusion with llm_present = 0, which decides the rows without an LLM score);
rows of an int8 run whose margin is below theirs get their encoder logits again from the fp32
encoder.onnx and are fused again.

The same change can move a row across the cascade's gate without changing its decision: its no-LLM
confidence (runtime.gate) sits next to the threshold. A margin change m moves the log-odds of the
top probability by at most m (multi-class: every other class's logit gap to the top moves by at most
m) and a label's probability by at most m/4 (multi-label: the sigmoid's slope is at most 1/4), so rows
that close to the threshold are settled by fp32 before the gate reads them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from textclassify.runtime.decoding import label_thresholds, logits_to_probabilities
from textclassify.runtime.gate import confidence

# The manifest's recheck margin is the largest change seen on the parity texts times this factor. 1.0,
# because that maximum is already taken over every parity text at two batch sizes; a larger factor reruns
# more rows in fp32 without gaining agreement (figures: benchmarks/README.md).
RECHECK_SAFETY = 1.0


def threshold_logits(thresholds: Sequence[float] | None, n_labels: int) -> np.ndarray:
    """Multi-label thresholds as logits (a probability threshold t is the logit log(t / (1 - t)))."""
    thr = np.clip(label_thresholds(thresholds, n_labels), 1e-7, 1 - 1e-7)
    return np.log(thr / (1.0 - thr))


def decision_margins(logits: np.ndarray, multi_label: bool, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Per row, how far its logits are from changing its decision (always >= 0)."""
    z = np.asarray(logits, dtype=np.float64)
    if len(z) == 0:
        return np.zeros(0)
    if multi_label:
        return np.abs(z - threshold_logits(thresholds, z.shape[1])).min(axis=1)
    if z.shape[1] == 1:
        return np.full(len(z), np.inf)
    top2 = np.sort(z, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def margin_change(reference: np.ndarray, other: np.ndarray, multi_label: bool) -> float:
    """The largest change of any decision margin between two logit matrices of the same rows.

    Multi-class: a margin is a difference of two logits, so it moves by at most max(d) - min(d) of the
    row's logit changes d. Multi-label: a label's distance to its threshold moves by |d|.
    """
    d = np.asarray(other, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if d.size == 0:
        return 0.0
    if multi_label:
        return float(np.abs(d).max())
    return float((d.max(axis=1) - d.min(axis=1)).max())


def rows_near_gate(no_llm_logits: np.ndarray, threshold: float | None, margin: float, multi_label: bool,
                   thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Indices of the rows whose gate decision a logit change of `margin` could flip (none without a gate)."""
    z = np.asarray(no_llm_logits, dtype=np.float64)
    if threshold is None or len(z) == 0:
        return np.zeros(0, dtype=np.int64)
    conf = confidence(logits_to_probabilities(z, multi_label), multi_label, thresholds)
    if multi_label:
        return np.flatnonzero(np.abs(conf - threshold) < margin / 4.0)

    def log_odds(p: np.ndarray | float) -> np.ndarray:
        q = np.clip(p, 1e-12, 1.0 - 1e-12)
        return np.log(q / (1.0 - q))

    return np.flatnonzero(np.abs(log_odds(conf) - log_odds(float(threshold))) < margin)


def rows_to_recheck(logits: np.ndarray, margin: float | np.ndarray, multi_label: bool,
                    thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Indices of the rows whose decision margin is below `margin` (one number, or one per row)."""
    return np.flatnonzero(decision_margins(logits, multi_label, thresholds) < margin)
