"""One label and text validator: training_data_problems collects, validate_training_data raises the first."""
from __future__ import annotations

import pytest

from textclassify.runtime.errors import DataError
from textclassify.runtime.types import ClassificationType, TrainingData
from textclassify.train.data import training_data_problems, validate_training_data
from textclassify.train.fusion_utils import FusionUtils


def _bad() -> TrainingData:
    return TrainingData(["fine", "  ", "ok", "good", "meh"], ["x", "x", "zzz", "y", "x"], label_names=["x", "y"])


def test_problems_are_collected_in_order():
    """Texts first, then labels, then label counts; the unknown label does not count as a class."""
    assert training_data_problems(_bad()) == [
        "texts[1]: expected a non-empty string, got '  '.",
        "labels[2]: unknown label 'zzz'; label_names are ['x', 'y'].",
        "labels: label 'y' is seen 1 time(s); each label needs at least 2 examples.",
    ]


def test_the_raising_path_raises_the_first_problem():
    """fit's check and the report's list agree: the error raised is the first one listed."""
    with pytest.raises(DataError) as info:
        validate_training_data(_bad())
    assert str(info.value) == training_data_problems(_bad())[0]
    assert FusionUtils.validate_fusion_data(_bad())["errors"] == training_data_problems(_bad())


def test_one_class_and_multi_label_shapes():
    """A single class, and a multi-label row that is not a list, are problems too."""
    assert training_data_problems(TrainingData(["a", "b"], ["x", "x"])) == [
        "labels: only one class ('x') in the data; a classifier needs at least 2."]
    multi = TrainingData(["a", "b", "c"], [["x"], "y", ["x", "y"]], ClassificationType.MULTI_LABEL,
                         label_names=["x", "y"])
    assert training_data_problems(multi) == [
        "labels[1]: expected a list of label names for multi-label data, got 'y'.",
        "labels: label 'y' is seen 1 time(s); each label needs at least 2 examples."]
    assert validate_training_data(TrainingData(["a", "b", "c", "d"], ["x", "y", "x", "y"])).labels[0] == "x"
