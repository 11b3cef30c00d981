"""A stalled or dead LLM and answers that are not scores, against the real loopback server and the real SDK.

A server dribbling one byte every 2 s is cut off by timeout_s (the whole request, not each read) and by
the call's deadline; a dead port trips the circuit breaker so 10,000 texts degrade in seconds; `{}` and a
logprob of 800 are unusable answers for their row only, never cached and never an exception for the call.
Time bounds are generous pytest timeouts: on the code before these fixes each test below ran past them.
"""
from __future__ import annotations

import math
import socket
import time

import numpy as np
import pytest

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify.runtime.errors import LLMError, LLMResponseError
from textclassify.runtime.llm import LLMScorer, LLMSettings
from textclassify.runtime.llm.cache import ScoreCache
from textclassify.runtime.llm.parsing import logprob_scores

LABELS = ["billing", "shipping", "technical"]
TEXTS = [t for t, _ in make_tickets(6, seed=5)]
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


def dead_url() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


# ------------------------------------------------------------------------- 1: a server that dribbles
@pytest.mark.timeout(40)
def test_dribbling_server_is_cut_off_by_timeout(llm_server: FakeLLMServer) -> None:
    """A 200 then one byte every 2 s: timeout_s=3 bounds the whole request (it ran past 60 s before)."""
    llm_server.inject("dribble", times=99, interval=2.0, seconds=60.0)
    settings = llm_server.settings(score_method="json", timeout_s=3, max_retries=0)
    start = time.monotonic()
    with LLMScorer(settings, LABELS, False, cache_dir=None, **FAST) as s:
        part = s.score_partial(TEXTS[:2])
    elapsed = time.monotonic() - start
    assert not part.ok.any()
    assert all(str(e).endswith("timed out after 3 s; last answer: (none)") for e in part.errors.values())
    print(f"dribbling server: 2 texts failed in {elapsed:.1f} s")


@pytest.mark.timeout(40)
def test_call_deadline_fails_the_remaining_rows(llm_server: FakeLLMServer) -> None:
    """llm.deadline_s bounds one call even when each request's own timeout is long: the rest fail with it."""
    llm_server.inject("dribble", times=99, interval=0.5, seconds=60.0)
    settings = llm_server.settings(score_method="json", timeout_s=600, max_retries=0, deadline_s=2.0)
    with LLMScorer(settings, LABELS, False, cache_dir=None, **FAST) as s:
        part = s.score_partial(TEXTS[:3])
        assert not part.ok.any()
        assert str(part.errors[2]) == ("LLM request for text 2 did not finish within the call's deadline of 2 s "
                                       "(llm.deadline_s); the text was abandoned.")
        with pytest.raises(LLMError, match=r"deadline of 2 s"):
            s.score(TEXTS[3:4])


def test_default_deadline_is_derived_from_timeout_and_retries(llm_server: FakeLLMServer) -> None:
    """Without llm.deadline_s: every attempt timing out plus the longest waits, per wave of max_concurrency."""
    settings = llm_server.settings(score_method="json", timeout_s=10, max_retries=2, max_concurrency=4)
    with LLMScorer(settings, LABELS, False, cache_dir=None, **FAST) as s:
        assert s.deadline_for(4) == (10 + 60) * 3
        assert s.deadline_for(9) == (10 + 60) * 3 * 3


# ------------------------------------------------------------------------- 2: nothing listening
@pytest.mark.timeout(60)
def test_dead_port_fails_10000_texts_at_once() -> None:
    """10,000 texts against a dead port: the circuit breaker opens after 5 failures and the rest fail unsent."""
    settings = LLMSettings(provider="openai-compatible", base_url=dead_url(), model="fake", score_method="json",
                           max_retries=5, timeout_s=3)
    texts = [f"ticket {i}: my invoice is wrong" for i in range(10_000)]
    with LLMScorer(settings, LABELS, False, cache_dir=None) as s:
        start = time.monotonic()
        part = s.score_partial(texts)
        elapsed = time.monotonic() - start
        usage = s.usage
    assert not part.ok.any() and len(part.errors) == 10_000
    assert usage["circuit_breaker"] == "open" and usage["circuit_breaker_opened"] == 1
    assert usage["requests"] <= 8 + 5  # the first wave, and retries of texts already sleeping when it opened
    assert str(part.errors[9_999]).startswith("LLM request for text 9999 was not sent (after 0 attempt(s)): the LLM "
                                              "endpoint failed ")
    assert "requests are paused for 30 s" in str(part.errors[9_999])
    print(f"dead port: 10,000 texts failed in {elapsed:.2f} s after {usage['requests']} requests")


@pytest.mark.timeout(60)
def test_dead_port_raises_at_once_in_raise_mode() -> None:
    """score() (on_llm_error='raise' in a bundle) raises quickly instead of retrying every text."""
    settings = LLMSettings(provider="openai-compatible", base_url=dead_url(), model="fake", score_method="json",
                           max_retries=5)
    with LLMScorer(settings, LABELS, False, cache_dir=None) as s:
        with pytest.raises(LLMError, match=r"\(2000 texts failed; the first is shown\)"):
            s.score([f"ticket {i}" for i in range(2_000)])
        assert s.usage["circuit_breaker"] == "open"


def test_breaker_half_open_trial_and_success_closes_it(llm_server: FakeLLMServer) -> None:
    """After the cool-down one trial request goes out; its success closes the breaker (seen in usage)."""
    llm_server.inject("500", times=3)
    settings = llm_server.settings(score_method="json", max_retries=0, max_concurrency=1)
    with LLMScorer(settings, LABELS, False, cache_dir=None, breaker_threshold=3, breaker_cooldown_s=0.5,
                   **FAST) as s:
        part = s.score_partial(TEXTS[:5])
        assert part.ok.tolist() == [False] * 5
        assert llm_server.requests == 3  # texts 3 and 4 were not sent
        assert "was not sent" in str(part.errors[4])
        assert s.usage["circuit_breaker"] == "open"
        time.sleep(0.6)
        np.testing.assert_array_equal(s.score_partial(TEXTS[:2]).ok, [True, True])
        assert s.usage["circuit_breaker"] == "closed" and s.usage["circuit_breaker_opened"] == 1


# ------------------------------------------------------------------------- 3: an answer of {}
def test_empty_json_answer_is_unusable_and_retried(llm_server: FakeLLMServer) -> None:
    """`{}` scores no label: retried, then an LLMResponseError (it used to be all-zero scores)."""
    llm_server.inject("empty_json", times=99)
    settings = llm_server.settings(score_method="json", max_retries=2)
    with LLMScorer(settings, LABELS, False, cache_dir=None, **FAST) as s, pytest.raises(LLMResponseError) as info:
        s.score(TEXTS[:1])
    assert "unusable answer: the answer scores no label; last answer: " in str(info.value)
    assert llm_server.requests == 3


def test_empty_json_answer_abstains_and_is_never_cached(llm_server: FakeLLMServer, tmp_path) -> None:
    """With on_unusable_answer='abstain' the row gets no-opinion scores, and the cache stores nothing for it."""
    llm_server.inject("empty_json", times=99, text=TEXTS[1])
    settings = llm_server.settings(score_method="json", max_retries=1, on_unusable_answer="abstain")
    with LLMScorer(settings, LABELS, False, cache_dir=tmp_path, **FAST) as s:
        scores = s.score(TEXTS[:3])
        assert s.usage["abstained"] == 1
    np.testing.assert_allclose(scores[1], [1 / 3] * 3)
    cache = ScoreCache(tmp_path)
    try:
        assert cache.count() == 2
    finally:
        cache.close()


# ------------------------------------------------------------------------- 4: a logprob of 800
def test_huge_logprob_is_unusable_for_that_row_only(llm_server: FakeLLMServer) -> None:
    """A logprob of 800 no longer overflows math.exp for the whole call: that row alone is unusable."""
    llm_server.inject("huge_logprob", times=99, text=TEXTS[2])
    settings = llm_server.settings(score_method="logprobs", max_retries=1)
    with LLMScorer(settings, LABELS, False, cache_dir=None, **FAST) as s:
        part = s.score_partial(TEXTS[:4])
    assert part.ok.tolist() == [True, True, False, True]
    assert isinstance(part.errors[2], LLMResponseError)
    assert "has an impossible logprob 800.0 (a log-probability is a finite number <= 0)" in str(part.errors[2])


def test_logprobs_are_combined_in_log_space() -> None:
    """Logprobs far below zero still give probabilities (exp underflowed to 0 before), and NaN is unusable."""
    scores = logprob_scores([("bill", -800.0), ("ship", -800.0 - math.log(3))], LABELS, None)
    np.testing.assert_allclose(scores, [0.75, 0.25, 0.0])
    with pytest.raises(LLMResponseError, match="impossible logprob"):
        logprob_scores([("bill", float("nan"))], LABELS, None)
    assert logprob_scores([("bill", -math.inf), ("tech", 0.0)], LABELS, None) == [0.0, 0.0, 1.0]
