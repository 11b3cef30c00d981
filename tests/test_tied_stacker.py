"""The tied stacker (LinearStacker.fit_tied): one weight per component shared by every class, served as a stacker."""
from __future__ import annotations

import numpy as np
import pytest

from textclassify.train.combiners import LinearStacker, head_logits


def _pool_data(n: int, seed: int, w_ml: float, w_lex: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from softmax(w_ml * ml + w_lex * lex): the model fit_tied assumes, with known weights."""
    rng = np.random.default_rng(seed)
    ml, lex = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    z = w_ml * ml + w_lex * lex
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    cal = np.full((n, 3), 0.25)
    cal[np.arange(n), y] = 0.5  # an LLM that is always right, so its weight must come out positive
    return ml, lex, cal, y


def test_weights_are_shared_by_every_class_and_recover_the_pool() -> None:
    """Within each component's block the layer is diagonal, and its raw-scale weight is the same for each class;
    on data drawn from a known pool the encoder/lexical weight ratio comes back."""
    ml, lex, cal, y = _pool_data(3000, 0, 2.0, 1.0)
    head = LinearStacker(3, ("ml", "lexical")).fit_tied(np.hstack([ml, lex, cal]), y, multi_label=False,
                                                       llm_dropout=0.0, seed=0)
    weight = head.linear.weight.detach().numpy()[:, :-1].reshape(3, 3, 3)  # [class, component, class]
    scale = head.feature_scale.numpy().reshape(3, 3)
    raw = np.array([[weight[c, k, c] / scale[k, c] for c in range(3)] for k in range(3)])
    off = weight.copy()
    for k in range(3):
        off[np.arange(3), k, np.arange(3)] = 0.0
    assert np.abs(off).max() == 0.0
    np.testing.assert_allclose(raw, raw[:, :1].repeat(3, axis=1), rtol=1e-4)
    assert raw[0, 0] / raw[1, 0] == pytest.approx(2.0, rel=0.2) and raw[2, 0] > 0


def test_rows_without_the_llm_get_their_own_answer() -> None:
    """With LLM dropout the no-LLM answer (llm_present 0) is as good as the encoder's, and the LLM helps."""
    ml, lex, cal, y = _pool_data(1500, 1, 1.0, 0.0)
    head = LinearStacker(3, ("ml",)).fit_tied(np.hstack([ml, cal]), y, multi_label=False, llm_dropout=0.3, seed=0)
    with_llm = head_logits(head, ml, None, cal).argmax(1)
    without = head_logits(head, ml, None, None).argmax(1)
    assert (with_llm == y).mean() > 0.95
    assert (without == y).mean() >= (ml.argmax(1) == y).mean() - 0.01


def test_multi_label_and_a_missing_class_stay_finite() -> None:
    """Multi-label targets fit per label with the shared weights; a label never seen keeps finite weights."""
    rng = np.random.default_rng(2)
    targets = (rng.uniform(size=(400, 3)) < 0.4).astype(int)
    targets[:, 2] = 0
    ml = rng.normal(size=(400, 3)) + 2 * targets - 1
    cal = np.clip(0.5 + 0.3 * (2 * targets - 1), 0.01, 0.99)
    head = LinearStacker(3, ("ml",)).fit_tied(np.hstack([ml, cal]), targets, multi_label=True, llm_dropout=0.2,
                                              seed=0)
    logits = head_logits(head, ml, None, cal)
    assert np.isfinite(head.linear.weight.detach().numpy()).all() and np.isfinite(logits).all()
    assert ((logits >= 0) == targets).mean() > 0.95
