"""The config schema as data: defaults, one constraint per key, and one validator with one message shape.

Validation runs before any training or LLM request; an error names the key's path
(`fusion.hidden_dims[1]: expected a positive integer, got -3`).
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from textclassify.runtime import constants as K
from textclassify.runtime.errors import ConfigError
from textclassify.runtime.llm.providers import PROVIDERS
from textclassify.runtime.validation import check_base_url, is_int, short_repr
from textclassify.train import constants as TK

DEFAULT_CONFIG: dict[str, Any] = {
    "llm_provider": "deepseek",
    "label_columns": ["label"],
    "multi_label": False,
    "text_column": "text",
    "ml_model": TK.DEFAULT_ML_MODEL,
    "llm_model": None,
    "llm_base_url": None,
    "cache_dir": K.DEFAULT_CACHE_DIR,
    "output_dir": TK.DEFAULT_OUTPUT_DIR,
    "fusion_split": 0.2,
    "seed": 42,
    "ml": {
        # "auto": chosen from the encoder and the data (train/schedule.py); a number is used as given.
        "num_epochs": "auto", "batch_size": 16, "learning_rate": "auto", "max_length": 256,
        "warmup_ratio": 0.1, "weight_decay": 0.01, "val_split": 0.1, "early_stopping_patience": 2,
    },
    "lexical": "auto",
    "llm": {
        "temperature": K.DEFAULT_TEMPERATURE, "max_concurrency": K.DEFAULT_MAX_CONCURRENCY,
        "timeout_s": K.DEFAULT_TIMEOUT_S, "max_retries": K.DEFAULT_MAX_RETRIES, "score_method": "auto",
        "on_unusable_answer": "raise",
        "deadline_s": None,  # overall seconds per scoring call; None: derived from timeout_s and max_retries
        "price_per_million": None,  # {"input": USD, "output": USD} per million tokens; None: the built-in table
    },
    "fusion": {
        "hidden_dims": [64, 32], "dropout": 0.1, "ml_lr": 1e-5, "fusion_lr": 1e-3,
        "num_epochs": 10, "batch_size": 16, "warmup_epochs": 200, "val_split": 0.25,
        "early_stopping_patience": 3, "cv_folds": 5, "cv_repeats": 3, "threshold_objective": "macro_f1",
        "llm_dropout": 0.25,  # share of training rows that see no LLM scores (llm_present = 0)
    },
    # The cascade: rows whose no-LLM answer is confident enough skip the LLM. `gate: off` disables it.
    "gate": {"enabled": True, "max_accuracy_loss": 0.005, "llm_fraction": None},
}

Check = Callable[[Any], bool]

log = logging.getLogger("textclassify.config")

# Keys of the original recipe that fit does not use, and why. They are still checked, and a value other
# than the default is reported as unused rather than silently ignored.
_FROZEN = ("fit has no joint fine-tuning of the encoder: every combiner is fitted on its frozen out-of-sample "
           "logits, so the cross-fitted comparison that picks it sees the rows as they will be served")
NOT_USED_BY_FIT: dict[str, str] = {
    "fusion.ml_lr": _FROZEN, "fusion.num_epochs": _FROZEN, "fusion.early_stopping_patience": _FROZEN,
    "fusion.val_split": ("the combiner is chosen by k-fold cross-fitting over the whole fusion split and stage 1's "
                         "validation rows (fusion.cv_folds)"),
}


def _is_num(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) or math.isfinite(v)  # math.isfinite overflows on ints beyond float range


def _pos_int(v: Any) -> bool:
    return is_int(v) and v > 0


def _nonneg_int(v: Any) -> bool:
    return is_int(v) and v >= 0


def _float_in(lo: float, hi: float, lo_open: bool = True, hi_open: bool = False) -> Check:
    def check(v: Any) -> bool:
        if not _is_num(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return check


def _interval(lo: float, hi: float, lo_open: bool = True, hi_open: bool = False) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _opt_str(v: Any) -> bool:
    return v is None or _nonempty_str(v)


def _auto_or(check: Check) -> Check:
    return lambda v: v == "auto" or check(v)


def _choice(options: tuple[str, ...]) -> Check:
    return lambda v: isinstance(v, str) and v in options


# path -> (check, what was expected). Lists are checked element-wise by the "[]" entries.
RULES: dict[str, tuple[Check, str]] = {
    "llm_provider": (_choice(tuple(PROVIDERS)), f"one of {sorted(PROVIDERS)}"),
    "label_columns": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0, "a non-empty list of column names"),
    "label_columns[]": (_nonempty_str, "a column name (non-empty string)"),
    "multi_label": (lambda v: isinstance(v, bool), "a boolean"),
    "text_column": (_nonempty_str, "a column name (non-empty string)"),
    "ml_model": (_nonempty_str, "a hub name or local path (non-empty string)"),
    "llm_model": (_opt_str, "a model name, a GGUF path or null"),
    "llm_base_url": (lambda v: v is None or (isinstance(v, str) and v.startswith(("http://", "https://"))),
                     "an http(s) URL or null"),
    "cache_dir": (_nonempty_str, "a directory path (non-empty string)"),
    "output_dir": (_nonempty_str, "a directory path (non-empty string)"),
    "fusion_split": (_float_in(0, 1, hi_open=True), f"a float in {_interval(0, 1, hi_open=True)}"),
    "seed": (_nonneg_int, "a non-negative integer"),
    "ml.num_epochs": (_auto_or(_pos_int), "'auto' or a positive integer"),
    "ml.batch_size": (_pos_int, "a positive integer"),
    "ml.learning_rate": (_auto_or(_float_in(0, 1)), f"'auto' or a float in {_interval(0, 1)}"),
    "ml.max_length": (lambda v: is_int(v) and 8 <= v <= 8192, "an integer in [8, 8192]"),
    "ml.warmup_ratio": (_float_in(0, 1, lo_open=False, hi_open=True), "a float in [0, 1)"),
    "ml.weight_decay": (_float_in(0, 1, lo_open=False), "a float in [0, 1]"),
    "ml.val_split": (_float_in(0, 1, hi_open=True), "a float in (0, 1)"),
    "ml.early_stopping_patience": (_pos_int, "a positive integer"),
    "lexical": (_choice(("auto", "on", "off")), "one of ['auto', 'on', 'off']"),
    "llm.temperature": (_float_in(0, 2, lo_open=False), "a float in [0, 2]"),
    "llm.max_concurrency": (lambda v: is_int(v) and 1 <= v <= 1024, "an integer in [1, 1024]"),
    "llm.timeout_s": (_float_in(0, 3600), "a number of seconds in (0, 3600]"),
    "llm.max_retries": (lambda v: is_int(v) and 0 <= v <= 50, "an integer in [0, 50]"),
    "llm.score_method": (_choice(K.SCORE_METHODS), f"one of {list(K.SCORE_METHODS)}"),
    "llm.on_unusable_answer": (_choice(K.UNUSABLE_ANSWER_POLICIES), f"one of {list(K.UNUSABLE_ANSWER_POLICIES)}"),
    "llm.deadline_s": (lambda v: v is None or _float_in(0, 604800)(v), "null or a number of seconds in (0, 604800]"),
    "fusion.hidden_dims": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0,
                           "a non-empty list of positive integers"),
    "fusion.hidden_dims[]": (lambda v: is_int(v) and 0 < v <= 65536, "a positive integer"),
    "fusion.dropout": (_float_in(0, 1, lo_open=False, hi_open=True), "a float in [0, 1)"),
    "fusion.ml_lr": (_float_in(0, 1), f"a float in {_interval(0, 1)}"),
    "fusion.fusion_lr": (_float_in(0, 1), f"a float in {_interval(0, 1)}"),
    "fusion.num_epochs": (_nonneg_int, "a non-negative integer"),
    "fusion.batch_size": (_pos_int, "a positive integer"),
    "fusion.warmup_epochs": (_pos_int, "a positive integer"),
    "fusion.val_split": (_float_in(0, 1, hi_open=True), "a float in (0, 1)"),
    "fusion.early_stopping_patience": (_pos_int, "a positive integer"),
    "fusion.llm_dropout": (_float_in(0, 1, lo_open=False, hi_open=True), "a float in [0, 1)"),
    "llm.price_per_million": (lambda v: v is None or (isinstance(v, Mapping) and set(v) == {"input", "output"}
                                                      and all(_is_num(x) and x >= 0 for x in v.values())),
                              "null or {input: USD, output: USD} per million tokens (numbers >= 0)"),
    "gate.enabled": (lambda v: isinstance(v, bool), "a boolean"),
    "gate.max_accuracy_loss": (_float_in(0, 1, lo_open=False), "a float in [0, 1]"),
    "gate.llm_fraction": (lambda v: v is None or _float_in(0, 1, lo_open=False)(v), "null or a float in [0, 1]"),
    "fusion.cv_folds": (lambda v: is_int(v) and 2 <= v <= 20, "an integer in [2, 20]"),
    "fusion.cv_repeats": (lambda v: is_int(v) and 1 <= v <= 20, "an integer in [1, 20]"),
    "fusion.threshold_objective": (_choice(("macro_f1", "subset_accuracy")), "one of ['macro_f1', 'subset_accuracy']"),
}


def _fail(path: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{path}: expected {expected}, got {short_repr(value)}")


def _merge(base: dict[str, Any], override: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"{path}: unknown key (known keys{' under ' + prefix[:-1] if prefix else ''}: {known})")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise _fail(path, "a mapping of keys", value)
            out[key] = _merge(base[key], value, prefix=f"{path}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge `config` onto the defaults and check every key; returns the full, valid config."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping of keys, got {type(config).__name__}")
    if config.get("gate") in ("off", False):  # `gate: off` (YAML may read a bare off as false)
        config = {**config, "gate": {"enabled": False}}
    merged = _merge(DEFAULT_CONFIG, config)
    for path, (check, expected) in RULES.items():
        if path.endswith("[]"):
            continue
        value = _get(merged, path)
        if not check(value):
            raise _fail(path, expected, value)
        element = RULES.get(f"{path}[]")
        if element is not None:
            for i, item in enumerate(value):
                if not element[0](item):
                    raise _fail(f"{path}[{i}]", element[1], item)
    check_base_url(merged["llm_base_url"])  # user:pass@ would reach saved models, bundles and logs
    for path, why in NOT_USED_BY_FIT.items():
        if _get(merged, path) != _get(DEFAULT_CONFIG, path):
            log.warning("%s = %r is not used: %s.", path, _get(merged, path), why)
    if isinstance(merged["label_columns"], tuple):
        merged["label_columns"] = list(merged["label_columns"])
    if merged["llm_provider"] == "openai-compatible" and not merged["llm_base_url"]:
        raise ConfigError("llm_base_url: expected an http(s) URL when llm_provider is 'openai-compatible', got None")
    if merged["multi_label"] and len(merged["label_columns"]) < 2:
        raise ConfigError(
            f"label_columns: expected one 0/1 column per label (at least 2) when multi_label is true, "
            f"got {merged['label_columns']!r}"
        )
    if len(set(merged["label_columns"])) != len(merged["label_columns"]):
        raise ConfigError(f"label_columns: expected distinct column names, got {merged['label_columns']!r}")
    return merged


def _get(config: Mapping[str, Any], path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = value[part]
    return value
