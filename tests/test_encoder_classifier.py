"""RoBERTaClassifier: the encoder alone, fit/predict on the tiny offline RoBERTa."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.support.data import LABELS, make_tickets
from textclassify.runtime.errors import ConfigError, DataError, NotFittedError
from textclassify.runtime.types import ClassificationType, TrainingData
from textclassify.train.encoder_classifier import RoBERTaClassifier

torch.set_num_threads(1)


def _data(n: int, seed: int, multi_label: bool = False) -> TrainingData:
    rows = make_tickets(n, seed=seed, multi_label=multi_label)
    kind = ClassificationType.MULTI_LABEL if multi_label else ClassificationType.MULTI_CLASS
    return TrainingData([t for t, _ in rows], [labs if multi_label else labs[0] for _, labs in rows], kind)


def _classifier(model_dir: str, **overrides) -> RoBERTaClassifier:
    params = dict(num_epochs=10, max_length=32, learning_rate=3e-3, batch_size=8, early_stopping_patience=3)
    return RoBERTaClassifier(model_dir, **{**params, **overrides})


@pytest.fixture(scope="module")
def fitted(tiny_roberta_dir: str) -> RoBERTaClassifier:
    """A RoBERTaClassifier fitted on 120 synthetic tickets."""
    return _classifier(tiny_roberta_dir).fit(_data(120, seed=3))


def test_fit_predict_learns_the_tickets(fitted: RoBERTaClassifier) -> None:
    """Held-out accuracy is well above chance (1/3), and the result has the documented shape."""
    test = _data(60, seed=4)
    result = fitted.predict(test.texts, test.labels)
    assert result.labels == LABELS
    assert set(result.predictions) <= set(LABELS)
    assert result.probabilities.shape == (60, 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    metrics = result.metadata["metrics"]
    assert metrics["n"] == 60
    assert metrics["accuracy"] >= 0.6
    assert fitted.splits_ == {"train": 108, "val": 12}  # 10% of 41, 41 and 38 rows, rounded per class


def test_predict_proba_is_softmax_of_logits(fitted: RoBERTaClassifier) -> None:
    """predict_proba is the softmax of predict_logits, and predict's argmax agrees with it."""
    texts = _data(10, seed=5).texts
    logits = fitted.predict_logits(texts)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.predict_proba(texts), expected, atol=1e-6)
    assert fitted.predict(texts).predictions == [LABELS[i] for i in logits.argmax(axis=1)]
    assert "metrics" not in fitted.predict(texts).metadata


def test_same_seed_gives_the_same_model(tiny_roberta_dir: str) -> None:
    """Two fits with one seed give identical logits (the fresh head is seeded too)."""
    data, texts = _data(120, seed=3), _data(8, seed=6).texts
    a = _classifier(tiny_roberta_dir, num_epochs=2).fit(data).predict_logits(texts)
    b = _classifier(tiny_roberta_dir, num_epochs=2).fit(data).predict_logits(texts)
    np.testing.assert_array_equal(a, b)


def test_multi_label(tiny_roberta_dir: str) -> None:
    """Multi-label data gives label lists, independent sigmoid probabilities and multi-label metrics."""
    clf = _classifier(tiny_roberta_dir, num_epochs=3).fit(_data(120, seed=3, multi_label=True))
    test = _data(20, seed=4, multi_label=True)
    result = clf.predict(test.texts, test.labels)
    assert clf.multi_label_ and clf.thresholds_ == [0.5, 0.5, 0.5]
    assert all(isinstance(p, list) and set(p) <= set(LABELS) for p in result.predictions)
    assert ((result.probabilities >= 0) & (result.probabilities <= 1)).all()
    expected = [[LABELS[j] for j in range(3) if row[j] >= 0.5] for row in result.probabilities]
    assert result.predictions == expected
    assert {"hamming_loss", "subset_accuracy"} <= set(result.metadata["metrics"])


def test_unfitted_model_says_call_fit() -> None:
    """Predicting before fit names the class and says what to do."""
    with pytest.raises(NotFittedError) as err:
        RoBERTaClassifier().predict(["hello"])
    assert str(err.value) == "This RoBERTaClassifier instance is not fitted yet. Call 'fit' first."


def test_invalid_parameter_is_rejected_when_fit_starts(tiny_roberta_dir: str) -> None:
    """__init__ stores anything; fit checks with the config's rules and names the key."""
    clf = RoBERTaClassifier(tiny_roberta_dir, num_epochs=0)
    with pytest.raises(ConfigError) as err:
        clf.fit(_data(30, seed=1))
    assert str(err.value) == "RoBERTaClassifier: ml.num_epochs: expected 'auto' or a positive integer, got 0"


def test_fit_rejects_a_dataframe(tiny_roberta_dir: str) -> None:
    """fit takes TrainingData and says how to build it from a DataFrame."""
    with pytest.raises(DataError) as err:
        RoBERTaClassifier(tiny_roberta_dir).fit(pd.DataFrame({"text": ["a"], "label": ["b"]}))
    assert str(err.value) == (
        "RoBERTaClassifier.fit: expected TrainingData, got DataFrame; build it from a DataFrame with "
        "FusionUtils.to_training_data(df, text_column, label_columns, multi_label).")


def test_predict_checks_labels_before_running(fitted: RoBERTaClassifier) -> None:
    """A label count mismatch or an unknown label is a DataError naming what is wrong."""
    with pytest.raises(DataError) as err:
        fitted.predict(["a", "b", "c"], ["billing", "shipping"])
    assert str(err.value) == "labels: 2 labels for 3 texts; they must match."
    with pytest.raises(DataError) as err:
        fitted.predict(["a"], ["refunds"])
    assert str(err.value) == "labels[0]: unknown label 'refunds'; expected one of ['billing', 'shipping', 'technical']."


def test_missing_model_is_a_config_error(tmp_path) -> None:
    """A model folder that does not exist fails with ConfigError naming ml_model."""
    with pytest.raises(ConfigError, match=r"^ml_model: cannot load '.*nowhere'"):
        RoBERTaClassifier(str(tmp_path / "nowhere"), max_length=32).fit(_data(30, seed=1))
