"""Stratified, seeded splits for stage 1 and stage 2."""
from __future__ import annotations

import numpy as np
import pytest

from textclassify.runtime.errors import DataError
from textclassify.train.splits import make_splits


def test_splits_partition_and_stratify():
    """The four splits partition the rows and every class appears in each."""
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    s = make_splits(y, False, 0.2, 0.1, 0.25, seed=0, n_labels=3)
    allidx = np.concatenate([s.stage1_train, s.stage1_val, s.fusion_train, s.fusion_val])
    assert sorted(allidx.tolist()) == list(range(100))
    assert 18 <= len(s.fusion_train) + len(s.fusion_val) <= 22
    for part in (s.stage1_train, s.fusion_train, s.fusion_val):
        assert set(y[part]) == {0, 1, 2}


def test_splits_are_seeded():
    """The same seed gives the same splits; another seed another."""
    y = np.array([0, 1] * 50)
    a, b = make_splits(y, False, 0.2, 0.1, 0.25, 7, 2), make_splits(y, False, 0.2, 0.1, 0.25, 7, 2)
    c = make_splits(y, False, 0.2, 0.1, 0.25, 8, 2)
    assert a.fusion_val.tolist() == b.fusion_val.tolist()
    assert a.fusion_val.tolist() != c.fusion_val.tolist()


def test_multi_label_splits():
    """Multi-label rows are stratified by their rarest label."""
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    s = make_splits(y, True, 0.2, 0.1, 0.25, 0, 4)
    assert len(np.intersect1d(s.fusion_train, s.stage1_train)) == 0


def test_too_few_rows():
    """Too few rows for the splits is a clear DataError saying how many are needed."""
    with pytest.raises(DataError, match=r"^data: 20 rows is too few for fusion_split=0.2, ml.val_split=0.1 and "
                                        r"fusion.val_split=0.25 with 3 labels; at least 60 rows are needed.$"):
        make_splits(np.array([0, 1, 2, 0] * 5), False, 0.2, 0.1, 0.25, 0, 3)
