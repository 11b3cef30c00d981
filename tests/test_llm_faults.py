"""LLM faults: each injected fault is retried and recovered, or rejected with a precise error;
the API key never leaks into an exception, a log line or a traceback."""
from __future__ import annotations

import logging
import socket
import time
import traceback

import numpy as np
import pytest

from tests.support.data import LABELS, keyword_scores, make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify.runtime.errors import LLMError, LLMResponseError
from textclassify.runtime.llm import LLMScorer, LLMSettings

TEXTS = [t for t, _ in make_tickets(6, seed=9)]
KEY = "sk-test-SECRET123"
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def expected(texts: list[str]) -> np.ndarray:
    return np.array([[keyword_scores(t)[lab] for lab in LABELS] for t in texts], dtype=np.float32)


def make(server: FakeLLMServer, method: str = "json", **settings: object) -> LLMScorer:
    return LLMScorer(server.settings(score_method=method, **settings), LABELS, False, cache_dir=None, **FAST)


def prefix(index: int, attempts: int, status: object) -> str:
    return (f"LLM request for text {index} failed after {attempts} attempt(s) (provider 'openai-compatible', "
            f"model 'fake', status {status}): ")


@pytest.mark.parametrize("kind", ["429", "500", "502", "503", "disconnect", "not_json", "no_choices"])
def test_transient_faults_are_retried_and_recovered(llm_server: FakeLLMServer, kind: str) -> None:
    """Two injected faults in a row cost two retries; every score is still right."""
    llm_server.inject(kind, times=2)
    with make(llm_server) as s:
        np.testing.assert_array_equal(s.score(TEXTS), expected(TEXTS))
        assert (s.usage["retries"], s.usage["requests"], s.usage["failures"]) == (2, 8, 0)
    assert llm_server.requests == 8 and llm_server.pending_faults() == 0


@pytest.mark.parametrize("variant", ["extra", "non_numeric", "out_of_range"])
def test_bad_scores_are_retried(llm_server: FakeLLMServer, variant: str) -> None:
    """Extra keys, non-numeric and out-of-range values are rejected and asked again."""
    llm_server.inject("bad_scores", variant=variant)
    with make(llm_server) as s:
        np.testing.assert_array_equal(s.score(TEXTS), expected(TEXTS))
        assert s.usage["retries"] == 1


def test_missing_label_scores_zero_without_retry(llm_server: FakeLLMServer) -> None:
    """A label missing from the JSON answer scores 0 and is not retried."""
    llm_server.inject("bad_scores", text=TEXTS[2], variant="missing")
    with make(llm_server) as s:
        scores = s.score(TEXTS)
        assert s.usage["retries"] == 0
    want = expected(TEXTS)
    want[2, 0] = 0.0
    np.testing.assert_array_equal(scores, want)


@pytest.mark.parametrize("kind", ["no_logprobs", "no_label_logprobs"])
def test_unusable_logprobs_are_retried_in_logprobs_mode(llm_server: FakeLLMServer, kind: str) -> None:
    """With score_method logprobs, an answer without usable logprobs is retried."""
    llm_server.inject(kind)
    with make(llm_server, "logprobs") as s:
        scores = s.score(TEXTS)
        assert s.usage["retries"] == 1
    assert scores.shape == (6, 3) and not np.isnan(scores).any()


def test_retry_after_is_honoured(llm_server: FakeLLMServer) -> None:
    """A 429 with Retry-After: 0.6 waits at least 0.6 s (the backoff alone would wait 0.01 s)."""
    llm_server.inject("429", retry_after=0.6)
    start = time.monotonic()
    with make(llm_server, max_concurrency=1) as s:
        s.score(TEXTS[:1])
    assert time.monotonic() - start >= 0.6
    assert llm_server.requests == 2


def test_429_without_retry_after_backs_off_briefly(llm_server: FakeLLMServer) -> None:
    """Without Retry-After the exponential backoff (here 10 ms, 20 ms) is used."""
    llm_server.inject("429", times=2)
    with make(llm_server, max_concurrency=1) as s:
        s.score(TEXTS[:1])  # warm: the first call pays the client's imports and connection set-up
        llm_server.inject("429", times=2)
        start = time.monotonic()
        s.score([TEXTS[0] + " again"])
        elapsed = time.monotonic() - start
    assert elapsed < 2.0  # generous for a loaded machine; a Retry-After-style wait would be seconds per retry
    assert llm_server.requests == 6


def test_stall_past_timeout_is_retried(llm_server: FakeLLMServer) -> None:
    """A server that stalls past timeout_s is abandoned after timeout_s and asked again."""
    llm_server.inject("stall", seconds=3.0)
    start = time.monotonic()
    with make(llm_server, timeout_s=0.5, max_concurrency=1) as s:
        np.testing.assert_array_equal(s.score(TEXTS[:1]), expected(TEXTS[:1]))
        assert s.usage["retries"] == 1
    assert 0.5 <= time.monotonic() - start < 2.5


def test_stall_until_retries_run_out(llm_server: FakeLLMServer) -> None:
    """Stalling on every attempt ends in an LLMError saying it timed out, with no server answer."""
    llm_server.inject("stall", times=2, seconds=2.0)
    with make(llm_server, timeout_s=0.3, max_retries=1) as s, pytest.raises(LLMError) as info:
        s.score(TEXTS[:1])
    assert str(info.value) == prefix(0, 2, "none") + "timed out after 0.3 s; last answer: (none)"
    assert (info.value.status_code, info.value.text_index) == (None, 0)


def test_connection_refused() -> None:
    """A port nothing listens on: retried, then an LLMError naming the connection failure."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = LLMSettings(provider="openai-compatible", base_url=f"http://127.0.0.1:{port}/v1", model="fake",
                           score_method="json", max_retries=2)
    with LLMScorer(settings, LABELS, False, cache_dir=None, **FAST) as s, pytest.raises(LLMError) as info:
        s.score(["ticket 1: hello"])
    assert str(info.value).startswith(prefix(0, 3, "none") + "connection failed (")
    assert str(info.value).endswith("; last answer: (none)")
    assert s.usage["retries"] == 2


@pytest.mark.parametrize("kind,reason,answer", [
    ("500", "HTTP 500", '{"error": {"message": "injected 500", "type": "500", "param": null, "code": null}}'),
    ("503", "HTTP 503", '{"error": {"message": "injected 503", "type": "503", "param": null, "code": null}}'),
    ("not_json", "unusable answer: the response body is not JSON",
     "<html><body>502 upstream hiccup</body></html>"),
    ("no_choices", "unusable answer: the response has no choices", None),
    ("bad_scores", "unusable answer: the answer has keys that are not labels: ['not_a_label']", None),
])
def test_retries_run_out_with_a_precise_error(llm_server: FakeLLMServer, kind: str, reason: str,
                                              answer: str | None) -> None:
    """When retries run out the error names provider, model, the text's index, status and last answer."""
    llm_server.inject(kind, times=99, text=TEXTS[3])
    with make(llm_server, max_retries=2) as s:
        with pytest.raises(LLMError) as info:
            s.score(TEXTS)
        assert s.usage["failures"] == 1 and s.usage["retries"] == 2
    err = info.value
    status = int(kind) if kind.isdigit() else 200
    assert str(err).startswith(prefix(3, 3, status) + reason + "; last answer: ")
    assert (err.provider, err.model, err.text_index, err.status_code) == ("openai-compatible", "fake", 3, status)
    # an HTTP error keeps the x-request-id header; an unusable 200 answer keeps its completion id, if any
    if kind == "not_json":
        assert err.request_id is None
    else:
        assert (err.request_id or "").startswith("chatcmpl-" if status == 200 else "req-")
    assert isinstance(err, LLMResponseError) == (status == 200)
    if answer is not None:
        assert err.last_response == answer
    assert llm_server.texts_seen.count(TEXTS[3]) == 3


def test_unusable_logprobs_until_retries_run_out(llm_server: FakeLLMServer) -> None:
    """Explicit logprobs with an answer naming no label, every time: LLMResponseError with the tokens."""
    llm_server.inject("no_label_logprobs", times=99)
    with make(llm_server, "logprobs", max_retries=1) as s, pytest.raises(LLMResponseError) as info:
        s.score(TEXTS[:1])
    assert str(info.value).startswith(
        prefix(0, 2, 200) + "unusable answer: no top logprob token names a label (tokens ['The', 'I', '\\n'])")


def test_partial_scores_keep_the_good_rows(llm_server: FakeLLMServer) -> None:
    """score_partial returns the other rows, a NaN row and the error for the failed text (all its copies)."""
    llm_server.inject("502", times=99, text=TEXTS[1])
    with make(llm_server, max_retries=1) as s:
        part = s.score_partial(TEXTS + [TEXTS[1]])
    assert part.ok.tolist() == [True, False, True, True, True, True, False]
    assert np.isnan(part.scores[[1, 6]]).all()
    np.testing.assert_array_equal(part.scores[[0, 2, 3, 4, 5]], expected(TEXTS)[[0, 2, 3, 4, 5]])
    assert sorted(part.errors) == [1, 6] and part.errors[6].text_index == 1 and part.errors[1].status_code == 502


def test_several_failures_are_counted_in_the_message(llm_server: FakeLLMServer) -> None:
    """score() raises the first failed text's error and says how many failed."""
    llm_server.inject("500", times=99)
    with make(llm_server, max_retries=0) as s, pytest.raises(LLMError) as info:
        s.score(TEXTS[:3])
    assert info.value.text_index == 0 and str(info.value).endswith("(3 texts failed; the first is shown)")


def test_client_errors_are_not_retried(llm_server: FakeLLMServer) -> None:
    """A 4xx other than 429 fails at once (one request)."""
    llm_server.inject("echo_key")
    with make(llm_server) as s, pytest.raises(LLMError) as info:
        s.score(TEXTS[:1])
    assert info.value.status_code == 401 and llm_server.requests == 1


def test_auto_gives_up_after_three_failed_probes(llm_server: FakeLLMServer) -> None:
    """If the first three texts fail for good, 'auto' stays unresolved and the rest are not sent."""
    llm_server.inject("500", times=99)
    with make(llm_server, "auto", max_retries=0) as s:
        part = s.score_partial(TEXTS)
        assert s.score_method == "auto"
    assert llm_server.requests == 3 and not part.ok.any()
    assert str(part.errors[5]).startswith("LLM request for text 5 was not sent: score_method 'auto' could not be "
                                          "resolved because the first 3 texts failed (last: LLM request for text 2")


@pytest.mark.parametrize("status", [401, 500])
def test_echoed_key_never_leaks(llm_server: FakeLLMServer, caplog: pytest.LogCaptureFixture, status: int) -> None:
    """A server echoing the Authorization header: the key is in no message, attribute, traceback or log."""
    caplog.set_level(logging.DEBUG)
    llm_server.inject("echo_key", times=99, status=status)
    with make(llm_server, max_retries=1) as s, pytest.raises(LLMError) as info:
        s.score(TEXTS[:2])
    err = info.value
    assert "Bearer ***" in str(err) and "Bearer ***" in (err.last_response or "")
    seen = [str(err), repr(err), err.last_response or "", "".join(traceback.format_exception(err)), caplog.text,
            repr(vars(err))]
    assert all("SECRET123" not in text for text in seen)
    assert any(r.name.startswith("textclassify") for r in caplog.records)
