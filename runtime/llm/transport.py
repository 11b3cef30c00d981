"""One text's request to the chat API, with our own retries: the part of LLMScorer that talks HTTP.

A mixin: LLMScorer holds the state (settings, client, usage counters, label codes) and this class
the request path -- the `openai` SDK's generic POST (its own retries off), Retry-After and jittered
exponential backoff, parsing the answer into scores, and the final LLMError with the key scrubbed.

Why the generic POST and not `client.chat.completions.create` with a typed ChatCompletion: the typed
path (through `with_raw_response`, with typed parsing) was built and measured back to back with this one
by benchmarks/llm_load.py (5,000 texts, 32 in flight against a 100 ms loopback server, a 320 req/s
bound) on a quiet 2-core machine: raw 291.7 and 298.3 req/s at 1.86 and 1.69 ms of client CPU per
request; typed 270.6 and 294.3 req/s at 3.22 and 2.56 ms. The typed path costs 50-75% more client
CPU per request, which caps the scorer's single event-loop thread at about 310-390 req/s, at or below
the target; this path leaves it at 540-590. Figures and runs: benchmarks/README.md.

Our retry loop stays either way: each attempt must reach the circuit breaker and usage["retries"],
honour Retry-After up to RETRY_AFTER_MAX_S and fit in timeout_s as a whole, which the SDK's internal
retries do not expose per attempt.
"""
from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from textclassify.runtime import constants as K
from textclassify.runtime.errors import LLMError, LLMResponseError
from textclassify.runtime.llm import parsing as P
from textclassify.runtime.llm.prompts import JSON, LOGPROBS, build_messages

if TYPE_CHECKING:
    import asyncio

    from textclassify.runtime.llm.breaker import CircuitBreaker
    from textclassify.runtime.llm.settings import LLMSettings

log = logging.getLogger("textclassify.llm")
PLACEHOLDER_KEY = "not-needed"


class ProbeFallback(Exception):
    """The logprobs probe found no usable logprobs: resolve 'auto' to json."""

    def __init__(self, persist: bool) -> None:
        super().__init__("no usable logprobs")
        self.persist = persist


class RequestTransport:
    """Requests for LLMScorer (see the module docstring); the attributes below are set by LLMScorer."""

    settings: LLMSettings
    labels: list[str]
    multi_label: bool
    model: str
    _api_model: str
    _api_key: str | None
    _base_url: str | None
    _backoff: tuple[float, float]
    _codes: Any
    _response_format_ok: bool
    _usage: dict[str, int]
    _client: Any
    _sem: asyncio.Semaphore | None
    _client_lock: asyncio.Lock | None
    _breaker: CircuitBreaker

    async def _ensure_client(self) -> None:
        if self._client is not None:
            return
        import asyncio

        import openai

        if self._sem is None:  # created on the loop thread, where nothing runs between check and set
            self._sem = asyncio.Semaphore(self.settings.max_concurrency)
            self._client_lock = asyncio.Lock()
        async with self._client_lock:  # the local server start awaits: one coroutine does it
            if self._client is not None:
                return
            if self._base_url is None:  # provider "local": start (or reuse) the embedded server
                from textclassify.runtime.llm.local_server import ensure_local_server

                self._base_url, self._api_model = await asyncio.to_thread(ensure_local_server, self.settings.model)
            self._client = openai.AsyncOpenAI(api_key=self._api_key or PLACEHOLDER_KEY, base_url=self._base_url,
                                              timeout=self.settings.timeout_s, max_retries=0)

    def _request_kwargs(self, method: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self._api_model,
                                  "temperature": self.settings.temperature}
        if method == LOGPROBS:
            kwargs.update(max_tokens=K.LOGPROBS_MAX_TOKENS, logprobs=True, top_logprobs=K.TOP_LOGPROBS)
        else:
            kwargs["max_tokens"] = 100 + 32 * len(self.labels)
            if self._response_format_ok:
                kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    async def _attempts(self, text: str, index: int, method: str, probe: bool = False
                        ) -> tuple[list[float], dict[str, int]]:
        """Scores of one text by `method`, retrying transient failures; raises LLMError when they run out."""
        import asyncio

        import openai

        messages = build_messages(text, self.labels, multi_label=self.multi_label, method=method,
                                  use_codes=self._codes is not None)
        attempt, parse_failed = 0, False
        while True:
            if not self._breaker.allow():
                raise self._breaker_error(index, attempt)
            kwargs = self._request_kwargs(method)
            status: int | None = None
            request_id = retry_after = None
            answer = ""
            self._usage["requests"] += 1
            outage = False  # a failure that says the endpoint is down: counts towards the circuit breaker
            try:
                # The SDK's documented generic call: same auth, base URL, timeout and error mapping as
                # chat.completions.create, without its per-call transform of typed params, which cost a
                # quarter of the client's CPU per request in benchmarks/llm_load.py.
                # httpx's timeout restarts with every byte received (a server dribbling one byte every 2 s
                # never times out); wait_for bounds the whole request: connect, headers and body.
                body = {"messages": messages, **kwargs}
                answer = await asyncio.wait_for(self._client.post("/chat/completions", cast_to=str, body=body),
                                                timeout=self.settings.timeout_s)
            except openai.APIStatusError as e:
                status, request_id, answer = e.status_code, e.request_id, P.response_text(e.response)
                retry_after = P.retry_after_seconds(e.response.headers)
                if status == 400 and "response_format" in kwargs:
                    self._breaker.record_neutral()
                    self._response_format_ok = False  # the server rejects it: ask without, once
                    log.info("%s rejected response_format json_object; asking without it", self.model)
                    continue
                if status == 400 and probe:
                    self._breaker.record_neutral()
                    raise ProbeFallback(persist=False) from None
                retryable, reason, parse_failed = status in (408, 409, 429) or status >= 500, f"HTTP {status}", False
                outage = status >= 500
            except (openai.APITimeoutError, asyncio.TimeoutError):
                retryable, reason, parse_failed = True, f"timed out after {self.settings.timeout_s:g} s", False
                outage = True
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e
                retryable, reason, parse_failed = True, f"connection failed ({type(cause).__name__}: {cause})", False
                outage = True
            else:
                status = 200
                self._breaker.record_success()
                try:
                    return self._parse(answer, method, probe)
                except LLMResponseError as e:
                    request_id = P.completion_id(answer)
                    retryable, reason, parse_failed = True, f"unusable answer: {e}", True
            if outage:
                self._breaker.record_failure()
            elif status is not None and status != 200:
                self._breaker.record_neutral()
            if not retryable or attempt >= self.settings.max_retries:
                raise self._final_error(index, attempt + 1, status, request_id, reason, answer, parse_failed)
            attempt += 1
            self._usage["retries"] += 1
            delay = self._delay(attempt, retry_after)
            log.debug("retrying text %d in %.2f s after %s", index, delay, P.scrub(reason, self._api_key))
            await asyncio.sleep(delay)

    def _breaker_error(self, index: int, attempts: int) -> LLMError:
        """The error of a text not (or no longer) sent because the circuit breaker is open."""
        return LLMError(
            f"LLM request for text {index} was not sent (after {attempts} attempt(s)): {self._breaker.describe()} "
            f"(provider {self.settings.provider!r}, model {self.model!r})",
            provider=self.settings.provider, model=self.model, text_index=index)

    def _parse(self, body_text: str, method: str, probe: bool) -> tuple[list[float], dict[str, int]]:
        body = P.parse_body(body_text)
        prompt, completion, total = P.usage_counts(body)
        self._usage["prompt_tokens"] += prompt
        self._usage["completion_tokens"] += completion
        self._usage["total_tokens"] += total
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
        choice = P.first_choice(body)
        if method == JSON:
            return P.parse_json_scores(P.message_content(choice), self.labels), usage
        if probe:
            pairs = P.first_token_logprobs(choice)
            if pairs is None or P.logprob_scores(pairs, self.labels, self._codes) is None:
                raise ProbeFallback(persist=True)
        return P.parse_logprob_scores(choice, self.labels, self._codes), usage

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, K.RETRY_AFTER_MAX_S)
        initial, cap = self._backoff
        return min(initial * 2 ** (attempt - 1), cap) * random.uniform(0.5, 1.0)

    def _final_error(self, index: int, attempts: int, status: int | None, request_id: str | None, reason: str,
                     answer: str, parse_failed: bool) -> LLMError:
        last = P.truncate(P.scrub(answer, self._api_key))
        message = P.scrub(
            f"LLM request for text {index} failed after {attempts} attempt(s) (provider "
            f"{self.settings.provider!r}, model {self.model!r}, status {status if status is not None else 'none'}"
            f"): {reason}; last answer: {last if last else '(none)'}", self._api_key)
        cls = LLMResponseError if parse_failed else LLMError
        return cls(message, provider=self.settings.provider, model=self.model, text_index=index, status_code=status,
                   request_id=request_id, last_response=last)
