"""Tests of textclassify.runtime.llm.client (LLMScorer) through the real openai SDK and a loopback server."""
from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.support.data import LABELS, keyword_scores, make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify.runtime.errors import ConfigError, DataError, LLMError
from textclassify.runtime.llm import LLMScorer, LLMSettings

TEXTS = [t for t, _ in make_tickets(12, seed=5)]
ML_TEXTS = [t for t, _ in make_tickets(12, seed=6, multi_label=True)]


def expected(texts: list[str], labels: list[str] = LABELS, multi: bool = False, normalise: bool = False) -> np.ndarray:
    rows = np.array([[keyword_scores(t, labels, multi)[lab] for lab in labels] for t in texts], dtype=np.float64)
    if normalise:
        rows = rows / rows.sum(axis=1, keepdims=True)
    return rows.astype(np.float32)


def scorer(server: FakeLLMServer, cache_dir: Path | None, method: str = "json", multi: bool = False,
           labels: list[str] = LABELS, **settings: object) -> LLMScorer:
    return LLMScorer(server.settings(score_method=method, **settings), labels, multi, cache_dir=cache_dir)


def test_json_multi_class(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """JSON scores equal the server's, in label order, one request per text, response_format json_object."""
    with scorer(llm_server, tmp_path) as s:
        scores = s.score(TEXTS)
        assert s.score_method == "json"
    assert scores.dtype == np.float32 and scores.shape == (12, 3)
    np.testing.assert_array_equal(scores, expected(TEXTS))
    assert llm_server.requests == 12
    body = llm_server.bodies[0]
    assert body["response_format"] == {"type": "json_object"}
    assert (body["model"], body["temperature"]) == ("fake", 0.0)


def test_json_multi_label(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """Multi-label JSON scores are independent per label (no renormalisation)."""
    with scorer(llm_server, tmp_path, multi=True) as s:
        scores = s.score(ML_TEXTS)
    np.testing.assert_array_equal(scores, expected(ML_TEXTS, multi=True))
    assert "independently" in llm_server.bodies[0]["messages"][0]["content"]


def test_logprobs_multi_class(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """Logprob scores are the first token's probabilities renormalised over the labels."""
    with scorer(llm_server, tmp_path, method="logprobs") as s:
        scores = s.score(TEXTS)
    np.testing.assert_allclose(scores, expected(TEXTS, normalise=True), atol=1e-6)
    body = llm_server.bodies[0]
    assert (body["logprobs"], body["top_logprobs"], body["max_tokens"]) == (True, 20, 4)
    assert "response_format" not in body


def test_logprobs_with_codes_when_labels_share_a_first_token(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """Labels sharing their first characters are asked for as codes A, B, C and read back by code."""
    labels = ["tech support", "technical", "billing"]
    with scorer(llm_server, tmp_path, method="logprobs", labels=labels) as s:
        scores = s.score(TEXTS[:4])
    np.testing.assert_allclose(scores, expected(TEXTS[:4], labels, normalise=True), atol=1e-6)
    assert "A: tech support\nB: technical\nC: billing" in llm_server.bodies[0]["messages"][0]["content"]


def test_auto_resolves_to_logprobs_and_is_read_back_from_the_cache(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """'auto' probes once, keeps logprobs, records it; a new scorer knows it and a cached run sends nothing."""
    with scorer(llm_server, tmp_path, method="auto") as s:
        assert s.score_method == "auto"
        first = s.score(TEXTS)
        assert s.score_method == "logprobs"
    assert llm_server.requests == 12
    with scorer(llm_server, tmp_path, method="auto") as again:
        assert again.score_method == "logprobs"
        np.testing.assert_array_equal(again.score(TEXTS), first)
        assert again.usage["requests"] == 0 and again.usage["cache_hits"] == 12
    assert llm_server.requests == 12


def test_auto_falls_back_to_json_without_logprobs(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """A server without logprobs makes 'auto' use json: one extra request for the probe text, then json."""
    llm_server.logprobs_enabled = False
    with scorer(llm_server, tmp_path, method="auto") as s:
        scores = s.score(TEXTS)
        assert s.score_method == "json"
    np.testing.assert_array_equal(scores, expected(TEXTS))
    assert llm_server.requests == 13
    assert llm_server.bodies[0].get("logprobs") is True and "logprobs" not in llm_server.bodies[1]
    with scorer(llm_server, tmp_path, method="auto") as again:
        assert again.score_method == "json"
        again.score(TEXTS)
    assert llm_server.requests == 13


def test_auto_falls_back_when_no_logprob_names_a_label(llm_server: FakeLLMServer) -> None:
    """Logprobs whose top tokens name no label also resolve 'auto' to json."""
    llm_server.inject("no_label_logprobs")
    with scorer(llm_server, None, method="auto") as s:
        np.testing.assert_array_equal(s.score(TEXTS[:3]), expected(TEXTS[:3]))
        assert s.score_method == "json"
    assert llm_server.requests == 4


def test_auto_multi_label_is_json_without_probe(llm_server: FakeLLMServer) -> None:
    """Multi-label 'auto' means json from the start."""
    with scorer(llm_server, None, method="auto", multi=True) as s:
        assert s.score_method == "json"
        s.score(ML_TEXTS[:3])
    assert llm_server.requests == 3 and all("logprobs" not in b for b in llm_server.bodies)


def test_logprobs_for_multi_label_is_a_config_error(llm_server: FakeLLMServer) -> None:
    """Explicit logprobs with multi_label=True is refused."""
    with pytest.raises(ConfigError) as info:
        scorer(llm_server, None, method="logprobs", multi=True)
    assert str(info.value) == ("llm.score_method 'logprobs' is for multi-class tasks only; use 'json' or 'auto' "
                               "for multi_label=True")


def test_second_call_is_served_from_the_cache(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """Scoring the same texts again (same or new scorer) sends zero requests."""
    with scorer(llm_server, tmp_path) as s:
        first = s.score(TEXTS)
        np.testing.assert_array_equal(s.score(TEXTS), first)
        assert s.usage["cache_hits"] == 12
    with scorer(llm_server, tmp_path) as s2:
        np.testing.assert_array_equal(s2.score(list(reversed(TEXTS))), first[::-1])
    assert llm_server.requests == 12


def test_duplicates_are_requested_once_and_empty_input(llm_server: FakeLLMServer) -> None:
    """Repeated texts in one call cost one request; an empty list gives shape (0, C)."""
    with scorer(llm_server, None) as s:
        scores = s.score([TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[0]])
        assert s.score([]).shape == (0, 3)
    assert llm_server.requests == 2
    np.testing.assert_array_equal(scores[[0, 2, 3]], np.repeat(scores[:1], 3, axis=0))


def test_usage_and_cost(llm_server: FakeLLMServer) -> None:
    """Token usage is summed from responses; cost is None for an unknown model and priced for a known one."""
    with scorer(llm_server, None) as s:
        s.score(TEXTS[:3])
        usage = s.usage
    assert usage["requests"] == 3 and usage["retries"] == 0 and usage["failures"] == 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert usage["cost_usd"] is None
    settings = LLMSettings(provider="openai-compatible", base_url=llm_server.base_url, model="gpt-4o-mini",
                           score_method="json")
    with LLMScorer(settings, LABELS, False, cache_dir=None) as priced:
        priced.score(TEXTS[:3])
        u = priced.usage
    assert u["cost_usd"] == pytest.approx((u["prompt_tokens"] * 0.15 + u["completion_tokens"] * 0.60) / 1e6)


def test_missing_key_and_base_url_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hosted providers need their key variable; openai-compatible needs a base URL and a model."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        LLMScorer(LLMSettings(provider="deepseek"), LABELS, False, cache_dir=None)
    assert str(info.value) == ("No API key for llm_provider 'deepseek': set the environment variable "
                               "DEEPSEEK_API_KEY (API keys are read from the environment only).")
    with pytest.raises(ConfigError, match="^llm_base_url is required for llm_provider 'openai-compatible'$"):
        LLMScorer(LLMSettings(provider="openai-compatible"), LABELS, False, cache_dir=None)
    with pytest.raises(ConfigError, match="^llm_model is required for llm_provider 'openai-compatible'$"):
        LLMScorer(LLMSettings(provider="openai-compatible", base_url="http://127.0.0.1:9/v1"), LABELS, False,
                  cache_dir=None)


def test_openai_compatible_works_without_a_key(llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no key in the environment, openai-compatible sends a placeholder key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with scorer(llm_server, None) as s:
        s.score(TEXTS[:1])
    assert llm_server.requests == 1


def test_bad_labels_and_texts(llm_server: FakeLLMServer) -> None:
    """Repeated labels are a ConfigError; a non-string text is a DataError naming its index."""
    with pytest.raises(ConfigError, match=r"^labels must be unique \(repeated: \['a'\]\)$"):
        scorer(llm_server, None, labels=["a", "b", "a"])
    with scorer(llm_server, None) as s, pytest.raises(DataError, match=r"^texts\[1\] must be a string \(got int\)$"):
        s.score(["ok", 3])  # type: ignore[list-item]
    assert llm_server.requests == 0


def test_response_format_rejection_is_remembered(tmp_path: Path) -> None:
    """A server refusing response_format (400) is asked again without it, once, and never again."""
    with FakeLLMServer(accept_response_format=False) as server:
        with scorer(server, None, max_concurrency=1) as s:
            np.testing.assert_array_equal(s.score(TEXTS[:5]), expected(TEXTS[:5]))
            assert s.usage["requests"] == 6
        assert ["response_format" in b for b in server.bodies] == [True] + [False] * 5


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    """Never more than max_concurrency requests are in flight."""
    with FakeLLMServer(delay_s=0.05) as server, scorer(server, tmp_path, max_concurrency=3) as s:
        s.score(TEXTS)
        assert server.max_in_flight == 3


def test_works_inside_a_running_event_loop_and_from_threads(llm_server: FakeLLMServer) -> None:
    """score() can be called from a coroutine and from several threads at once."""
    with scorer(llm_server, None) as s:
        async def inside() -> np.ndarray:
            return s.score(TEXTS[:4])

        np.testing.assert_array_equal(asyncio.run(inside()), expected(TEXTS[:4]))
        with ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(lambda i: s.score(TEXTS[i::4]), range(4)))
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part, expected(TEXTS[i::4]))


def test_first_calls_from_many_threads_share_one_loop(llm_server: FakeLLMServer) -> None:
    """Eight threads making the very first call at once start one event-loop thread, not eight."""
    import threading

    before = {t.ident for t in threading.enumerate() if t.name == "textclassify-llm"}
    barrier = threading.Barrier(8)

    def first_call(i: int) -> np.ndarray:
        barrier.wait()
        return s.score([TEXTS[i]])

    with scorer(llm_server, None) as s, ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(first_call, range(8)))
        loops = {t.ident for t in threading.enumerate() if t.name == "textclassify-llm"} - before
    assert len(loops) == 1
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part, expected([TEXTS[i]]))


def test_progress_bar_on_stderr(llm_server: FakeLLMServer, capsys: pytest.CaptureFixture[str]) -> None:
    """progress=True draws a tqdm bar on stderr, nothing on stdout."""
    with scorer(llm_server, None) as s:
        s.score(TEXTS[:3], progress=True)
    out, err = capsys.readouterr()
    assert "LLM scores" in err and "3/3" in err and out == ""


def test_closed_scorer_refuses_work(llm_server: FakeLLMServer) -> None:
    """After close(), score() says the scorer is closed."""
    s = scorer(llm_server, None)
    s.close()
    s.close()
    with pytest.raises(RuntimeError, match="^This LLMScorer is closed; create a new one.$"):
        s.score(["x"])


def test_scores_are_probabilities(llm_server: FakeLLMServer) -> None:
    """Every score lies in [0, 1] and logprob rows sum to 1."""
    with scorer(llm_server, None, method="logprobs") as s:
        scores = s.score(TEXTS)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert all(math.isclose(float(r.sum()), 1.0, rel_tol=1e-5) for r in scores)


def test_abstain_gives_no_opinion_rows_for_unusable_answers(llm_server):
    """on_unusable_answer='abstain': a text whose answer names no label gets 1/C, is counted and not cached."""
    labels = ["billing", "shipping", "technical"]
    settings = llm_server.settings(score_method="logprobs", max_retries=0, on_unusable_answer="abstain")
    texts = ["refund my invoice refund payment", "where is my parcel", "login error password crash"]
    llm_server.inject("no_label_logprobs", times=1, text="parcel")
    with LLMScorer(settings, labels, False, cache_dir=None) as scorer:
        scores = scorer.score(texts)
        assert scorer.usage["abstained"] == 1 and scorer.usage["requests"] == 3
    np.testing.assert_allclose(scores[1], [1 / 3] * 3)
    assert scores[0].argmax() == 0 and scores[2].argmax() == 2


def test_abstain_still_raises_server_failures(llm_server):
    """A server error is not an abstention: score raises LLMError even with on_unusable_answer='abstain'."""
    settings = llm_server.settings(score_method="logprobs", max_retries=0, on_unusable_answer="abstain")
    llm_server.inject("500", times=1)
    with LLMScorer(settings, ["a1", "b2"], False, cache_dir=None) as scorer, pytest.raises(LLMError) as info:
        scorer.score(["one text"])
    assert info.value.status_code == 500


def test_unusable_answer_policy_is_validated():
    """An unknown on_unusable_answer value is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"^llm.on_unusable_answer: expected one of \['raise', 'abstain'\], "
                                          r"got 'ignore'$"):
        LLMSettings(provider="openai-compatible", base_url="http://127.0.0.1:9/v1", on_unusable_answer="ignore")
