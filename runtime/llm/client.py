"""LLMScorer: per-label scores for texts from any OpenAI-compatible chat API, cached and concurrent.

Requests go through the `openai` SDK (its own retries off; ours honour Retry-After and back off
exponentially with jitter: llm/transport.py) on a private event loop in a daemon thread
(llm/loop_thread.py), so `score` works the same from plain code, from worker threads and from
inside a running event loop. Texts all found in the cache are answered on the calling thread, and
asyncio is imported inside the functions that use it: a served bundle with a warm cache then starts
no thread and pays no 13 ms asyncio import.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from textclassify.runtime import constants as K
from textclassify.runtime.errors import ConfigError, DataError, LLMError, LLMResponseError
from textclassify.runtime.llm.breaker import BREAKER_COOLDOWN_S, BREAKER_THRESHOLD, CircuitBreaker
from textclassify.runtime.llm.cache import ScoreCache, resolution_key, score_key
from textclassify.runtime.llm.loop_thread import LoopThread
from textclassify.runtime.llm.pricing import cost_usd
from textclassify.runtime.llm.prompts import (
    JSON,
    LOGPROBS,
    MAX_CODES,
    check_labels,
    label_codes,
    labels_need_codes,
)
from textclassify.runtime.llm.providers import PROVIDERS, resolve_base_url
from textclassify.runtime.llm.settings import LLMSettings
from textclassify.runtime.llm.transport import ProbeFallback, RequestTransport

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("textclassify.llm")
T = TypeVar("T")
PROBE_ATTEMPTS = 3  # texts tried before score_method "auto" gives up resolving
BUSY_POLL_S = 0.1  # how often a text another process is requesting is looked up again
_USAGE_KEYS = ("requests", "cache_hits", "retries", "failures", "abstained", "prompt_tokens", "completion_tokens",
               "total_tokens")


@dataclass
class PartialScores:
    """Scores of the texts that succeeded (NaN rows elsewhere), a success mask and each failure."""

    scores: np.ndarray
    ok: np.ndarray
    errors: dict[int, LLMError]


class LLMScorer(RequestTransport):
    """Scores texts against `labels` with the LLM `settings` describe (cached, concurrent, retried)."""

    def __init__(
        self, settings: LLMSettings, labels: Sequence[str], multi_label: bool, *,
        cache_dir: str | os.PathLike[str] | None = K.DEFAULT_CACHE_DIR, api_key: str | None = None,
        backoff_initial_s: float = K.BACKOFF_INITIAL_S, backoff_max_s: float = K.BACKOFF_MAX_S,
        breaker_threshold: int = BREAKER_THRESHOLD, breaker_cooldown_s: float = BREAKER_COOLDOWN_S,
    ) -> None:
        self.settings = settings
        self.labels = check_labels(labels)
        self.multi_label = bool(multi_label)
        self._backoff = (float(backoff_initial_s), float(backoff_max_s))
        preset = PROVIDERS[settings.provider]
        if settings.max_concurrency < 1 or settings.timeout_s <= 0 or settings.max_retries < 0:
            raise ConfigError("llm: max_concurrency must be >= 1, timeout_s > 0 and max_retries >= 0 "
                              f"(got {settings.max_concurrency}, {settings.timeout_s}, {settings.max_retries})")
        if settings.provider == "local":
            self._base_url: str | None = None  # known once the local server runs
            from textclassify.runtime.llm.local_server import local_model_name

            # The GGUF's file name, also when llm_model is None (the default GGUF, or $TEXTCLASSIFY_LOCAL_GGUF):
            # answers of different models never share cache rows.
            self._key_base_url, self.model = "local", local_model_name(settings.model)
        else:
            base_url = resolve_base_url(settings.provider, settings.base_url)
            if not base_url:
                raise ConfigError(f"llm_base_url is required for llm_provider {settings.provider!r}")
            self._base_url = self._key_base_url = base_url.rstrip("/")
            model = settings.model or preset.default_model
            if not model:
                raise ConfigError(f"llm_model is required for llm_provider {settings.provider!r}")
            self.model = model
        self._api_model = self.model  # provider "local": the name its server reports
        self._api_key = api_key or (os.environ.get(preset.api_key_env) if preset.api_key_env else None) or None
        if preset.key_required and not self._api_key:
            raise ConfigError(f"No API key for llm_provider {settings.provider!r}: set the environment variable "
                              f"{preset.api_key_env} (API keys are read from the environment only).")
        self._use_codes = labels_need_codes(self.labels)
        self._codes = label_codes(self.labels) if self._use_codes and len(self.labels) <= MAX_CODES else None
        self._method = self._initial_method(settings.score_method)
        self._response_format_ok = True
        self._usage = dict.fromkeys(_USAGE_KEYS, 0)
        self._cache = ScoreCache(cache_dir) if cache_dir is not None else None
        self._resolution_key = resolution_key(
            provider=settings.provider, model=self.model, base_url=self._key_base_url,
            prompt_version=settings.prompt_version, labels=self.labels, multi_label=self.multi_label)
        if self._method is None and self._cache is not None:
            self._method = self._cache.get_meta(self._resolution_key)
        self._closed = False
        self._runner: LoopThread | None = None
        self._start_lock = threading.Lock()
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None
        self._client_lock: asyncio.Lock | None = None
        self._lease_s = (settings.timeout_s + self._backoff[1] + 1.0) * (settings.max_retries + 1)
        self._breaker = CircuitBreaker(breaker_threshold, breaker_cooldown_s)

    def _initial_method(self, requested: str) -> str | None:
        can_logprobs = not self.multi_label and (not self._use_codes or len(self.labels) <= MAX_CODES)
        if requested == LOGPROBS and self.multi_label:
            raise ConfigError("llm.score_method 'logprobs' is for multi-class tasks only; use 'json' or 'auto' "
                              "for multi_label=True")
        if requested == LOGPROBS and not can_logprobs:
            raise ConfigError(f"llm.score_method 'logprobs' needs short codes for these labels, which cover at "
                              f"most {MAX_CODES} labels (got {len(self.labels)}); use 'json' or 'auto'")
        if requested == "auto":
            return None if can_logprobs else JSON
        return requested

    # -- public surface --------------------------------------------------------------------------
    @property
    def score_method(self) -> str:
        """'logprobs' or 'json'; 'auto' until the first request (or the cache) resolves it."""
        return self._method or "auto"

    @property
    def usage(self) -> dict[str, Any]:
        """Requests, cache hits, retries, failures, token counts and estimated cost (None if unknown)."""
        usage: dict[str, Any] = dict(self._usage)
        usage["cost_usd"] = cost_usd(self.model, usage["prompt_tokens"], usage["completion_tokens"],
                                     self.settings.price_per_million)
        usage["circuit_breaker"] = self._breaker.state  # closed | open | half_open
        usage["circuit_breaker_opened"] = self._breaker.times_opened
        return usage

    def deadline_for(self, n_texts: int) -> float:
        """Seconds one scoring call of `n_texts` uncached texts may take: llm.deadline_s, or by default the
        longest the per-request limits allow (every attempt timing out, the longest waits between attempts,
        in ceil(n / max_concurrency) waves), so that only a client that stopped keeping its own limits hits it."""
        if self.settings.deadline_s is not None:
            return float(self.settings.deadline_s)
        s = self.settings
        per_text = (s.timeout_s + max(self._backoff[1], K.RETRY_AFTER_MAX_S)) * (s.max_retries + 1)
        waves = -(-max(n_texts, 1) // s.max_concurrency)
        start = K.LOCAL_SERVER_START_TIMEOUT_S if s.provider == "local" else 0.0
        return start + per_text * waves

    def score(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Raw scores float32 [n, C] in label order; raises LLMError when any text fails for good."""
        part = self.score_partial(texts, progress=progress)
        if not part.errors:
            return part.scores
        first = part.errors[min(part.errors)]
        failed = len({id(e) for e in part.errors.values()})
        err = first
        if failed > 1:
            err = type(first)(f"{first} ({failed} texts failed; the first is shown)", provider=first.provider,
                              model=first.model, text_index=first.text_index, status_code=first.status_code,
                              request_id=first.request_id, last_response=first.last_response)
        raise err

    def score_partial(self, texts: Sequence[str], *, progress: bool = False) -> PartialScores:
        """Scores with per-text failures reported in `errors` instead of raised."""
        if self._closed:
            raise RuntimeError("This LLMScorer is closed; create a new one.")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"texts[{i}] must be a string (got {type(text).__name__})")
        n, c = len(texts), len(self.labels)
        scores = np.full((n, c), np.nan, dtype=np.float32)
        ok = np.zeros(n, dtype=bool)
        errors: dict[int, LLMError] = {}
        if n == 0:
            return PartialScores(scores, ok, errors)
        positions: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            positions.setdefault(text, []).append(i)
        unique = list(positions)
        results: list[Any] = [None] * len(unique)
        pending = self._fill_from_cache(unique, results)
        if pending:  # some texts need the LLM: the event loop thread takes over
            with self._start_lock:  # several threads may make the first call at once
                if self._runner is None:
                    self._runner = LoopThread()
                    weakref.finalize(self, self._runner.stop)  # a scorer dropped without close() frees its thread
            self._runner.run(self._score_unique(unique, [positions[t][0] for t in unique], progress, results,
                                                pending))
        abstain = self.settings.on_unusable_answer == "abstain"
        no_opinion = np.float32(0.5 if self.multi_label else 1.0 / c)
        for text, result in zip(unique, results):
            rows = positions[text]
            if abstain and isinstance(result, LLMResponseError):  # the answer named no label: no opinion
                scores[rows] = no_opinion
                ok[rows] = True
                self._usage["abstained"] += 1
            elif isinstance(result, LLMError):
                errors.update(dict.fromkeys(rows, result))
            else:
                scores[rows] = np.asarray(result, dtype=np.float32)
                ok[rows] = True
        return PartialScores(scores, ok, errors)

    def close(self) -> None:
        """Close the HTTP client, the cache and the event loop thread (idempotent)."""
        if self._runner is not None:
            if self._client is not None:
                self._runner.run(self._client.close())
                self._client = None
            self._runner.stop()
            self._runner = None
        self._sem = None
        self._closed = True
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def __enter__(self) -> LLMScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scheduling ------------------------------------------------------------------------------
    async def _score_unique(self, texts: list[str], indices: list[int], progress: bool, results: list[Any],
                            pending: list[int]) -> list[Any]:
        """Fill `results` for the `pending` texts (those the cache did not answer)."""
        import asyncio

        from tqdm import tqdm  # here, not at import: a served bundle's cold start never pays for it

        bar = tqdm(total=len(pending), desc="LLM scores", unit="text", file=sys.stderr, disable=not progress)
        loop = asyncio.get_running_loop()
        deadline = self.deadline_for(len(pending))
        deadline_at = loop.time() + deadline
        try:
            if pending and self._method is None:
                try:
                    pending = await asyncio.wait_for(self._probe(texts, indices, pending, results, bar),
                                                     timeout=deadline)
                except asyncio.TimeoutError:
                    self._fail_after_deadline(results, [j for j, r in enumerate(results) if r is None], indices,
                                              deadline)
                    return results
                pending = self._fill_from_cache(texts, results, pending)
            tasks = [asyncio.ensure_future(self._score_text(texts[j], indices[j], self._method or JSON))
                     for j in pending]
            for task in tasks:
                task.add_done_callback(lambda _t: bar.update(1))
            try:
                if tasks:
                    await asyncio.wait(tasks, timeout=max(0.0, deadline_at - loop.time()))
                late = [j for j, task in zip(pending, tasks) if not task.done()]
                for task in tasks:
                    if not task.done():
                        task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for j, task in zip(pending, tasks):
                    if j not in late:
                        results[j] = task.result()  # re-raises an unexpected exception
                self._fail_after_deadline(results, late, indices, deadline)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            bar.close()
        return results

    def _fail_after_deadline(self, results: list[Any], late: list[int], indices: list[int], deadline: float) -> None:
        """Mark the texts still unanswered when the call's deadline passed as failed."""
        for j in late:
            results[j] = LLMError(
                f"LLM request for text {indices[j]} did not finish within the call's deadline of {deadline:g} s "
                "(llm.deadline_s); the text was abandoned.",
                provider=self.settings.provider, model=self.model, text_index=indices[j])
            self._usage["failures"] += 1

    def _fill_from_cache(self, texts: list[str], results: list[Any], pending: list[int] | None = None) -> list[int]:
        pending = list(range(len(texts))) if pending is None else pending
        if self._cache is None or self._method is None or not pending:
            return pending
        keys = {j: self._key(texts[j], self._method) for j in pending}
        found = self._cache.get_many(list(keys.values()), len(self.labels))
        for j, key in keys.items():
            if key in found:
                results[j] = found[key]
        self._usage["cache_hits"] += sum(key in found for key in keys.values())
        return [j for j in pending if results[j] is None]

    async def _probe(self, texts: list[str], indices: list[int], pending: list[int], results: list[Any],
                     bar: Any) -> list[int]:
        """Resolve score_method 'auto' on the first pending texts; returns those still pending."""
        failures: list[LLMError] = []
        for j in list(pending):
            pending.remove(j)
            results[j] = await self._score_text(texts[j], indices[j], None)
            bar.update(1)
            if self._method is not None:
                return pending
            failures.append(results[j])
            if len(failures) == PROBE_ATTEMPTS:
                break
        last = failures[-1]
        for j in pending:
            results[j] = LLMError(
                f"LLM request for text {indices[j]} was not sent: score_method 'auto' could not be resolved "
                f"because the first {len(failures)} texts failed (last: {last})",
                provider=self.settings.provider, model=self.model, text_index=indices[j],
                status_code=last.status_code, request_id=last.request_id, last_response=last.last_response)
            self._usage["failures"] += 1
        bar.update(len(pending))
        return []

    def _key(self, text: str, method: str) -> str:
        return score_key(provider=self.settings.provider, model=self.model, base_url=self._key_base_url,
                         prompt_version=self.settings.prompt_version, score_method=method, labels=self.labels,
                         multi_label=self.multi_label, text=text)

    async def _score_text(self, text: str, index: int, method: str | None) -> list[float] | LLMError:
        """One text's scores: from the cache, from another process's answer, or requested here.
        `method` None is the 'auto' probe (no claim: the method, and so the key, is not known yet)."""
        import asyncio

        await self._ensure_client()
        assert self._sem is not None
        while True:
            async with self._sem:
                if self._breaker.is_open():  # fail at once, before touching the cache or the network
                    self._usage["failures"] += 1
                    return self._breaker_error(index, 0)
                claim = None
                if self._cache is not None and method is not None:
                    key = self._key(text, method)
                    claim = self._cache.claim(key, len(self.labels), self._lease_s)
                    if claim.state == "cached":
                        self._usage["cache_hits"] += 1
                        return claim.scores  # type: ignore[return-value]
                if claim is None or claim.state == "mine":
                    return await self._request_and_store(text, index, method)
            await asyncio.sleep(BUSY_POLL_S)

    async def _request_and_store(self, text: str, index: int, method: str | None) -> list[float] | LLMError:
        try:
            if method is None:
                used, scores, usage = await self._probe_request(text, index)
            else:
                used = method
                scores, usage = await self._attempts(text, index, method)
        except LLMError as err:
            if self._cache is not None and method is not None:
                self._cache.release(self._key(text, method))
            self._usage["failures"] += 1
            log.info("%s", err)
            return err
        except BaseException:
            if self._cache is not None and method is not None:
                self._cache.release(self._key(text, method))
            raise
        if self._cache is not None:
            self._cache.put(self._key(text, used), scores, used, usage)
        return scores

    async def _probe_request(self, text: str, index: int) -> tuple[str, list[float], dict[str, int]]:
        try:
            scores, usage = await self._attempts(text, index, LOGPROBS, probe=True)
            self._resolve(LOGPROBS, persist=True)
            return LOGPROBS, scores, usage
        except ProbeFallback as fallback:
            persist = fallback.persist
        log.info("score_method 'auto': %s gives no usable logprobs, using json", self.model)
        self._resolve(JSON, persist=persist)
        scores, usage = await self._attempts(text, index, JSON)
        return JSON, scores, usage

    def _resolve(self, method: str, persist: bool) -> None:
        self._method = method
        if persist and self._cache is not None:
            self._cache.set_meta(self._resolution_key, method)
