"""Multi-label labels as 0/1 rows, as the original API wrote them: named by label_names, else refused clearly."""
from __future__ import annotations

import numpy as np
import pytest

from textclassify.runtime.errors import DataError
from textclassify.runtime.types import ClassificationType, TrainingData, indicator_rows_to_names
from textclassify.train.fusion_utils import check_training_data, encode_true_labels

ML = ClassificationType.MULTI_LABEL


def test_rows_with_label_names_become_name_lists():
    """[[1, 0, 1], ...] with label_names gives the names of the 1 columns, in that order."""
    data = TrainingData(["a", "b"], [[1, 0, 1], np.array([0, 1, 0])], ML, label_names=["x", "y", "z"])
    assert data.labels == [["x", "z"], ["y"]]


def test_rows_without_names_stay_and_fit_refuses_them():
    """Without label_names the rows are kept and label_names stays None; fit says what to pass."""
    data = TrainingData(["a", "b"], [[1, 0], [0, 1]], ML)
    assert data.label_names is None and data.labels == [[1, 0], [0, 1]]
    with pytest.raises(DataError, match=r"^X\.fit: the labels are 0/1 rows without names; pass "):
        check_training_data(data, "X")


def test_name_lists_and_multi_class_are_untouched():
    """Lists of names, and multi-class labels that happen to be ints, are not read as indicators."""
    assert TrainingData(["a"], [["x"]], ML, label_names=["x", "y"]).labels == [["x"]]
    assert TrainingData(["a", "b"], [1, 0]).label_names == ["0", "1"]
    assert indicator_rows_to_names([[1, 2]], ["x", "y"]) is None
    assert indicator_rows_to_names([[1, 0, 1]], ["x", "y"]) is None  # wrong width


def test_true_labels_for_predict_may_be_rows():
    """predict(texts, labels) takes 0/1 rows for multi-label as well."""
    got = encode_true_labels([[1, 0, 1], [0, 1, 0]], 2, ["x", "y", "z"], True)
    assert got.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_label_matrix_is_encode_targets():
    """TrainingData.label_matrix encodes with the one encoder: same arrays, same error for an unknown label."""
    from textclassify.runtime.decoding import encode_targets

    data = TrainingData(["a", "b", "c"], [["x"], ["x", "z"], []], ML, label_names=["x", "y", "z"])
    assert data.label_matrix().tolist() == encode_targets(data.labels, ["x", "y", "z"], True).tolist()
    with pytest.raises(DataError, match=r"^labels\[1\]: unknown label 'q'"):
        TrainingData(["a", "b"], ["x", "q"], label_names=["x", "y"]).label_matrix()
