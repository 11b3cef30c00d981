"""Core value types shared by training and serving (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from textclassify.runtime.decoding import encode_targets


class ClassificationType(str, Enum):
    """Whether each text has exactly one class or any subset of the labels."""

    MULTI_CLASS = "multi_class"
    MULTI_LABEL = "multi_label"


def indicator_rows_to_names(rows: Any, names: Any) -> list[list[str]] | None:
    """Multi-label rows given as 0/1 indicators ([1, 0, 1], one per label in `names` order) as lists of names;
    None when `rows` are not all such rows (or `names` is not known)."""
    if not names or not isinstance(rows, (list, tuple, np.ndarray)) or len(rows) == 0:
        return None
    out = []
    for row in rows:
        if isinstance(row, (str, bytes)) or not isinstance(row, (list, tuple, np.ndarray)) or len(row) != len(names):
            return None
        if not all(isinstance(v, (bool, int, np.integer, np.bool_)) and v in (0, 1) for v in row):
            return None
        out.append([names[j] for j, v in enumerate(row) if v])
    return out


def _looks_like_indicators(rows: Any) -> bool:
    return bool(rows) and all(isinstance(r, (list, tuple, np.ndarray)) and len(r) and all(
        isinstance(v, (bool, int, np.integer, np.bool_)) and not isinstance(v, str) for v in r) for r in rows)


@dataclass
class TrainingData:
    """Texts with labels: a class name per text (multi-class) or a list of names (multi-label).

    Multi-label labels may also be 0/1 rows ([1, 0, 1]) in `label_names` order; they become name lists.
    Without `label_names` such rows stay as given and `label_names` stays None (FusionEnsemble names them
    with its LLM classifier's labels).
    """

    texts: list[str]
    labels: list[Any]
    classification_type: ClassificationType = ClassificationType.MULTI_CLASS
    label_names: list[str] | None = None

    def __post_init__(self) -> None:
        self.classification_type = ClassificationType(self.classification_type)
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"TrainingData: {len(self.texts)} texts but {len(self.labels)} labels; they must match."
            )
        if self.classification_type is ClassificationType.MULTI_LABEL:
            named = indicator_rows_to_names(self.labels, self.label_names)
            if named is not None:
                self.labels = named
            elif self.label_names is None and _looks_like_indicators(self.labels):
                return
        if self.label_names is None:
            names: set[str] = set()
            for lab in self.labels:
                names.update(lab if isinstance(lab, (list, tuple, set)) else [lab])
            self.label_names = sorted(str(n) for n in names)

    @property
    def is_multi_label(self) -> bool:
        return self.classification_type is ClassificationType.MULTI_LABEL

    def label_matrix(self) -> np.ndarray:
        """Targets as an int array: class indices [n] (multi-class) or a 0/1 matrix [n, C] (`encode_targets`)."""
        return encode_targets(self.labels, list(self.label_names or []), self.is_multi_label)


@dataclass
class ClassificationResult:
    """Predictions (label strings or lists), probabilities [n, C] in `labels` order, metadata."""

    predictions: list[Any]
    probabilities: np.ndarray
    labels: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.predictions)
