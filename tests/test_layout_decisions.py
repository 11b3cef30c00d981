"""Probabilities to decisions: one rule (`runtime.decoding.decide`) on DEFAULT_THRESHOLD and per-label thresholds."""
from __future__ import annotations

import numpy as np
import pytest

from textclassify.runtime import constants as K
from textclassify.runtime.decoding import decide, decode_predictions, label_thresholds
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
