"""Stratified, seeded splits for stage 1 and stage 2."""
from __future__ import annotations

import numpy as np
import pytest

from textclassify.runtime.errors import DataError
from textclassify.train.splits import make_splits


def test_splits_partition_and_stratify():
    """The four splits partition the rows, and each class keeps its share in the fusion split (per-class rounding)."""
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    s = make_splits(y, False, 0.2, 0.1, 0.25, seed=0, n_labels=3)
    allidx = np.concatenate([s.stage1_train, s.stage1_val, s.fusion_train, s.fusion_val])
    assert sorted(allidx.tolist()) == list(range(100))
    fusion = np.concatenate([s.fusion_train, s.fusion_val])
    assert np.bincount(y[fusion], minlength=3).tolist() == [12, 6, 2]
    assert np.bincount(y[s.fusion_val], minlength=3).tolist() == [3, 2, 1]  # 25% of 12, 6, 2 (at least 1)
    for part in (s.stage1_train, s.stage1_val, s.fusion_train, s.fusion_val):
        assert set(y[part]) == {0, 1, 2}


def test_splits_are_seeded():
    """The same seed gives the same splits; another seed another."""
    y = np.array([0, 1] * 50)
    a, b = make_splits(y, False, 0.2, 0.1, 0.25, 7, 2), make_splits(y, False, 0.2, 0.1, 0.25, 7, 2)
    c = make_splits(y, False, 0.2, 0.1, 0.25, 8, 2)
    assert a.fusion_val.tolist() == b.fusion_val.tolist()
    assert a.fusion_val.tolist() != c.fusion_val.tolist()


def test_multi_label_splits_stratify_by_the_rarest_label():
    """Multi-label rows are stratified by their rarest label: a rare label that always comes with a common one
    still gets exactly its share of the fusion split and reaches every split."""
    rng = np.random.default_rng(0)
    y = np.zeros((200, 4), dtype=int)
    y[:, 0] = 1  # on every row
    y[rng.choice(200, 80, replace=False), 1] = 1
    y[rng.choice(200, 60, replace=False), 2] = 1
    rare = np.arange(0, 200, 8)[:20]  # label 3 on 20 rows, always alongside label 0
    y[rare, 3] = 1
    s = make_splits(y, True, 0.2, 0.1, 0.25, 0, 4)
    fusion = np.concatenate([s.fusion_train, s.fusion_val])
    assert len(np.intersect1d(fusion, np.concatenate([s.stage1_train, s.stage1_val]))) == 0
    assert int(y[fusion, 3].sum()) == 4  # 20% of the 20 rows whose rarest label is 3
    for part in (s.stage1_train, s.stage1_val, s.fusion_train, s.fusion_val):
        assert y[part, 3].sum() >= 1


def test_too_few_rows():
    """Too few rows for the splits is a clear DataError saying how many are needed."""
    with pytest.raises(DataError, match=r"^data: 20 rows is too few for fusion_split=0.2, ml.val_split=0.1 and "
                                        r"fusion.val_split=0.25 with 3 labels; at least 60 rows are needed.$"):
        make_splits(np.array([0, 1, 2, 0] * 5), False, 0.2, 0.1, 0.25, 0, 3)
