"""Labelled data from a DataFrame or CSV into TrainingData, validated before any expensive work.

Every error names the column, the row index and the offending value.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from textclassify.runtime.errors import DataError
from textclassify.runtime.types import ClassificationType, TrainingData


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a UTF-8 CSV; a non-UTF-8 byte or a malformed file is a DataError naming the file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror}).") from None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8 at byte {e.start} (line {line}): {raw[e.start:e.start + 1]!r}; "
            "re-save the file as UTF-8."
        ) from None
    try:
        return pd.read_csv(path, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: not a readable CSV file ({e}).") from None


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _check_columns(df: pd.DataFrame, text_column: str, label_columns: Sequence[str]) -> None:
    dupes = sorted({str(c) for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise DataError(f"columns: duplicate column names {dupes}; each column name must appear once.")
    available = [str(c) for c in df.columns]
    for col in [text_column, *label_columns]:
        if col not in df.columns:
            raise DataError(f"column {col!r}: not found in the data (columns: {available}).")
    if len(df) == 0:
        raise DataError("data: 0 rows; training needs labelled rows.")


def _check_texts(df: pd.DataFrame, text_column: str) -> list[str]:
    texts = []
    for index, value in zip(df.index, df[text_column]):
        if not isinstance(value, str):
            raise DataError(
                f"column {text_column!r}, row {index}: expected a non-empty string, got {value!r} "
                f"({type(value).__name__})."
            )
        if not value.strip():
            raise DataError(f"column {text_column!r}, row {index}: text is empty or only whitespace ({value!r}).")
        texts.append(value)
    return texts


def _label_cells(df: pd.DataFrame, col: str, convert: Callable[[Any, str], Any]) -> list[Any]:
    """`convert(value, where)` of each cell of a label column; a missing cell is an error naming its row."""
    out = []
    for index, value in zip(df.index, df[col]):
        where = f"column {col!r}, row {index}"
        if _is_missing(value):
            raise DataError(f"{where}: label is missing (NaN).")
        out.append(convert(value, where))
    return out


def _binary_cell(value: Any, where: str) -> int:
    if isinstance(value, bool) or value in (0, 1) and not isinstance(value, str):
        return int(value)
    raise DataError(f"{where}: expected 0 or 1, got {value!r}.")


def _class_name_cell(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a class name (string), got {value!r} ({type(value).__name__}); the LLM "
                        "is prompted with class names, so map codes to words.")
    if not value.strip():
        raise DataError(f"{where}: class name is empty.")
    return value.strip()


def _binary_column(df: pd.DataFrame, col: str) -> list[int]:
    return _label_cells(df, col, _binary_cell)


def _class_name_labels(df: pd.DataFrame, col: str) -> list[str]:
    return _label_cells(df, col, _class_name_cell)


def _one_hot_labels(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    matrix = [_binary_column(df, col) for col in cols]
    labels = []
    for row, index in enumerate(df.index):
        hits = [cols[j] for j in range(len(cols)) if matrix[j][row] == 1]
        if len(hits) != 1:
            what = "no class" if not hits else f"several classes {hits}"
            raise DataError(
                f"columns {list(cols)}, row {index}: multi-class one-hot row has {what}; exactly one must be 1."
            )
        labels.append(hits[0])
    return labels


def _label_count_problems(labels: list[Any], names: list[str], where: str, multi: bool) -> list[str]:
    """Too few classes, and every label seen fewer than twice, in order."""
    counts: Counter[str] = Counter()
    for lab in labels:
        counts.update(lab if multi else [lab])
    present = [n for n in names if counts[n] > 0]
    problems = []
    if len(present) < 2 and not multi:
        problems.append(f"{where}: only one class ({present[0] if present else 'none'!r}) in the data; "
                        "a classifier needs at least 2.")
    problems += [f"{where}: label {name!r} is seen {counts[name]} time(s); each label needs at least 2 examples."
                 for name in names if counts[name] < 2]
    return problems


def _check_label_counts(labels: list[Any], names: list[str], label_columns: Sequence[str], multi: bool) -> None:
    problems = _label_count_problems(labels, names, f"columns {list(label_columns)}", multi)
    if problems:
        raise DataError(problems[0])


def read_labelled_frame(
    df: pd.DataFrame, text_column: str, label_columns: Sequence[str], multi_label: bool
) -> TrainingData:
    """Validate columns, texts and label values of `df` (no per-label counts: also fits evaluation data)."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"data: expected a pandas DataFrame or TrainingData, got {type(df).__name__}.")
    _check_columns(df, text_column, label_columns)
    texts = _check_texts(df, text_column)
    label_columns = list(label_columns)
    if multi_label:
        matrix = [_binary_column(df, col) for col in label_columns]
        labels: list[Any] = [[label_columns[j] for j in range(len(label_columns)) if matrix[j][i]]
                             for i in range(len(df))]
        names = label_columns
    elif len(label_columns) == 1:
        labels = _class_name_labels(df, label_columns[0])
        names = sorted(set(labels))
    else:
        labels = _one_hot_labels(df, label_columns)
        names = label_columns
    kind = ClassificationType.MULTI_LABEL if multi_label else ClassificationType.MULTI_CLASS
    return TrainingData(texts=texts, labels=labels, classification_type=kind, label_names=list(names))


def dataframe_to_training_data(
    df: pd.DataFrame, text_column: str, label_columns: Sequence[str], multi_label: bool
) -> TrainingData:
    """Validate `df` for training and turn it into TrainingData (every label seen at least twice)."""
    data = read_labelled_frame(df, text_column, label_columns, multi_label)
    _check_label_counts(list(data.labels), list(data.label_names or []), label_columns, multi_label)
    return data


def training_data_problems(data: TrainingData) -> list[str]:
    """Every problem of a TrainingData built by hand that training would reject (texts, labels, label counts),
    with the same rules and wording as a DataFrame's checks."""
    problems = [f"texts[{i}]: expected a non-empty string, got {text!r}."
                for i, text in enumerate(data.texts) if not isinstance(text, str) or not text.strip()]
    names = list(data.label_names or [])
    known: list[Any] = []
    for i, lab in enumerate(data.labels):
        if data.is_multi_label and not isinstance(lab, (list, tuple, set)):
            problems.append(f"labels[{i}]: expected a list of label names for multi-label data, got {lab!r}.")
            continue
        items = list(lab) if data.is_multi_label else [lab]
        problems += [f"labels[{i}]: unknown label {item!r}; label_names are {names}." for item in items
                     if item not in names]
        kept = [item for item in items if item in names]
        known.append(kept if data.is_multi_label else (kept[0] if kept else None))
    return problems + _label_count_problems(known, names, "labels", data.is_multi_label)


def validate_training_data(data: TrainingData) -> TrainingData:
    """Check a TrainingData built by hand with the same rules as a DataFrame; raises the first problem."""
    problems = training_data_problems(data)
    if problems:
        raise DataError(problems[0])
    return data
