"""The seed's fusion_config.yaml loads as printed: its keys are documented aliases of ours."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from textclassify.runtime.errors import ConfigError
from textclassify.train.yaml_config import ALIASES, IGNORED, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]

# The seed README's "Configuration File" block, verbatim.
SEED_YAML = '''\
# fusion_config.yaml
data:
  file_path: "data/train.csv"
  text_column: "text"
  label_columns: ["positive", "neutral", "negative"]
  multi_label: false

models:
  ml:
    model_name: "roberta-base"
    max_length: 512
    learning_rate: 2e-5
    num_epochs: 3
    batch_size: 16

  llm:
    provider: "deepseek"
    model: "deepseek-chat"
    temperature: 0.1
    max_completion_tokens: 150

fusion:
  hidden_dims: [64, 32]
  ml_learning_rate: 1e-5
  fusion_learning_rate: 1e-3
  num_epochs: 10
  batch_size: 16

output_dir: "fusion_output"
'''


def _error(document: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    return str(info.value)


def test_the_example_config_is_the_seed_file():
    """examples/config/fusion_config.yaml is the seed's file, unchanged."""
    assert (ROOT / "examples" / "config" / "fusion_config.yaml").read_text(encoding="utf-8") == SEED_YAML


def test_seed_config_loads_with_every_value_mapped(tmp_path, caplog):
    """Each seed key lands on its own key; max_completion_tokens is accepted with a warning."""
    path = tmp_path / "fusion_config.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="textclassify.config"):
        cfg = load_config(path)
    c = cfg.classifier
    assert cfg.train_path == "data/train.csv"
    assert (c["text_column"], c["label_columns"], c["multi_label"]) == ("text", ["positive", "neutral", "negative"],
                                                                       False)
    assert (c["ml_model"], c["ml"]["max_length"], c["ml"]["learning_rate"]) == ("roberta-base", 512, 2e-5)
    assert (c["ml"]["num_epochs"], c["ml"]["batch_size"]) == (3, 16)
    assert (c["llm_provider"], c["llm_model"], c["llm"]["temperature"]) == ("deepseek", "deepseek-chat", 0.1)
    assert (c["fusion"]["ml_lr"], c["fusion"]["fusion_lr"]) == (1e-5, 1e-3)
    assert (c["fusion"]["hidden_dims"], c["fusion"]["num_epochs"], c["fusion"]["batch_size"]) == ([64, 32], 10, 16)
    assert c["output_dir"] == "fusion_output"
    assert [r.getMessage() for r in caplog.records] == [
        "models.llm.max_completion_tokens: accepted for compatibility and ignored: " + IGNORED[
            "models.llm.max_completion_tokens"][2] + "."]


@pytest.mark.parametrize(("alias", "target", "value"), [
    ("data.file_path", "data.train_path", "a.csv"),
    ("fusion.ml_learning_rate", "fusion.ml_lr", 3e-5),
    ("fusion.fusion_learning_rate", "fusion.fusion_lr", 2e-3),
])
def test_alias_sets_its_key_and_alias_plus_key_is_an_error(alias, target, value):
    """The alias means the same as its key; giving both is an error naming both."""
    section, a_leaf = alias.split(".")
    t_leaf = target.split(".")[1]
    assert ALIASES[alias] == target
    via_alias = parse_config({section: {a_leaf: value}})
    via_key = parse_config({section: {t_leaf: value}})
    assert via_alias == via_key
    assert _error({section: {a_leaf: value, t_leaf: value}}) == (
        f"{alias}: give either {t_leaf} or {a_leaf} under {section}, not both.")


def test_alias_values_are_checked_under_the_key_rules():
    """A bad value given through an alias gets the key's own rule."""
    assert _error({"fusion": {"ml_learning_rate": -1}}) == "fusion.ml_lr: expected a float in (0, 1], got -1"


def test_ignored_seed_key_is_still_checked():
    """max_completion_tokens must be a positive integer even though it is ignored."""
    assert _error({"models": {"llm": {"max_completion_tokens": "many"}}}) == (
        "models.llm.max_completion_tokens: expected a positive integer, got 'many'")
    assert _error({"models": {"llm": {"max_completion_tokens": 0}}}) == (
        "models.llm.max_completion_tokens: expected a positive integer, got 0")


def test_a_flag_replaces_a_value_given_under_the_alias(tmp_path):
    """--data (data.train_path) wins over the file's data.file_path instead of clashing with it."""
    path = tmp_path / "fusion_config.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")
    assert load_config(path, {"data.train_path": "other.csv"}).train_path == "other.csv"
