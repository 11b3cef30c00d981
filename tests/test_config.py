"""Config schema: defaults, merging and one message shape for every rejected key."""
from __future__ import annotations

import pytest

from textclassify.runtime.errors import ConfigError
from textclassify.train.config import DEFAULT_CONFIG, RULES, validate_config


def test_every_default_passes_its_own_rule():
    """Each default value satisfies the rule validate_config applies to it (element rules included)."""
    for path, (check, expected) in RULES.items():
        if path.endswith("[]"):
            continue
        value = DEFAULT_CONFIG
        for part in path.split("."):
            value = value[part]
        assert check(value), f"default of {path} ({value!r}) is not {expected}"
        element = RULES.get(f"{path}[]")
        if element is not None:
            assert all(element[0](item) for item in value), path


def test_validated_config_is_a_copy():
    """Changing a validated config (or the dict passed in) never changes the defaults or the caller's dict."""
    given = {"fusion": {"hidden_dims": [8]}}
    cfg = validate_config(given)
    cfg["fusion"]["hidden_dims"].append(4)
    cfg["ml"]["batch_size"] = 99
    assert given == {"fusion": {"hidden_dims": [8]}}
    assert validate_config({})["ml"]["batch_size"] == DEFAULT_CONFIG["ml"]["batch_size"] != 99
    assert DEFAULT_CONFIG["fusion"]["hidden_dims"] == validate_config({})["fusion"]["hidden_dims"]


def test_nested_override_keeps_other_defaults():
    """Overriding one nested key leaves its siblings at their defaults."""
    cfg = validate_config({"ml": {"num_epochs": 1}})
    assert cfg["ml"]["num_epochs"] == 1 and cfg["ml"]["batch_size"] == 16


def test_joint_fine_tuning_keys_are_reported_unused(caplog):
    """fit has no joint fine-tuning: fusion.ml_lr / num_epochs / early_stopping_patience away from their defaults
    are still checked, and each is named in a warning instead of being ignored silently."""
    import logging

    with caplog.at_level(logging.WARNING, logger="textclassify.config"):
        validate_config({})
        validate_config({"fusion": {"ml_lr": DEFAULT_CONFIG["fusion"]["ml_lr"]}})
        assert caplog.records == []
        validate_config({"fusion": {"num_epochs": 3, "early_stopping_patience": 1}})
    assert [r.getMessage().split(" = ")[0] for r in caplog.records] == ["fusion.num_epochs",
                                                                        "fusion.early_stopping_patience"]
    assert "not used" in caplog.records[0].getMessage()


@pytest.mark.parametrize("config, message", [
    ({"fusion": {"hidden_dims": [64, -3]}}, "fusion.hidden_dims[1]: expected a positive integer, got -3"),
    ({"fusion": {"ml_lr": -3}}, "fusion.ml_lr: expected a float in (0, 1], got -3"),
    ({"ml": {"batch_size": "16"}}, "ml.batch_size: expected a positive integer, got '16'"),
    ({"ml": {"num_epochs": True}}, "ml.num_epochs: expected 'auto' or a positive integer, got True"),
    ({"fusion_split": 1.0}, "fusion_split: expected a float in (0, 1), got 1.0"),
    ({"llm": {"score_method": "magic"}}, "llm.score_method: expected one of ['auto', 'logprobs', 'json'], got 'magic'"),
    ({"llm_provider": "acme"}, "llm_provider: expected one of ['deepseek', 'gemini', 'local', 'openai', "
                               "'openai-compatible'], got 'acme'"),
    ({"ml": "fast"}, "ml: expected a mapping of keys, got 'fast'"),
    ({"llm_provider": "openai-compatible"},
     "llm_base_url: expected an http(s) URL when llm_provider is 'openai-compatible', got None"),
])
def test_rejections_name_the_key(config, message):
    """Each wrong type or impossible value is a ConfigError naming the key's path."""
    with pytest.raises(ConfigError) as e:
        validate_config(config)
    assert str(e.value) == message


def test_unknown_keys_are_rejected():
    """A typo in a key is an error that lists the known keys at that level."""
    with pytest.raises(ConfigError, match=r"^fusion\.hiden_dims: unknown key \(known keys under fusion: "):
        validate_config({"fusion": {"hiden_dims": [8]}})
    with pytest.raises(ConfigError, match=r"^lable_columns: unknown key"):
        validate_config({"lable_columns": ["x"]})


def test_config_error_is_a_value_error():
    """ConfigError also inherits ValueError, as users of scikit-learn expect."""
    with pytest.raises(ValueError):
        validate_config({"seed": -1})
