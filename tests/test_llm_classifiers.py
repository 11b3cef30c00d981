"""LLM classifiers: thin wrappers over LLMScorer, against the loopback fake LLM server."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support.data import LABELS, make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify.runtime.errors import ConfigError, DataError, NotFittedError
from textclassify.runtime.types import ClassificationType, TrainingData
from textclassify.train.llm_classifiers import (
    DeepSeekClassifier,
    GeminiClassifier,
    OpenAIClassifier,
    OpenAICompatibleClassifier,
)


def _data(n: int, seed: int, multi_label: bool = False) -> TrainingData:
    rows = make_tickets(n, seed=seed, multi_label=multi_label)
    kind = ClassificationType.MULTI_LABEL if multi_label else ClassificationType.MULTI_CLASS
    return TrainingData([t for t, _ in rows], [labs if multi_label else labs[0] for _, labs in rows], kind)


def _fake(server: FakeLLMServer, tmp_path, **kwargs) -> OpenAICompatibleClassifier:
    return OpenAICompatibleClassifier("fake", base_url=server.base_url, cache_dir=str(tmp_path / "cache"), **kwargs)


def test_zero_shot_without_training_data(llm_server: FakeLLMServer, tmp_path) -> None:
    """With labels given, fit() needs no data; predict reports metrics and per-call LLM usage."""
    test = _data(30, seed=4)
    with _fake(llm_server, tmp_path, labels=LABELS).fit() as clf:
        result = clf.predict(test.texts, test.labels)
    assert llm_server.requests == 30
    assert result.labels == LABELS and result.probabilities.shape == (30, 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert result.metadata["metrics"]["accuracy"] >= 0.6  # the keyword-reading fake LLM is decent
    assert result.metadata["llm_usage"]["requests"] == 30
    assert result.metadata["llm_score_method"] == "logprobs"
    assert result.metadata["calibrated"] is False
    assert result.metadata["llm_provider"] == "openai-compatible" and result.metadata["llm_model"] == "fake"


def test_second_predict_is_served_from_the_cache(llm_server: FakeLLMServer, tmp_path) -> None:
    """Predicting the same texts again makes no request; the usage delta counts cache hits."""
    texts = _data(12, seed=4).texts
    clf = _fake(llm_server, tmp_path, labels=LABELS).fit()
    first = clf.predict_proba(texts)
    again = clf.predict(texts)
    clf.close()
    assert llm_server.requests == 12
    assert again.metadata["llm_usage"]["requests"] == 0
    assert again.metadata["llm_usage"]["cache_hits"] == 12
    np.testing.assert_array_equal(again.probabilities, first)


def test_fit_learns_labels_and_calibrates(llm_server: FakeLLMServer, tmp_path) -> None:
    """fit(data) takes the label set from the data; calibrate=True fits temperature scaling on its scores."""
    train, test = _data(60, seed=3), _data(20, seed=4)
    clf = _fake(llm_server, tmp_path, calibrate=True).fit(train)
    assert clf.labels_ == LABELS and not clf.multi_label_
    assert type(clf.calibrator_).__name__ == "TemperatureCalibrator"
    assert clf.fit_usage_["requests"] == 60
    raw = clf.predict_scores(test.texts)
    result = clf.predict(test.texts, test.labels)
    assert result.metadata["calibrated"] is True
    np.testing.assert_allclose(result.probabilities, clf.calibrator_.transform(raw), atol=1e-6)
    assert (result.probabilities.argmax(axis=1) == raw.argmax(axis=1)).all()  # temperature keeps the argmax
    clf.close()


def test_multi_label_scores_by_json_and_isotonic(llm_server: FakeLLMServer, tmp_path) -> None:
    """Multi-label data: JSON scores, one isotonic curve per label, label lists as predictions."""
    train, test = _data(60, seed=3, multi_label=True), _data(15, seed=4, multi_label=True)
    clf = _fake(llm_server, tmp_path, calibrate=True).fit(train)
    result = clf.predict(test.texts, test.labels)
    clf.close()
    assert result.metadata["llm_score_method"] == "json"
    assert type(clf.calibrator_).__name__ == "IsotonicCalibrator"
    assert all(isinstance(p, list) for p in result.predictions)
    assert "hamming_loss" in result.metadata["metrics"]


def test_labels_order_given_is_kept(llm_server: FakeLLMServer, tmp_path) -> None:
    """labels=[...] fixes the column order even when the data sorts them differently."""
    order = ["technical", "billing", "shipping"]
    clf = _fake(llm_server, tmp_path, labels=order).fit(_data(30, seed=3))
    assert clf.predict(["ticket: refund invoice sir"]).labels == order
    clf.close()


def test_labels_that_differ_from_the_data_are_rejected(llm_server: FakeLLMServer, tmp_path) -> None:
    """A label set that does not match the training data's is a DataError naming both."""
    with pytest.raises(DataError) as err:
        _fake(llm_server, tmp_path, labels=["billing", "other"]).fit(_data(30, seed=3))
    assert str(err.value) == ("OpenAICompatibleClassifier.fit: labels=['billing', 'other'] differ from the "
                              "training data's labels ['billing', 'shipping', 'technical'].")


def test_fit_without_data_needs_labels(llm_server: FakeLLMServer, tmp_path) -> None:
    """fit() alone must be told the labels; calibration needs data."""
    with pytest.raises(ConfigError) as err:
        _fake(llm_server, tmp_path).fit()
    assert str(err.value) == ("OpenAICompatibleClassifier.fit: without training data, pass labels=[...] to the "
                              "constructor.")
    with pytest.raises(ConfigError) as err:
        _fake(llm_server, tmp_path, labels=LABELS, calibrate=True).fit()
    assert str(err.value) == "OpenAICompatibleClassifier.fit: calibrate=True needs training data to calibrate on."


def test_invalid_settings_name_the_key(tmp_path) -> None:
    """Settings are checked with the config's rules when fit starts."""
    with pytest.raises(ConfigError) as err:
        OpenAICompatibleClassifier("m", base_url="http://127.0.0.1:9/v1", temperature=5, labels=LABELS).fit()
    assert str(err.value) == "OpenAICompatibleClassifier: llm.temperature: expected a float in [0, 2], got 5"
    with pytest.raises(ConfigError) as err:
        OpenAICompatibleClassifier("m", labels=LABELS).fit()
    assert str(err.value) == ("OpenAICompatibleClassifier: llm_base_url: expected an http(s) URL when llm_provider "
                              "is 'openai-compatible', got None")


def test_provider_presets_and_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each class is one provider preset; without a key the error names the environment variable."""
    assert [c.provider for c in (DeepSeekClassifier, OpenAIClassifier, GeminiClassifier,
                                 OpenAICompatibleClassifier)] == ["deepseek", "openai", "gemini", "openai-compatible"]
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        DeepSeekClassifier(labels=LABELS).fit()
    assert str(err.value) == ("No API key for llm_provider 'deepseek': set the environment variable DEEPSEEK_API_KEY "
                              "(API keys are read from the environment only).")


def test_api_key_is_used_but_never_shown(llm_server: FakeLLMServer, tmp_path) -> None:
    """A key passed to the constructor reaches the client, not the repr, the config or the result."""
    secret = "sk-test-DO-NOT-SHOW-1234"
    clf = GeminiClassifier(base_url=llm_server.base_url, api_key=secret, labels=LABELS,
                           cache_dir=str(tmp_path / "cache")).fit()
    result = clf.predict(["ticket 1: my parcel is late hey"])
    clf.close()
    assert clf.llm_model_ == "gemini-2.0-flash"  # the preset's default model
    assert llm_server.bodies[-1]["model"] == "gemini-2.0-flash"
    for shown in (repr(clf), str(clf.to_config()), str(result.metadata)):
        assert secret not in shown


def test_unfitted_and_closed(llm_server: FakeLLMServer, tmp_path) -> None:
    """Predicting before fit, or after close, says what to do."""
    with pytest.raises(NotFittedError) as err:
        OpenAIClassifier().predict(["x"])
    assert str(err.value) == "This OpenAIClassifier instance is not fitted yet. Call 'fit' first."
    clf = _fake(llm_server, tmp_path, labels=LABELS).fit()
    clf.close()
    with pytest.raises(NotFittedError) as err:
        clf.predict(["x"])
    assert str(err.value) == "This OpenAICompatibleClassifier instance was closed. Call 'fit' again."


def test_failed_refit_leaves_the_classifier_unfitted(llm_server: FakeLLMServer, tmp_path) -> None:
    """When calibration scoring fails for good, the LLMError surfaces and the previous fit is not kept."""
    from textclassify.runtime.errors import LLMError

    clf = _fake(llm_server, tmp_path, labels=LABELS, max_retries=0).fit()
    clf.calibrate = True
    llm_server.inject("500", times=1000)
    with pytest.raises(LLMError) as err:
        clf.fit(_data(30, seed=3))
    assert err.value.status_code == 500
    with pytest.raises(NotFittedError):
        clf.predict(["x"])
    clf.close()
