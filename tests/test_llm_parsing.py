"""Tests of textclassify.runtime.llm.parsing: strict JSON scores, logprob scores, scrubbing, headers."""
from __future__ import annotations

import email.utils
import math
import time

import pytest

from textclassify.runtime.errors import LLMResponseError
from textclassify.runtime.llm import parsing as P

LABELS = ["billing", "shipping", "technical"]


def test_json_scores_in_label_order() -> None:
    """Scores come back in label order whatever the key order of the answer."""
    assert P.parse_json_scores('{"technical": 0.2, "billing": 0.7, "shipping": 0.1}', LABELS) == [0.7, 0.1, 0.2]


def test_json_scores_nested_under_scores_and_fenced() -> None:
    """An object nested under "scores", inside a ```json fence, is accepted."""
    content = '```json\n{"scores": {"billing": 1, "shipping": 0, "technical": 0.5}}\n```'
    assert P.parse_json_scores(content, LABELS) == [1.0, 0.0, 0.5]


def test_json_missing_label_scores_zero() -> None:
    """A label absent from the answer scores 0."""
    assert P.parse_json_scores('{"billing": 0.9}', LABELS) == [0.9, 0.0, 0.0]


def test_json_key_case_is_forgiven() -> None:
    """A key that differs from a label only in case or surrounding spaces maps to that label."""
    assert P.parse_json_scores('{" Billing": 0.4, "SHIPPING": 0.6}', LABELS) == [0.4, 0.6, 0.0]


@pytest.mark.parametrize("content,message", [
    ('{"billing": 0.5, "refund": 0.5}', "the answer has keys that are not labels: ['refund']"),
    ('{"billing": "high"}', "the score of label 'billing' is not a number (got 'high')"),
    ('{"billing": true}', "the score of label 'billing' is not a number (got True)"),
    ('{"billing": 1.5}', "the score of label 'billing' is outside [0, 1] (got 1.5)"),
    ('{"billing": -0.1}', "the score of label 'billing' is outside [0, 1] (got -0.1)"),
    ('{"billing": NaN}', "the score of label 'billing' is outside [0, 1] (got nan)"),
    ('{"billing": 0.5, "Billing": 0.5}', "label 'billing' is scored twice in the answer"),
    ("billing", "the answer is not a JSON object"),
    ("[0.5, 0.5, 0]", "the answer is JSON but not an object (a list)"),
])
def test_json_scores_rejected(content: str, message: str) -> None:
    """Unknown keys, non-numeric or out-of-range values and non-objects are LLMResponseErrors."""
    with pytest.raises(LLMResponseError) as info:
        P.parse_json_scores(content, LABELS)
    assert str(info.value) == message


def test_body_and_choice_errors() -> None:
    """A non-JSON body, a body without choices and a message without text are each named."""
    with pytest.raises(LLMResponseError, match="^the response body is not JSON$"):
        P.parse_body("<html>")
    with pytest.raises(LLMResponseError, match="^the response has no choices$"):
        P.first_choice({"choices": []})
    with pytest.raises(LLMResponseError, match="^the response's message has no text content$"):
        P.message_content({"message": {"content": None}})


def _choice(top: list[tuple[str, float]], first: str | None = None) -> dict:
    entries = [{"token": t, "logprob": lp} for t, lp in top]
    content = [dict(entries[0], top_logprobs=entries)]
    if first is not None:
        content.insert(0, {"token": first, "logprob": 0.0, "top_logprobs": [{"token": first, "logprob": 0.0}]})
    return {"message": {"content": "billing"}, "logprobs": {"content": content}}


def test_logprob_scores_sum_per_label_and_renormalise() -> None:
    """Tokens that begin a label add up; the result is renormalised over the labels, junk ignored."""
    top = [("bill", math.log(0.5)), (" Billing", math.log(0.1)), ("ship", math.log(0.2)), ("The", math.log(0.2))]
    scores = P.parse_logprob_scores(_choice(top), LABELS, None)
    assert scores == pytest.approx([0.75, 0.25, 0.0])


def test_logprob_scores_skip_a_leading_whitespace_token() -> None:
    """A first token of only whitespace or quotes is skipped; the next one is read."""
    scores = P.parse_logprob_scores(_choice([("tech", math.log(0.9)), ("ship", math.log(0.1))], first=' "'),
                                    LABELS, None)
    assert scores == pytest.approx([0.0, 0.1, 0.9])


def test_logprob_scores_with_codes_need_exact_codes() -> None:
    """With codes a token must be a code letter (case and punctuation aside), not a word starting with one."""
    top = [("A", math.log(0.6)), ("b.", math.log(0.3)), ("And", math.log(0.1))]
    scores = P.parse_logprob_scores(_choice(top), ["tech support", "technical", "billing"], ["A", "B", "C"])
    assert scores == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_logprob_token_beginning_two_labels_is_split() -> None:
    """A token that begins two labels gives each half of its probability."""
    scores = P.logprob_scores([("b", math.log(0.4)), ("bug", math.log(0.2))], ["bill", "bug"], None)
    assert scores == pytest.approx([0.2 / 0.6, 0.4 / 0.6])


def test_logprobs_missing_or_naming_no_label() -> None:
    """No logprobs at all, or top tokens that name no label, are LLMResponseErrors."""
    with pytest.raises(LLMResponseError, match="^the response carries no logprobs$"):
        P.parse_logprob_scores({"message": {"content": "billing"}, "logprobs": None}, LABELS, None)
    with pytest.raises(LLMResponseError, match=r"^no top logprob token names a label \(tokens \['The', 'I'\]\)$"):
        P.parse_logprob_scores(_choice([("The", -0.1), ("I", -2.0)]), LABELS, None)


def test_scrub_and_truncate() -> None:
    """The secret is replaced by *** everywhere; long answers are cut with a marker."""
    assert P.scrub("Bearer sk-abc123 and sk-abc123", "sk-abc123") == "Bearer *** and ***"
    assert P.scrub("nothing", None) == "nothing"
    assert P.truncate("x" * 510) == "x" * 500 + "... [10 more characters]"


def test_usage_counts() -> None:
    """Token counts come from body['usage'], zeros when absent."""
    assert P.usage_counts({"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}) == (7, 3, 10)
    assert P.usage_counts({}) == (0, 0, 0)


def test_retry_after_forms() -> None:
    """Retry-After in seconds, retry-after-ms, an HTTP date, and garbage."""
    assert P.retry_after_seconds({"retry-after": "2"}) == 2.0
    assert P.retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < P.retry_after_seconds({"retry-after": later}) <= 30
    assert P.retry_after_seconds({"retry-after": "soon"}) is None
    assert P.retry_after_seconds({}) is None
