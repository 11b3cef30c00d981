"""The original API's constructor style: `RoBERTaClassifier(config={...})`, `DeepSeekClassifier(label_columns=...)`."""
from __future__ import annotations

import re

import pytest

from textclassify.runtime.errors import ConfigError
from textclassify.train.encoder_classifier import RoBERTaClassifier
from textclassify.train.llm_classifiers import DeepSeekClassifier, OpenAIClassifier


def test_config_dict_sets_the_same_attributes_as_keywords():
    """config={...} is the keywords as a dict: the objects' settings are equal."""
    by_config = RoBERTaClassifier(config={"model_name": "tiny", "num_epochs": 2, "learning_rate": 1e-3})
    by_keywords = RoBERTaClassifier("tiny", num_epochs=2, learning_rate=1e-3)
    assert by_config.to_config() == by_keywords.to_config()
    llm = DeepSeekClassifier(config={"model": "deepseek-chat", "temperature": 0.1}, label_columns=["a", "b"])
    assert llm.to_config() == DeepSeekClassifier("deepseek-chat", temperature=0.1).to_config()
    assert llm.labels == ["a", "b"]


def test_label_columns_inside_config_means_labels():
    """The original API's label name works inside config too."""
    assert OpenAIClassifier(config={"label_columns": ["x", "y"]}).labels == ["x", "y"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"config": {"api_key": "sk-secret"}}, "DeepSeekClassifier: config: 'api_key' is not accepted; API keys come "
                                           "from the environment (or the api_key argument), never from a config."),
    ({"config": {"modle": "x"}}, "DeepSeekClassifier: config: unknown key 'modle' (known keys: base_url, "),
    ({"model": "a", "config": {"model": "b"}}, "DeepSeekClassifier: model is given both as an argument ('a') and "
                                               "in config ('b'); give it once."),
    ({"labels": ["a", "b"], "label_columns": ["a", "b"]}, "DeepSeekClassifier: give either labels or label_columns "
                                                          "(the original API's name), not both."),
    ({"config": {"labels": ["a", "b"], "label_columns": ["a", "b"]}},
     "DeepSeekClassifier: config: give either 'labels' or 'label_columns', not both."),
    ({"config": ["model", "x"]}, "DeepSeekClassifier: config: expected a dict of DeepSeekClassifier's keyword "
                                 "arguments, got list"),
])
def test_config_errors_name_the_key(kwargs, message):
    """Unknown keys, secrets in a config and double settings are ConfigErrors that say which key."""
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        DeepSeekClassifier(**kwargs)


def test_the_secret_never_lands_on_the_object():
    """A refused api_key in config is not stored anywhere on the classifier."""
    with pytest.raises(ConfigError):
        DeepSeekClassifier(config={"api_key": "sk-secret"})
    clf = DeepSeekClassifier(config={"model": "m"})
    assert "sk-secret" not in repr(vars(clf))
