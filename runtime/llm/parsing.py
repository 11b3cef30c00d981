"""Turn a chat-completion body into label scores, strictly: anything unexpected is an LLMResponseError."""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from typing import Any

from textclassify.runtime.errors import LLMResponseError

MAX_ANSWER_CHARS = 500
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_TOKEN_STRIP = " \t\r\n\"'`*.:,;()[]{}"


def scrub(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by '***' (no-op for an empty secret)."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


def truncate(text: str, limit: int = MAX_ANSWER_CHARS) -> str:
    """At most `limit` characters, marking the cut."""
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def response_text(response: Any) -> str:
    """The decoded body of an HTTP response; '' when it cannot be decoded."""
    try:
        return str(response.text)
    except Exception:  # noqa: BLE001 - a body that cannot be decoded is reported as absent
        return ""


def _json_object(text: str, what: str, not_json: str) -> dict[str, Any]:
    """`text` parsed as a JSON object; LLMResponseError naming `what` otherwise."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise LLMResponseError(f"{what} {not_json}") from None
    if not isinstance(obj, dict):
        raise LLMResponseError(f"{what} is JSON but not an object (a {type(obj).__name__})")
    return obj


def parse_body(body_text: str) -> dict[str, Any]:
    """The response body as a JSON object."""
    return _json_object(body_text, "the response body", "is not JSON")


def completion_id(body_text: str) -> str | None:
    """The "id" of a chat-completion body (what a provider's support asks for), or None."""
    try:
        body = json.loads(body_text)
    except ValueError:
        return None
    ident = body.get("id") if isinstance(body, dict) else None
    return ident if isinstance(ident, str) else None


def first_choice(body: dict[str, Any]) -> dict[str, Any]:
    """choices[0] of a chat completion."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise LLMResponseError("the response has no choices")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise LLMResponseError("choices[0] is not an object")
    return choice


def message_content(choice: dict[str, Any]) -> str:
    """The text of choice['message']['content']."""
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise LLMResponseError("the response's message has no text content")
    return content


def parse_json_scores(content: str, labels: Sequence[str]) -> list[float]:
    """Scores from a JSON object keyed by label (or nested under "scores"); missing labels score 0."""
    stripped = content.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    obj = _json_object(stripped, "the answer", "is not a JSON object")
    if set(obj) == {"scores"} and "scores" not in labels and isinstance(obj["scores"], dict):
        obj = obj["scores"]
    index = {label: i for i, label in enumerate(labels)}
    folded = {label.strip().casefold(): i for i, label in enumerate(labels)}
    scores: list[float | None] = [None] * len(labels)
    unknown = []
    for key, value in obj.items():
        i = index.get(key, folded.get(key.strip().casefold()))
        if i is None:
            unknown.append(key)
            continue
        if scores[i] is not None:
            raise LLMResponseError(f"label {labels[i]!r} is scored twice in the answer")
        scores[i] = _score_value(labels[i], value)
    if unknown:
        raise LLMResponseError(f"the answer has keys that are not labels: {_quote(sorted(unknown))}")
    if all(s is None for s in scores):  # `{}` is not "every label scores 0": it says nothing
        raise LLMResponseError("the answer scores no label")
    return [0.0 if s is None else s for s in scores]


def _score_value(label: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LLMResponseError(f"the score of label {label!r} is not a number (got {_quote(value)})")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise LLMResponseError(f"the score of label {label!r} is outside [0, 1] (got {_quote(value)})")
    return number


def _quote(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _as_logprob(value: Any) -> float | None:
    """A logprob as a float, or None when it is not a number; an int too large for a float is +inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def first_token_logprobs(choice: dict[str, Any]) -> list[tuple[str, float]] | None:
    """(token, logprob) pairs of the first answer token with visible text, or None when the choice
    carries no logprobs."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    for entry in content:
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            return None
        if not entry["token"].strip(_TOKEN_STRIP):
            continue  # leading whitespace or a quote before the answer
        top = entry.get("top_logprobs") or [entry]
        if not isinstance(top, list):
            return None
        pairs = [(t.get("token"), _as_logprob(t.get("logprob"))) for t in top if isinstance(t, dict)]
        return [(tok, lp) for tok, lp in pairs if isinstance(tok, str) and lp is not None]
    return None


# A log-probability is <= 0; servers round, so a little above 0 is accepted (and read as 0).
LOGPROB_SLACK = 1e-3


def logprob_scores(
    pairs: Sequence[tuple[str, float]], labels: Sequence[str], codes: Sequence[str] | None,
) -> list[float] | None:
    """Probabilities per label from first-token logprobs, renormalised over the labels; None when no
    token names a label. With `codes`, a token must be a code; otherwise it must begin a label.

    Computed in log space (log-sum-exp): a logprob of 800 overflowed math.exp. A logprob that is not
    finite or is above 0 is impossible, so the whole answer is unusable (LLMResponseError).
    """
    targets = [c.lower() for c in codes] if codes is not None else [label.strip().lower() for label in labels]
    parts: list[list[float]] = [[] for _ in labels]  # log-mass contributions per label
    for token, logprob in pairs:
        tok = token.strip(_TOKEN_STRIP).lower()
        if not tok:
            continue
        if not math.isfinite(logprob) or logprob > LOGPROB_SLACK:
            if logprob == -math.inf:
                continue  # probability 0: a legitimate value
            raise LLMResponseError(f"token {_quote(token)} has an impossible logprob {logprob!r} "
                                   "(a log-probability is a finite number <= 0)")
        logprob = min(logprob, 0.0)
        if codes is not None:
            hits = [i for i, t in enumerate(targets) if t == tok]
        else:
            hits = [i for i, t in enumerate(targets) if t.startswith(tok) or tok.startswith(t)]
        for i in hits:  # a token beginning several labels is split evenly between them
            parts[i].append(logprob - math.log(len(hits)))
    log_mass = [_logsumexp(p) for p in parts]
    top = max(log_mass)
    if top == -math.inf:
        return None
    total = top + math.log(sum(math.exp(m - top) for m in log_mass))
    return [math.exp(m - total) for m in log_mass]


def _logsumexp(values: Sequence[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def parse_logprob_scores(
    choice: dict[str, Any], labels: Sequence[str], codes: Sequence[str] | None,
) -> list[float]:
    """Label probabilities from a choice's first answer token; LLMResponseError when unusable."""
    pairs = first_token_logprobs(choice)
    if pairs is None:
        raise LLMResponseError("the response carries no logprobs")
    scores = logprob_scores(pairs, labels, codes)
    if scores is None:
        shown = [tok[:40] for tok, _ in pairs[:10]]
        raise LLMResponseError(f"no top logprob token names a label (tokens {shown})")
    return scores


def usage_counts(body: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, total) tokens from body['usage']; zeros where absent."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0, 0, 0
    prompt, completion, total = (usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    prompt = prompt if isinstance(prompt, int) else 0
    completion = completion if isinstance(completion, int) else 0
    total = total if isinstance(total, int) else prompt + completion
    return prompt, completion, total


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header; None when absent or unparseable."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            seconds = _http_date_seconds(value) if divisor == 1.0 else None
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _http_date_seconds(value: str) -> float | None:
    import email.utils  # only for an HTTP-date Retry-After: `import textclassify.runtime` does not pay for it

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())
