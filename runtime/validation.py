"""Input checks shared by every public predict method (training model and bundle alike), and the rules that
keep user data out of error messages: quoted values are cut short, URL credentials are never echoed."""
from __future__ import annotations

import math
from collections.abc import Mapping, Set
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from textclassify.runtime.errors import ConfigError, DataError

# User data quoted in an error message is cut to this many characters: a small input can expand into a huge
# error line (a YAML anchor, a repeated value).
MAX_QUOTED_CHARS = 200
# Characters of a text the tokenizer sees at most (load_bundle max_text_chars): the encoder keeps at most
# max_length tokens anyway, and tokenising a multi-megabyte text in full costs seconds and gigabytes.
DEFAULT_MAX_TEXT_CHARS = 100_000
LONG_TEXT_POLICIES = ("truncate", "raise")


def is_int(value: Any) -> bool:
    """An int that is not a bool (True is an int to Python, never a count here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def short_repr(value: Any, limit: int = MAX_QUOTED_CHARS) -> str:
    """repr(value) cut to `limit` characters (marking the cut): what an error message may quote of user data.

    A container's repr is built from a bounded prefix, so quoting a 7 MB structure costs no 7 MB string.
    """
    if isinstance(value, (list, tuple)) and len(value) > limit:
        value = type(value)(value[:limit])
    elif isinstance(value, dict) and len(value) > limit:
        value = dict(list(value.items())[:limit])
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__}, nested too deeply>"
    except Exception:  # noqa: BLE001 -- a hostile __repr__ must not replace the error being reported
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def _type_name(value: Any) -> str:
    """The value's type, qualified by its module unless it is a builtin: "int", "numpy.float64"."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def validate_texts(texts: Any, what: str = "texts") -> list[str]:
    """Prediction input must be a list (or other sequence) of strings; each refusal names the index.

    Refused: a single string (wrap it in a list), a DataFrame (iterating one yields its column names),
    a mapping (its keys) and a set (no order, so rows could not be matched to answers), anything not
    iterable, a non-string item, and a string that is not valid Unicode (a lone surrogate such as
    "\\ud800", which no tokenizer or HTTP request can carry).
    """
    if isinstance(texts, (str, bytes)):
        raise DataError(f"{what}: expected a list of strings, got a single {type(texts).__name__}; "
                        "pass [text] instead.")
    if texts is None:
        raise DataError(f"{what}: expected a list of strings, got None.")
    kind = type(texts).__name__
    if hasattr(texts, "columns") and hasattr(texts, "iloc"):  # pandas (or alike) DataFrame, without importing it
        raise DataError(f"{what}: expected a list of strings, got a {kind}; iterating it would give its column "
                        "names. Pass one column as a list, e.g. df[\"text\"].tolist().")
    if isinstance(texts, Mapping):
        raise DataError(f"{what}: expected a list of strings, got a {kind} (a mapping would give its keys); "
                        "pass list(d.values()) or the texts themselves as a list.")
    if isinstance(texts, Set):
        raise DataError(f"{what}: expected a list of strings, got a {kind}, which has no order to match the "
                        "answers to; pass a list (e.g. sorted(texts)).")
    try:
        items = list(texts)
    except TypeError:
        raise DataError(f"{what}: expected a list of strings, got {kind}.") from None
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise DataError(f"{what}[{i}]: expected a string, got {short_repr(text)} ({_type_name(text)}).")
        check_unicode(text, f"{what}[{i}]")
    return items


def check_unicode(text: str, where: str) -> None:
    """DataError naming `where` when `text` holds a lone surrogate (not encodable as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: not valid Unicode (a lone surrogate {text[e.start]!r} at character {e.start}); "
                        "fix or drop this text.") from None


def check_long_texts(texts: list[str], max_chars: int, policy: str, what: str = "texts") -> list[str]:
    """Texts cut to `max_chars` characters ('truncate'), or DataError naming the first longer one ('raise')."""
    if policy == "raise":
        for i, text in enumerate(texts):
            if len(text) > max_chars:
                raise DataError(f"{what}[{i}]: {len(text)} characters is more than max_text_chars {max_chars}; "
                                "shorten it, or load the bundle with long_texts='truncate'.")
        return texts
    return [text if len(text) <= max_chars else text[:max_chars] for text in texts]


def url_has_credentials(url: Any) -> bool:
    """True when an http(s) URL carries a user name or password (`https://user:pass@host/...`)."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return "@" in url
    return "@" in parts.netloc


def redact_url(url: str) -> str:
    """The URL with any user name and password replaced by '***'."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def redact_config(config: Any) -> Any:
    """A copy of a config mapping with credentials in `llm_base_url` replaced by '***' (for reprs and logs)."""
    if not isinstance(config, Mapping) or not url_has_credentials(config.get("llm_base_url")):
        return config
    return {**config, "llm_base_url": redact_url(config["llm_base_url"])}


def check_base_url(url: Any, where: str = "llm_base_url") -> None:
    """ConfigError when an LLM base URL carries credentials; the message never repeats them."""
    if url_has_credentials(url):
        raise ConfigError(f"{where}: the URL carries credentials ({redact_url(url)}); they would be written into "
                          "saved models, bundles and logs. Put credentials in the API key variable (for example "
                          "OPENAI_API_KEY) instead.")


def check_number(value: Any, where: str, lo: float, hi: float, *, integer: bool = False,
                 lo_open: bool = False) -> None:
    """ConfigError unless `value` is a finite number (an int when `integer`) in [lo, hi] (or (lo, hi])."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if not integer else int)
    ok = ok and math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}: expected {kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}], "
                          f"got {short_repr(value)}.")


def mark_nonfinite_rows(probabilities: Any, predictions: list[Any], degraded: list[int], reasons: dict[int, str],
                        on_llm_error: str) -> list[Any]:
    """Rows whose probabilities are not finite (a graph gave NaN or infinity) never get a label.

    on_llm_error="raise": DataError naming the first such text. "ml_only": the row's prediction is None and it
    is listed in `degraded` (kept sorted) with its reason in `reasons`, both updated in place.
    """
    import numpy as np

    bad = np.flatnonzero(~np.isfinite(np.asarray(probabilities, dtype=np.float64)).all(axis=1))
    if not len(bad):
        return predictions
    if on_llm_error != "ml_only":
        raise DataError(f"texts[{int(bad[0])}]: the model gave non-finite scores (NaN or infinity) for this text "
                        f"({len(bad)} of {len(predictions)} texts affected); no label is given. Load the bundle "
                        "with on_llm_error='ml_only' to get the other rows, each affected one marked degraded.")
    predictions = list(predictions)
    for i in (int(r) for r in bad):
        predictions[i] = None
        reasons[i] = "the model gave non-finite scores (NaN or infinity) for this text; no label is given"
        if i not in degraded:
            degraded.append(i)
    degraded.sort()
    return predictions


def check_finite_probabilities(probabilities: Any, on_llm_error: str) -> Any:
    """predict_proba's twin of mark_nonfinite_rows: DataError in "raise" mode, the NaN rows as they are otherwise."""
    if on_llm_error != "ml_only":
        mark_nonfinite_rows(probabilities, [None] * len(probabilities), [], {}, on_llm_error)
    return probabilities
