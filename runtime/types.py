"""Core value types shared by training and serving (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class ClassificationType(str, Enum):
    """Whether each text has exactly one class or any subset of the labels."""

    MULTI_CLASS = "multi_class"
    MULTI_LABEL = "multi_label"


@dataclass
class TrainingData:
    """Texts with labels: a class name per text (multi-class) or a list of names (multi-label)."""

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
        if self.label_names is None:
            names: set[str] = set()
            for lab in self.labels:
                names.update(lab if isinstance(lab, (list, tuple, set)) else [lab])
            self.label_names = sorted(str(n) for n in names)

    @property
    def is_multi_label(self) -> bool:
        return self.classification_type is ClassificationType.MULTI_LABEL

    def label_matrix(self) -> np.ndarray:
        """Targets as an int array: class indices [n] (multi-class) or a 0/1 matrix [n, C]."""
        index = {name: i for i, name in enumerate(self.label_names or [])}
        if not self.is_multi_label:
            return np.array([index[lab] for lab in self.labels], dtype=np.int64)
        out = np.zeros((len(self.labels), len(index)), dtype=np.int64)
        for row, labs in enumerate(self.labels):
            for lab in labs:
                out[row, index[lab]] = 1
        return out


@dataclass
class ClassificationResult:
    """Predictions (label strings or lists), probabilities [n, C] in `labels` order, metadata."""

    predictions: list[Any]
    probabilities: np.ndarray
    labels: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.predictions)
