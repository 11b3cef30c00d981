"""Chat prompts that ask an LLM for per-label scores, as JSON or as one label read through logprobs.

Format contract (the loopback test server and external checkers parse it): the system message
lists the labels after a line ``Labels:``, one per line, as ``- name`` or, with short codes,
``A: name``; the user message is ``Text to classify:`` followed by the text on ONE line of its own
(newlines replaced by spaces), and no instruction word before the text contains "ticket ".
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from textclassify.runtime.constants import LLM_MAX_TEXT_CHARS
from textclassify.runtime.errors import ConfigError

JSON = "json"
LOGPROBS = "logprobs"
USER_PREFIX = "Text to classify:"
MAX_CODES = 26

_LINE_BREAKS = re.compile(r"[\r\n\u0085\u2028\u2029\v\f]+")


def check_labels(labels: Sequence[str]) -> list[str]:
    """The labels as a list: non-empty, unique, each a non-empty string on one line."""
    labels = list(labels)
    if not labels:
        raise ConfigError("labels: at least one label is required (got none)")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise ConfigError(f"labels[{i}] must be a non-empty string (got {label!r})")
        if "\n" in label or "\r" in label:
            raise ConfigError(f"labels[{i}] must fit on one line (got {label!r})")
    if len(set(labels)) != len(labels):
        dup = sorted({label for label in labels if labels.count(label) > 1})
        raise ConfigError(f"labels must be unique (repeated: {dup})")
    return labels


def one_line(text: str) -> str:
    """The text with every line break replaced by a space, so it fills exactly one prompt line."""
    return _LINE_BREAKS.sub(" ", text)


def labels_need_codes(labels: Sequence[str]) -> bool:
    """True when two labels could share a first token: one is a prefix of another, or the first
    three characters agree (case-insensitively)."""
    low = [label.strip().lower() for label in labels]
    for i, a in enumerate(low):
        for b in low[i + 1:]:
            if a.startswith(b) or b.startswith(a) or a[:3] == b[:3]:
                return True
    return False


def label_codes(labels: Sequence[str]) -> list[str]:
    """Short answer codes A, B, C, ... one per label, in label order."""
    return [chr(ord("A") + i) for i in range(len(labels))]


def build_messages(
    text: str, labels: Sequence[str], *, multi_label: bool, method: str, use_codes: bool = False,
) -> list[dict[str, str]]:
    """System + user messages asking for scores of `text` against `labels` by `method`."""
    if method == JSON:
        system = _json_instructions(labels, multi_label)
    elif method == LOGPROBS:
        if multi_label:
            raise ValueError("logprobs prompts are for multi-class tasks only")
        system = _logprobs_instructions(labels, use_codes)
    else:
        raise ValueError(f"unknown score method {method!r}")
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"{USER_PREFIX}\n{one_line(text)[:LLM_MAX_TEXT_CHARS]}"},
    ]


def _label_lines(labels: Sequence[str], codes: Sequence[str] | None) -> str:
    if codes is None:
        return "\n".join(f"- {label}" for label in labels)
    return "\n".join(f"{code}: {label}" for code, label in zip(codes, labels))


def _json_instructions(labels: Sequence[str], multi_label: bool) -> str:
    if multi_label:
        task = ("You are a multi-label text classifier. Each label below applies to the text independently; "
                "several, one or none may apply.")
        scores = ("a score in [0, 1] for how likely that label applies, judged on its own "
                  "(the scores need not sum to 1)")
    else:
        task = "You are a multi-class text classifier. Exactly one label below is correct for the text."
        scores = "the probability in [0, 1] that it is the correct label (the scores sum to 1)"
    return (
        f"{task}\n"
        f"Labels:\n{_label_lines(labels, None)}\n\n"
        "Reply with only a JSON object whose keys are exactly the label names above and whose values are "
        f"numbers: for each label, {scores}. No other keys, no explanation."
    )


def _logprobs_instructions(labels: Sequence[str], use_codes: bool) -> str:
    if use_codes:
        codes = label_codes(labels)
        listing = _label_lines(labels, codes)
        answer = (f"Answer with only the code letter of the correct label ({', '.join(codes)}), "
                  "nothing else.")
    else:
        listing = _label_lines(labels, None)
        answer = "Answer with only the correct label name, written exactly as listed, nothing else."
    return (
        "You are a multi-class text classifier. Exactly one label below is correct for the text.\n"
        f"Labels:\n{listing}\n\n{answer}"
    )
