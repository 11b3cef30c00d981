"""Training data validation: every bad input is a DataError naming the column, row and value."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from textclassify.runtime.errors import DataError
from textclassify.train.data import dataframe_to_training_data, read_csv


def frame(texts, labels, column="label"):
    return pd.DataFrame({"text": texts, column: labels})


def test_class_name_column():
    """One class-name column gives string labels and sorted label names."""
    td = dataframe_to_training_data(frame(["a", "b", "c", "d"], ["x", "y", "x", "y"]), "text", ["label"], False)
    assert td.labels == ["x", "y", "x", "y"] and td.label_names == ["x", "y"]


def test_one_hot_columns():
    """Several one-hot columns give the column name of the hot one."""
    df = pd.DataFrame({"text": list("abcd"), "pos": [1, 0, 1, 0], "neg": [0, 1, 0, 1]})
    td = dataframe_to_training_data(df, "text", ["pos", "neg"], False)
    assert td.labels == ["pos", "neg", "pos", "neg"] and td.label_names == ["pos", "neg"]


def test_multi_label_columns():
    """Multi-label 0/1 columns give a list of names per row (possibly empty)."""
    df = pd.DataFrame({"text": list("abcde"), "a": [1, 1, 0, 0, 1], "b": [0, 1, 1, 0, 1]})
    td = dataframe_to_training_data(df, "text", ["a", "b"], True)
    assert td.labels == [["a"], ["a", "b"], ["b"], [], ["a", "b"]]
    assert td.label_matrix().tolist() == [[1, 0], [1, 1], [0, 1], [0, 0], [1, 1]]


@pytest.mark.parametrize("df, cols, multi, message", [
    (frame(["a", "b"], ["x", "y"]), ["sentiment"], False,
     "column 'sentiment': not found in the data (columns: ['text', 'label'])."),
    (frame(["a", None, "c", "d"], ["x", "y", "x", "y"]), ["label"], False,
     "column 'text', row 1: expected a non-empty string, got nan (float)."),
    (frame(["a", "   ", "c", "d"], ["x", "y", "x", "y"]), ["label"], False,
     "column 'text', row 1: text is empty or only whitespace ('   ')."),
    (frame(["a", "b", "c", "d"], ["x", np.nan, "x", "y"]), ["label"], False,
     "column 'label', row 1: label is missing (NaN)."),
    (frame(["a", "b", "c", "d"], [1, 2, 1, 2]), ["label"], False,
     "column 'label', row 0: expected a class name (string), got 1 (int); the LLM is prompted with class "
     "names, so map codes to words."),
    (frame(["a", "b", "c"], ["x", "x", "y"]), ["label"], False,
     "columns ['label']: label 'y' is seen 1 time(s); each label needs at least 2 examples."),
    (frame(["a", "b", "c"], ["x", "x", "x"]), ["label"], False,
     "columns ['label']: only one class ('x') in the data; a classifier needs at least 2."),
    (frame([], []), ["label"], False, "data: 0 rows; training needs labelled rows."),
    (pd.DataFrame({"text": list("ab"), "p": [1, 1], "n": [0, 1]}), ["p", "n"], False,
     "columns ['p', 'n'], row 1: multi-class one-hot row has several classes ['p', 'n']; exactly one must be 1."),
    (pd.DataFrame({"text": list("ab"), "p": [1, 0], "n": [0, 0]}), ["p", "n"], False,
     "columns ['p', 'n'], row 1: multi-class one-hot row has no class; exactly one must be 1."),
    (pd.DataFrame({"text": list("ab"), "p": [1, 2], "n": [0, 1]}), ["p", "n"], True,
     "column 'p', row 1: expected 0 or 1, got 2."),
])
def test_bad_input_names_row_column_value(df, cols, multi, message):
    """Each validation rule raises a DataError with a precise message."""
    with pytest.raises(DataError) as e:
        dataframe_to_training_data(df, "text", cols, multi)
    assert str(e.value) == message


def test_duplicate_column_names():
    """Duplicate column names are rejected by name."""
    df = pd.DataFrame([["a", "x", "y"]], columns=["text", "label", "label"])
    with pytest.raises(DataError, match=r"duplicate column names \['label'\]"):
        dataframe_to_training_data(df, "text", ["label"], False)


def test_long_text_is_accepted():
    """A 100,000-character text is valid input (the tokenizer truncates it later)."""
    df = frame(["a" * 100_000, "b", "c", "d"], ["x", "y", "x", "y"])
    td = dataframe_to_training_data(df, "text", ["label"], False)
    assert len(td.texts[0]) == 100_000


def test_non_utf8_csv(tmp_path):
    """A CSV with a non-UTF-8 byte names the file, byte offset and line."""
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text,label\nok,x\ncaf\xe9,y\n")
    with pytest.raises(DataError) as e:
        read_csv(path)
    assert str(e.value) == f"{path}: not valid UTF-8 at byte 19 (line 3): b'\\xe9'; re-save the file as UTF-8."
