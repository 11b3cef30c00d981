"""Config schema, property-based: every key's wrong type or out-of-range value is a ConfigError naming the key.

The oracle below is written independently of train/config.py's RULES (a spec per key: kind and range);
for any value hypothesis draws, validate_config must accept it exactly when the spec does, and otherwise
raise ConfigError whose message starts with the key's path -- never another exception type.
"""
from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textclassify.runtime.errors import ConfigError
from textclassify.runtime.llm.providers import PROVIDERS
from textclassify.runtime.validation import short_repr
from textclassify.train.config import DEFAULT_CONFIG, RULES, validate_config

# A base that keeps cross-key rules quiet: two label columns (valid for multi-label too) and a base URL.
BASE: dict[str, Any] = {"llm_base_url": "http://127.0.0.1:9/v1", "label_columns": ["a", "b"]}
FAST = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _num(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) or math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _nonempty(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def float_in(lo: float, hi: float, lo_open: bool, hi_open: bool):
    def ok(v: Any) -> bool:
        return _num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    valid = st.floats(lo, hi, exclude_min=lo_open, exclude_max=hi_open, allow_nan=False)
    return ok, valid


def int_in(lo: int, hi: int | None = None):
    def ok(v: Any) -> bool:
        return _int(v) and v >= lo and (hi is None or v <= hi)
    return ok, st.integers(lo, hi if hi is not None else 10**6)


def auto_or(spec):
    """'auto' (chosen at fit time) or a value the inner spec accepts."""
    ok, valid = spec
    return (lambda v: v == "auto" or ok(v)), st.just("auto") | valid


def choice(options: list[str]):
    return (lambda v: isinstance(v, str) and v in options), st.sampled_from(options)


NAME = st.text(min_size=1, max_size=8).filter(lambda s: s.strip() != "")


def _has_userinfo(url: str) -> bool:
    """An '@' in the authority (between '//' and the first '/', '?' or '#'): user:pass@host."""
    if "//" not in url:
        return False
    authority = re.split(r"[/?#]", url.split("//", 1)[1], maxsplit=1)[0]
    return "@" in authority

# path -> (is the value valid?, a strategy of valid values). Independent of RULES on purpose.
SPEC: dict[str, tuple[Any, Any]] = {
    "llm_provider": choice(sorted(PROVIDERS)),
    "label_columns": (lambda v: isinstance(v, (list, tuple)) and len(v) >= 1 and all(_nonempty(c) for c in v)
                      and len(set(v)) == len(v),
                      st.lists(NAME, min_size=2, max_size=4, unique=True)),  # 2+: multi_label may be on
    "multi_label": (lambda v: isinstance(v, bool), st.booleans()),
    "text_column": (_nonempty, NAME),
    "ml_model": (_nonempty, NAME),
    "llm_model": (lambda v: v is None or _nonempty(v), st.none() | NAME),
    "llm_base_url": (lambda v: v is None or (isinstance(v, str) and v.startswith(("http://", "https://"))
                                             and not _has_userinfo(v)),
                     st.none() | st.builds(lambda s, h: s + h, st.sampled_from(["http://", "https://"]),
                                           st.text(max_size=10)).filter(lambda v: not _has_userinfo(v))),
    "cache_dir": (_nonempty, NAME),
    "output_dir": (_nonempty, NAME),
    "fusion_split": float_in(0, 1, True, True),
    "seed": int_in(0),
    "ml.num_epochs": auto_or(int_in(1)),
    "ml.batch_size": int_in(1),
    "ml.learning_rate": auto_or(float_in(0, 1, True, False)),
    "ml.max_length": int_in(8, 8192),
    "ml.warmup_ratio": float_in(0, 1, False, True),
    "ml.weight_decay": float_in(0, 1, False, False),
    "ml.val_split": float_in(0, 1, True, True),
    "ml.early_stopping_patience": int_in(1),
    "lexical": choice(["auto", "on", "off"]),
    "llm.temperature": float_in(0, 2, False, False),
    "llm.max_concurrency": int_in(1, 1024),
    "llm.timeout_s": float_in(0, 3600, True, False),
    "llm.max_retries": int_in(0, 50),
    "llm.score_method": choice(["auto", "logprobs", "json"]),
    "llm.on_unusable_answer": choice(["raise", "abstain"]),
    "llm.deadline_s": ((lambda v: v is None or float_in(0, 604800, True, False)[0](v)),
                       st.none() | float_in(0, 604800, True, False)[1]),
    "fusion.hidden_dims": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                           and all(_int(d) and 0 < d <= 65536 for d in v),
                           st.lists(st.integers(1, 65536), min_size=1, max_size=4)),
    "fusion.dropout": float_in(0, 1, False, True),
    "fusion.ml_lr": float_in(0, 1, True, False),
    "fusion.fusion_lr": float_in(0, 1, True, False),
    "fusion.num_epochs": int_in(0),
    "fusion.batch_size": int_in(1),
    "fusion.warmup_epochs": int_in(1),
    "fusion.val_split": float_in(0, 1, True, True),
    "fusion.early_stopping_patience": int_in(1),
    "fusion.llm_dropout": float_in(0, 1, False, True),
    "llm.price_per_million": ((lambda v: v is None or (isinstance(v, dict) and set(v) == {"input", "output"}
                                                       and all(_num(x) and x >= 0 for x in v.values()))),
                              st.none() | st.fixed_dictionaries({"input": st.floats(0, 100),
                                                                 "output": st.floats(0, 100)})),
    "gate.enabled": (lambda v: isinstance(v, bool), st.booleans()),
    "gate.max_accuracy_loss": float_in(0, 1, False, False),
    "gate.llm_fraction": ((lambda v: v is None or float_in(0, 1, False, False)[0](v)),
                          st.none() | float_in(0, 1, False, False)[1]),
    "fusion.cv_folds": int_in(2, 20),
    "fusion.cv_repeats": int_in(1, 20),
    "fusion.threshold_objective": choice(["macro_f1", "subset_accuracy"]),
}
PATHS = sorted(SPEC)

SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(["", " ", "16", "1e-3", "auto", "http://x", "-1"]))
ANY_VALUE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=6)


def with_value(path: str, value: Any) -> dict[str, Any]:
    """BASE with `path` (a.b) set to `value`."""
    config = {k: (list(v) if isinstance(v, list) else v) for k, v in BASE.items()}
    head, _, tail = path.partition(".")
    if tail:
        config[head] = {tail: value}
    else:
        config[head] = value
    return config


def lookup(config: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        config = config[part]
    return config


def check(path: str, value: Any) -> None:
    """validate_config accepts `value` at `path` iff the spec does; otherwise a ConfigError naming the path."""
    valid = SPEC[path][0](value)
    try:
        merged = validate_config(with_value(path, value))
    except ConfigError as e:
        assert not valid, f"{path}={value!r} is valid per the spec but was refused: {e}"
        message = str(e)
        if path == "llm_base_url" and isinstance(value, str) and _has_userinfo(value):
            assert message.startswith("llm_base_url: the URL carries credentials (") and "Put credentials in the " \
                "API key variable" in message, message
            return
        assert message.startswith((f"{path}: expected ", f"{path}[")), message
        return
    assert valid, f"{path}={value!r} is invalid per the spec but was accepted"
    got = lookup(merged, path)
    assert got == (list(value) if path == "label_columns" else value)


def test_spec_covers_every_rule() -> None:
    """The oracle has an entry for every key the schema checks (a new key must be added here too)."""
    assert sorted(p for p in RULES if not p.endswith("[]")) == PATHS
    flat = [k for k, v in DEFAULT_CONFIG.items() if not isinstance(v, dict)]
    flat += [f"{k}.{sub}" for k, v in DEFAULT_CONFIG.items() if isinstance(v, dict) for sub in v]
    assert sorted(flat) == PATHS


@pytest.mark.parametrize("path", PATHS)
def test_any_value_is_accepted_or_refused_by_path(path: str) -> None:
    """Arbitrary values (wrong types, out of range, nested junk) give a ConfigError starting with the key path."""
    @FAST
    @given(value=ANY_VALUE)
    def run(value: Any) -> None:
        check(path, value)

    run()


@pytest.mark.parametrize("path", PATHS)
def test_valid_values_pass(path: str) -> None:
    """Every value inside the key's domain validates and comes back unchanged."""
    @FAST
    @given(value=SPEC[path][1])
    def run(value: Any) -> None:
        check(path, value)

    run()


BOUNDARIES = [0, 1, -1, 0.0, 1.0, -0.0, 1e-300, 0.5, 2, 7, 8, 50, 51, 1024, 1025, 3600, 3600.0001, 8192, 8193,
              65536, 65537, float("inf"), float("-inf"), float("nan"), True, False, "1", None, [], {}]


@pytest.mark.parametrize("path", PATHS)
def test_boundaries(path: str) -> None:
    """Edges of every range (and bools posing as ints, NaN, infinities) land on the right side."""
    for value in BOUNDARIES:
        check(path, value)


@pytest.mark.parametrize("section", ["ml", "llm", "fusion"])
@FAST
@given(value=ANY_VALUE.filter(lambda v: not isinstance(v, dict)))
def test_section_must_be_a_mapping(section: str, value: Any) -> None:
    """A whole section given as a scalar or list is refused naming the section."""
    with pytest.raises(ConfigError) as e:
        validate_config({**BASE, section: value})
    assert str(e.value) == f"{section}: expected a mapping of keys, got {short_repr(value)}"  # long values are cut


@FAST
@given(key=st.text(min_size=1, max_size=10).filter(lambda k: k not in DEFAULT_CONFIG["fusion"]),
       value=SCALARS)
def test_unknown_nested_key(key: str, value: Any) -> None:
    """A key the schema does not know is refused with its full path."""
    with pytest.raises(ConfigError) as e:
        validate_config({**BASE, "fusion": {key: value}})
    assert str(e.value).startswith(f"fusion.{key}: unknown key (known keys under fusion: ")


@FAST
@given(values=st.fixed_dictionaries({p: SPEC[p][1] for p in PATHS}))
def test_whole_valid_config_round_trips(values: dict[str, Any]) -> None:
    """Valid values for every key at once validate and are returned as given."""
    config: dict[str, Any] = {}
    for path, value in values.items():
        head, _, tail = path.partition(".")
        if tail:
            config.setdefault(head, {})[tail] = value
        else:
            config[head] = value
    if config["llm_provider"] == "openai-compatible" and config["llm_base_url"] is None:
        config["llm_base_url"] = "http://127.0.0.1:9/v1"
    merged = validate_config(config)
    assert all(lookup(merged, p) == (list(v) if p == "label_columns" else v)
               for p, v in values.items() if not (p == "llm_base_url" and v is None))


@pytest.mark.parametrize("path", ["fusion_split", "llm.timeout_s", "fusion.ml_lr"])
def test_huge_integer_for_a_float_key(path: str) -> None:
    """An integer too large for a float (10**400) is a ConfigError, not an OverflowError from math.isfinite."""
    with pytest.raises(ConfigError, match=rf"^{path}: expected "):
        validate_config(with_value(path, 10**400))
