"""The fusion-train YAML layout: mapping onto the flat config, errors named by YAML path, default file."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from textclassify.runtime.errors import ConfigError
from textclassify.train.config import DEFAULT_CONFIG, validate_config
from textclassify.train.yaml_config import (
    FIELDS,
    apply_overrides,
    default_config_text,
    load_config,
    parse_config,
    write_default_config,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fusion_config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _leaves(config: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in config.items():
        out |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return out


def _error(document: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    return str(info.value)


def test_every_flat_key_has_exactly_one_yaml_key():
    """Each key of the classifier config is reachable from the YAML file, and only once."""
    flat = [f.flat for f in FIELDS if f.flat]
    assert sorted(flat) == sorted(_leaves(DEFAULT_CONFIG))


def test_seed_layout_maps_onto_the_flat_config(tmp_path):
    """data/models.ml/models.llm/fusion/output_dir land on the flat keys AutoFusionClassifier reads."""
    path = _write(tmp_path, """
data:
  train_path: data/train.csv
  test_path: data/test.csv
  text_column: body
  label_columns: [action, comedy]
  multi_label: true
models:
  ml:
    model_name: distilroberta-base
    num_epochs: 2
    learning_rate: 3e-5
    max_length: 128
  llm:
    provider: openai-compatible
    model: qwen2.5
    base_url: http://127.0.0.1:8000/v1
    temperature: 0.2
    score_method: json
fusion:
  hidden_dims: [32]
  ml_lr: 2e-5
  num_epochs: 4
output_dir: runs/v1
cache_dir: cache
fusion_split: 0.3
seed: 7
""")
    cfg = load_config(path)
    expected = validate_config({
        "text_column": "body", "label_columns": ["action", "comedy"], "multi_label": True,
        "ml_model": "distilroberta-base", "llm_provider": "openai-compatible", "llm_model": "qwen2.5",
        "llm_base_url": "http://127.0.0.1:8000/v1", "output_dir": "runs/v1", "cache_dir": "cache",
        "fusion_split": 0.3, "seed": 7,
        "ml": {"num_epochs": 2, "learning_rate": 3e-5, "max_length": 128},
        "llm": {"temperature": 0.2, "score_method": "json"},
        "fusion": {"hidden_dims": [32], "ml_lr": 2e-5, "num_epochs": 4},
    })
    assert cfg.classifier == expected
    assert (cfg.train_path, cfg.test_path) == ("data/train.csv", "data/test.csv")


def test_unknown_top_level_key():
    """An unknown top-level key names itself and lists the known ones."""
    assert _error({"outptu_dir": "x"}) == (
        "outptu_dir: unknown key (known keys: data, models, fusion, gate, output_dir, cache_dir, fusion_split, seed)")


def test_unknown_nested_key():
    """An unknown key inside a section names its full path and the section's known keys."""
    assert _error({"models": {"llm": {"modle": "x"}}}) == (
        "models.llm.modle: unknown key (known keys under models.llm: provider, model, base_url, temperature, "
        "max_concurrency, timeout_s, max_retries, score_method, on_unusable_answer, deadline_s, price_per_million)")


def test_api_key_in_the_file_is_refused_without_echoing_it():
    """An API key in the config is rejected, pointing at the environment, and its value is not repeated."""
    message = _error({"models": {"llm": {"api_key": "sk-secret-123"}}})
    assert message == ("models.llm.api_key: unknown key; API keys are read from the environment only "
                       "(for example DEEPSEEK_API_KEY), never from a config file.")
    assert "sk-secret" not in message


def test_wrong_type():
    """A string where an integer belongs is rejected with the YAML path."""
    assert _error({"models": {"ml": {"num_epochs": "3"}}}) == (
        "models.ml.num_epochs: expected 'auto' or a positive integer, got '3'")


def test_out_of_range_value():
    """An impossible value is rejected with the YAML path and the allowed interval."""
    message = _error({"models": {"llm": {"temperature": 3}}})
    assert message == "models.llm.temperature: expected a float in [0, 2], got 3"


def test_nested_list_element():
    """A bad list element is named by its index."""
    assert _error({"fusion": {"hidden_dims": [64, -3]}}) == "fusion.hidden_dims[1]: expected a positive integer, got -3"


def test_section_that_is_not_a_mapping():
    """A section given as a scalar says a mapping was expected."""
    assert _error({"models": {"ml": 3}}) == "models.ml: expected a mapping of keys, got 3"


def test_cross_key_errors_speak_yaml_paths():
    """Checks spanning two keys name both in the YAML's terms."""
    assert _error({"models": {"llm": {"provider": "openai-compatible"}}}) == (
        "models.llm.base_url: expected an http(s) URL when models.llm.provider is 'openai-compatible', got None")
    assert _error({"data": {"multi_label": True}}) == (
        "data.label_columns: expected one 0/1 column per label (at least 2) when data.multi_label is true, "
        "got ['label']")


def test_data_paths_are_checked():
    """data.train_path must be a path or null."""
    assert _error({"data": {"train_path": 5}}) == "data.train_path: expected a CSV file path or null, got 5"


def test_empty_sections_and_empty_file_give_the_defaults(tmp_path):
    """A section whose keys are all commented out, or an empty file, means the defaults."""
    assert parse_config({"fusion": None}).classifier == validate_config({})
    assert load_config(_write(tmp_path, "# nothing yet\n")).classifier == validate_config({})


def test_ml_model_alias_and_its_conflict():
    """models.ml.ml_model (the seed's spelling) works; giving it with model_name is an error."""
    assert parse_config({"models": {"ml": {"ml_model": "bert-base-cased"}}}).classifier["ml_model"] == "bert-base-cased"
    assert _error({"models": {"ml": {"ml_model": "a", "model_name": "b"}}}) == (
        "models.ml.ml_model: give either model_name or ml_model under models.ml, not both.")


def test_scientific_notation_is_a_float(tmp_path):
    """`2e-5` (no dot) reads as a float, not the string PyYAML's YAML 1.1 rules would give."""
    cfg = load_config(_write(tmp_path, "models:\n  ml:\n    learning_rate: 2e-5\nfusion:\n  fusion_lr: 1E-3\n"))
    assert cfg.classifier["ml"]["learning_rate"] == 2e-5
    assert cfg.classifier["fusion"]["fusion_lr"] == 1e-3


def test_duplicate_key_is_an_error(tmp_path):
    """A key given twice is an error with its line, not a silent last-one-wins."""
    path = _write(tmp_path, "seed: 1\nfusion_split: 0.2\nseed: 2\n")
    with pytest.raises(ConfigError, match=re.escape("not valid YAML (line 3, column 1): duplicate key 'seed'.")):
        load_config(path)


def test_malformed_yaml_names_file_and_line(tmp_path):
    """A syntax error names the file, the line and the problem."""
    path = _write(tmp_path, "data:\n  label_columns: [a, b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not valid YAML (line 3, column 1): expected ',' or ']', but got '<stream end>'."


def test_top_level_must_be_a_mapping(tmp_path):
    """A YAML list at the top level is refused."""
    path = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: expected a mapping of keys at the top level, got list."


def test_missing_file(tmp_path):
    """A config path that does not exist is a ConfigError naming it."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read the config file (No such file or directory)."


def test_overrides_win_over_the_file(tmp_path):
    """Overrides (command-line flags) replace file values, including a value given under an alias."""
    path = _write(tmp_path, "models:\n  ml:\n    ml_model: from-file\n  llm:\n    model: file-llm\nseed: 3\n")
    cfg = load_config(path, {"models.ml.model_name": "from-flag", "models.llm.model": "flag-llm",
                             "data.train_path": "t.csv"})
    assert cfg.classifier["ml_model"] == "from-flag"
    assert cfg.classifier["llm_model"] == "flag-llm"
    assert cfg.classifier["seed"] == 3
    assert cfg.train_path == "t.csv"


def test_override_of_an_unknown_path():
    """Only YAML paths of the schema can be overridden."""
    with pytest.raises(ConfigError, match=re.escape("models.llm.key: unknown key; cannot override it.")):
        apply_overrides({}, {"models.llm.key": "x"})


def test_default_config_round_trip(tmp_path):
    """The written default file loads back to exactly the defaults."""
    path = write_default_config(tmp_path / "fusion_config.yaml")
    cfg = load_config(path)
    assert cfg.classifier == validate_config({})
    assert (cfg.train_path, cfg.test_path) == (None, None)


def test_default_config_comments_every_key():
    """Every key line of the default file follows a comment line saying what it does."""
    lines = default_config_text().splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"\s*\w+:", line)]
    assert len(keys) == len(FIELDS) + 6  # and the sections data, models, ml, llm, fusion, gate
    for i in keys:
        assert lines[i - 1].strip().startswith("# "), lines[i]


def test_default_config_refuses_to_overwrite(tmp_path):
    """An existing file is kept unless overwriting is asked for."""
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="already exists"):
        write_default_config(path)
    assert path.read_text() == "seed: 1\n"
    write_default_config(path, overwrite=True)
    assert load_config(path).classifier == validate_config({})
