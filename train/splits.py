"""Seeded, stratified splits: stage-1 train/val and fusion-train/val, robust to rare classes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from textclassify.runtime.errors import DataError


def _strata(targets: np.ndarray, multi_label: bool) -> np.ndarray:
    """One stratum per row: the class (multi-class) or the row's rarest label (multi-label)."""
    if not multi_label:
        return np.asarray(targets)
    freq = targets.sum(axis=0)
    out = np.full(len(targets), -1)
    for i, row in enumerate(targets):
        on = np.flatnonzero(row)
        if len(on):
            out[i] = on[np.argmin(freq[on])]
    return out


def stratified_split(targets: np.ndarray, fraction: float, multi_label: bool,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held) with about `fraction` of each stratum held out (>= 1 where a stratum has >= 2)."""
    strata = _strata(np.asarray(targets), multi_label)
    rest, held = [], []
    for value in np.unique(strata):
        idx = np.flatnonzero(strata == value)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        held.extend(idx[:k])
        rest.extend(idx[k:])
    return np.sort(np.array(rest, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


@dataclass(frozen=True)
class FusionSplits:
    """Row indices into the training data for each stage."""

    stage1_train: np.ndarray
    stage1_val: np.ndarray
    fusion_train: np.ndarray
    fusion_val: np.ndarray

    @property
    def fusion_rows(self) -> np.ndarray:
        """What the combiners learn on: the fusion split and stage 1's validation rows. The encoder never trains
        on either (the validation rows only pick where stage 1 stops), so its logits for both are
        out-of-sample, and on small data they are 40% more rows to choose and fit a combiner on
        (benchmarks/README.md)."""
        return np.concatenate([self.stage1_val, self.fusion_train, self.fusion_val])


def make_splits(targets: np.ndarray, multi_label: bool, fusion_split: float, ml_val_split: float,
                fusion_val_split: float, seed: int, n_labels: int) -> FusionSplits:
    """The recipe's split: fusion split held out from stage 1; each side cut again for early stopping."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets)
    n = len(targets)
    need = _rows_needed(fusion_split, ml_val_split, fusion_val_split, n_labels)
    if n < need:
        raise DataError(
            f"data: {n} rows is too few for fusion_split={fusion_split:g}, ml.val_split={ml_val_split:g} and "
            f"fusion.val_split={fusion_val_split:g} with {n_labels} labels; at least {need} rows are needed."
        )
    stage1, fusion = stratified_split(targets, fusion_split, multi_label, rng)
    s1_train, s1_val = stratified_split(targets[stage1], ml_val_split, multi_label, rng)
    f_train, f_val = stratified_split(targets[fusion], fusion_val_split, multi_label, rng)
    return FusionSplits(stage1[s1_train], stage1[s1_val], fusion[f_train], fusion[f_val])


def _rows_needed(fusion_split: float, ml_val: float, fusion_val: float, n_labels: int) -> int:
    """Smallest row count whose every split gets at least a couple of rows per label."""
    smallest = min(fusion_split * fusion_val, fusion_split * (1 - fusion_val),
                   (1 - fusion_split) * ml_val, (1 - fusion_split) * (1 - ml_val))
    return int(np.ceil(max(2, n_labels) / smallest))
