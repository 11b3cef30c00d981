"""Choose the cascade's gate threshold on held-out predictions made with and without the LLM.

A row skips the LLM when the confidence of its no-LLM answer (runtime.gate.confidence: top probability,
or for multi-label the smallest distance of a label from its threshold) reaches the threshold. Every
distinct confidence on the held-out rows is a candidate threshold. The target is either an accuracy
budget (`max_accuracy_loss` against the always-LLM fused model) or a share of rows still sent to the LLM
(`llm_fraction`). The caller passes out-of-sample predictions (fusion-val, or cross-fitted ones over the
whole fusion split): a threshold chosen on rows the head trained on would trust it too much.

The accuracy budget is held on the loss the always-LLM fused model expects, not on the raw count of
rows won and lost: on a few hundred rows the raw count is a random walk (one row is 0.4 point at
n=240), and taking the lowest threshold it allows follows the noise down to where the LLM matters. A
row's expected loss from skipping is the fused model's probability that its own answer is right minus
its probability that the no-LLM answer is right (multi-label: of the whole label set, labels taken as
independent), 0 where the two answers agree. It is never negative, so the loss only grows as the
threshold falls, and the threshold is the lowest one whose summed expected loss stays within the budget.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from textclassify.runtime.gate import confidence, skips_llm
from textclassify.runtime.manifest import GATE_RULES


def _row_correct(probabilities: np.ndarray, targets: np.ndarray, multi_label: bool,
                 thresholds: Sequence[float] | None) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if not multi_label:
        return p.argmax(axis=1) == np.asarray(targets)
    thr = np.full(p.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return ((p >= thr).astype(np.int64) == np.asarray(targets)).all(axis=1)


def _gate_rows(no_llm_probabilities: np.ndarray, fused_probabilities: np.ndarray, targets: np.ndarray,
               multi_label: bool, thresholds: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per held-out row: the gate's confidence, and whether the answer is right without and with the LLM."""
    return (confidence(no_llm_probabilities, multi_label, thresholds),
            _row_correct(no_llm_probabilities, targets, multi_label, thresholds),
            _row_correct(fused_probabilities, targets, multi_label, thresholds))


def gate_outcome(threshold: float | None, conf: np.ndarray, right_without: np.ndarray,
                 right_with: np.ndarray) -> dict[str, float]:
    """Accuracy and LLM share on the held-out rows when the gate uses `threshold`."""
    skip = skips_llm(conf, threshold)
    n = max(1, len(conf))
    accuracy = float(np.where(skip, right_without, right_with).mean()) if len(conf) else 0.0
    return {"accuracy": accuracy, "llm_fraction": float(1.0 - skip.sum() / n), "skipped": int(skip.sum())}


def expected_skip_loss(no_llm_probabilities: np.ndarray, fused_probabilities: np.ndarray, multi_label: bool,
                       thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Each row's accuracy loss from skipping the LLM, as the always-LLM fused model sees it: P(its own answer is
    right) - P(the no-LLM answer is right) under its probabilities, floored at 0 (0 where the answers agree)."""
    fused = np.asarray(fused_probabilities, dtype=np.float64)
    without = np.asarray(no_llm_probabilities, dtype=np.float64)
    if not multi_label:
        rows = np.arange(len(fused))
        return np.clip(fused[rows, fused.argmax(1)] - fused[rows, without.argmax(1)], 0.0, None)
    thr = np.full(fused.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)

    def p_labels_right(answer: np.ndarray) -> np.ndarray:
        return np.prod(np.where(answer, fused, 1.0 - fused), axis=1)

    return np.clip(p_labels_right(fused >= thr) - p_labels_right(without >= thr), 0.0, None)


def choose_gate_threshold(no_llm_probabilities: np.ndarray, fused_probabilities: np.ndarray, targets: np.ndarray,
                          multi_label: bool, thresholds: Sequence[float] | None = None, *,
                          enabled: bool = True, max_accuracy_loss: float = 0.005,
                          llm_fraction: float | None = None, source: str = "held-out") -> dict[str, Any]:
    """The manifest's "gate" block: rule, threshold (None: every row asks the LLM) and what it did on `source`."""
    rule = GATE_RULES["multi_label" if multi_label else "multi_class"]
    conf, right_without, right_with = _gate_rows(no_llm_probabilities, fused_probabilities, targets, multi_label,
                                                 thresholds)
    n = len(conf)
    always = float(right_with.mean()) if n else 0.0
    target: dict[str, Any] = ({"llm_fraction": llm_fraction} if llm_fraction is not None
                              else {"max_accuracy_loss": max_accuracy_loss})
    expected = expected_skip_loss(no_llm_probabilities, fused_probabilities, multi_label, thresholds)
    threshold: float | None = None
    if enabled and n:
        candidates = np.unique(conf)[::-1]  # highest first: each step skips more rows
        if llm_fraction is not None:
            must_skip = math.ceil((1.0 - llm_fraction) * n - 1e-9)
            if must_skip > 0:
                threshold = float(np.sort(conf)[::-1][min(must_skip, n) - 1])
        else:
            for t in candidates:
                if expected[conf >= t].sum() / n > max_accuracy_loss + 1e-12:
                    break
                threshold = float(t)
    gated = gate_outcome(threshold, conf, right_without, right_with)
    expected_cost = float(expected[skips_llm(conf, threshold)].sum() / n) if n else 0.0
    return {
        "rule": rule, "threshold": threshold, "enabled": bool(enabled), "target": target,
        "chosen_on": {"source": source, "n": int(n), "accuracy_always_llm": always,
                      "accuracy_no_llm": float(right_without.mean()) if n else 0.0,
                      "accuracy_gated": gated["accuracy"], "accuracy_cost": always - gated["accuracy"],
                      "expected_accuracy_cost": expected_cost,
                      "llm_fraction": gated["llm_fraction"], "llm_calls_saved": gated["skipped"]},
    }


def gate_curve(no_llm_probabilities: np.ndarray, fused_probabilities: np.ndarray, targets: np.ndarray,
               multi_label: bool, thresholds: Sequence[float] | None = None,
               fractions: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
               ) -> list[dict[str, float]]:
    """Accuracy at each share of rows sent to the LLM (the most confident rows skip it first)."""
    conf, right_without, right_with = _gate_rows(no_llm_probabilities, fused_probabilities, targets, multi_label,
                                                 thresholds)
    order = np.argsort(-conf, kind="stable")
    n = len(conf)
    rows = []
    for fraction in fractions:
        skip = np.zeros(n, dtype=bool)
        skip[order[:int(round((1.0 - fraction) * n))]] = True
        rows.append({"llm_fraction": float(1.0 - skip.mean()) if n else 0.0,
                     "accuracy": float(np.where(skip, right_without, right_with).mean()) if n else 0.0})
    return rows


def held_out_report(threshold: float | None, no_llm_probabilities: np.ndarray, fused_probabilities: np.ndarray,
                    targets: np.ndarray, multi_label: bool,
                    thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """What a threshold does on held-out rows: LLM calls made and saved, accuracy gated and always-LLM."""
    conf, right_without, right_with = _gate_rows(no_llm_probabilities, fused_probabilities, targets, multi_label,
                                                 thresholds)
    outcome = gate_outcome(threshold, conf, right_without, right_with)
    always = float(right_with.mean()) if len(conf) else 0.0
    return {"n": int(len(conf)), "llm_calls": int(len(conf) - outcome["skipped"]),
            "llm_calls_saved": outcome["skipped"], "llm_fraction": outcome["llm_fraction"],
            "accuracy_always_llm": always, "accuracy_no_llm": float(right_without.mean()) if len(conf) else 0.0,
            "accuracy_gated": outcome["accuracy"], "accuracy_cost": always - outcome["accuracy"]}
