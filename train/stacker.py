"""The logistic-regression stacker baseline on the same out-of-sample inputs the fusion MLP sees."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier


def fit_stacker(features: np.ndarray, targets: np.ndarray, multi_label: bool, seed: int):
    """LogisticRegression (multinomial) or one per label (multi-label) on concat(logits, calibrated scores)."""
    base = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    if multi_label:
        # A label absent from fusion-train cannot be fitted; predict it as never on.
        model = OneVsRestClassifier(base)
        model.fit(features, targets)
        return model
    return base.fit(features, targets)


def stacker_probabilities(model, features: np.ndarray, n_labels: int, multi_label: bool) -> np.ndarray:
    """Probabilities [n, C] in label order (columns for classes unseen in training are 0)."""
    proba = model.predict_proba(features)
    if multi_label:
        return np.asarray(proba, dtype=np.float32)
    out = np.zeros((len(features), n_labels), dtype=np.float32)
    out[:, model.classes_] = proba
    return out
