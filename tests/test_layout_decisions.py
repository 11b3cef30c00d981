"""Probabilities to decisions: one rule (`runtime.decoding.decide`) on DEFAULT_THRESHOLD and per-label thresholds."""
from __future__ import annotations

import numpy as np
import pytest

from textclassify.runtime import constants as K
from textclassify.runtime.decoding import decide, decode_predictions, label_thresholds, scores_to_probabilities
from textclassify.runtime.recheck import threshold_logits
from textclassify.train.fusion_utils import result_from_probabilities

P = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.7], [0.49, 0.51, 0.0]])
LABELS = ["a", "b", "c"]


def test_multi_class_is_argmax():
    """Multi-class: the index of the largest probability; an empty batch gives an empty int array."""
    assert decide(P, multi_label=False).tolist() == [1, 2, 1]
    empty = decide(np.zeros((0, 3)), multi_label=False)
    assert empty.shape == (0,) and empty.dtype == np.int64


def test_multi_label_uses_default_threshold_inclusive():
    """Multi-label without thresholds: on when the probability reaches DEFAULT_THRESHOLD (equal counts)."""
    assert decide(P, multi_label=True).tolist() == [[0, 1, 0], [1, 0, 1], [0, 1, 0]]


def test_per_label_thresholds():
    """Each label has its own threshold."""
    assert decide(P, multi_label=True, thresholds=[0.1, 0.9, 0.65]).tolist() == [[1, 0, 0], [1, 0, 1], [1, 0, 0]]


def test_the_default_is_read_from_the_constant(monkeypatch):
    """Changing DEFAULT_THRESHOLD changes every path that decides without thresholds."""
    monkeypatch.setattr(K, "DEFAULT_THRESHOLD", 0.55)
    assert label_thresholds(None, 3).tolist() == [0.55] * 3
    assert decide(P, multi_label=True).tolist() == [[0, 0, 0], [1, 0, 1], [0, 0, 0]]
    assert decode_predictions(P, LABELS, True) == [[], ["a", "c"], []]
    assert result_from_probabilities(P, LABELS, True).predictions == [[], ["a", "c"], []]
    assert np.allclose(threshold_logits(None, 2), np.log(0.55 / 0.45))


@pytest.mark.parametrize("multi_label", [False, True])
def test_names_follow_the_decision(multi_label):
    """decode_predictions names exactly what decide marks."""
    names = decode_predictions(P, LABELS, multi_label, thresholds=[0.3, 0.5, 0.3])
    targets = decide(P, multi_label, thresholds=[0.3, 0.5, 0.3])
    if multi_label:
        assert names == [[LABELS[j] for j in np.flatnonzero(row)] for row in targets]
    else:
        assert names == [LABELS[i] for i in targets]


def test_scores_to_probabilities_one_rule():
    """Raw LLM scores as probabilities: rows renormalised (all-zero: uniform, negatives floored), labels clipped."""
    raw = np.array([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 3.0]])
    got = scores_to_probabilities(raw, multi_label=False)
    np.testing.assert_allclose(got[:2], [[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    assert got[2].argmax() == 2 and (got > 0).all() and np.allclose(got.sum(axis=1), 1.0)
    assert got.dtype == np.float32
    np.testing.assert_allclose(scores_to_probabilities(np.array([[1.2, -0.1, 0.4]]), True), [[1.0, 0.0, 0.4]],
                               rtol=1e-6)


def test_llm_alone_raw_is_the_same_in_the_classifier_and_the_calibration_report():
    """LLMClassifier's uncalibrated probabilities and the calibration report's 'raw' log loss read one rule."""
    from textclassify.runtime.metrics import log_loss
    from textclassify.train.calibration import calibration_report
    from textclassify.train.llm_classifiers import DeepSeekClassifier

    raw = np.array([[0.7, 0.2, 0.1], [0.0, 0.0, 0.0], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]] * 5)
    targets = np.array([0, 1, 2, 1] * 5)
    clf = DeepSeekClassifier()
    clf.multi_label_, clf.calibrator_ = False, None  # the state fit() leaves without calibrate=True
    report = calibration_report(raw, raw, targets, False)
    assert report["log_loss_before"] == pytest.approx(log_loss(clf._probabilities(raw), targets, False))
    assert np.isfinite(report["log_loss_before"])  # the all-zero rows are uniform, not 0/0
