"""LLMSettings: everything that decides which answers the LLM gives (and so the cache key)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from textclassify.runtime import constants as K
from textclassify.runtime.errors import ConfigError
from textclassify.runtime.llm.providers import PROVIDERS
from textclassify.runtime.validation import check_base_url, check_number, redact_url, short_repr


@dataclass(frozen=True)
class LLMSettings:
    """Provider, model, endpoint and request policy; never holds an API key."""

    provider: str
    model: str | None = None
    base_url: str | None = None
    temperature: float = K.DEFAULT_TEMPERATURE
    max_concurrency: int = K.DEFAULT_MAX_CONCURRENCY
    timeout_s: float = K.DEFAULT_TIMEOUT_S
    max_retries: int = K.DEFAULT_MAX_RETRIES
    score_method: str = "auto"
    on_unusable_answer: str = "raise"
    prompt_version: str = K.PROMPT_VERSION
    # Overall limit in seconds on one scoring call (one predict); None: derived from timeout_s and max_retries
    # (see LLMScorer.deadline_for). Not part of the cache key: it decides when to stop, never the answer.
    deadline_s: float | None = None
    # {"input": USD, "output": USD} per million tokens, for a model the built-in price table lacks (or to
    # replace its list price). Not part of the cache key: it prices the answers, never changes them.
    price_per_million: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.provider, str) or self.provider not in PROVIDERS:
            raise ConfigError(f"llm_provider: expected one of {sorted(PROVIDERS)}, got {short_repr(self.provider)}")
        for name in ("model", "base_url"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"llm_{name}: expected a string or None, got {short_repr(value)}")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"llm_base_url: expected an http(s) URL, got {short_repr(redact_url(self.base_url))}")
        check_base_url(self.base_url)
        check_number(self.temperature, "llm.temperature", 0.0, 2.0)
        check_number(self.max_concurrency, "llm.max_concurrency", 1, 1024, integer=True)
        check_number(self.timeout_s, "llm.timeout_s", 0.0, 3600.0, lo_open=True)
        check_number(self.max_retries, "llm.max_retries", 0, 50, integer=True)
        if self.deadline_s is not None:
            check_number(self.deadline_s, "llm.deadline_s", 0.0, 7 * 24 * 3600.0, lo_open=True)
        if not isinstance(self.prompt_version, str):
            raise ConfigError(f"llm.prompt_version: expected a string, got {short_repr(self.prompt_version)}")
        if not isinstance(self.score_method, str) or self.score_method not in K.SCORE_METHODS:
            raise ConfigError(f"llm.score_method: expected one of {list(K.SCORE_METHODS)}, "
                              f"got {short_repr(self.score_method)}")
        price = self.price_per_million
        if price is not None and (not isinstance(price, dict) or set(price) != {"input", "output"}
                                  or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0
                                         or v == float("inf") for v in price.values())):
            raise ConfigError(f"llm.price_per_million: expected {{input: USD, output: USD}} per million tokens "
                              f"(numbers >= 0), got {short_repr(price)}")
        if not isinstance(self.on_unusable_answer, str) or self.on_unusable_answer not in K.UNUSABLE_ANSWER_POLICIES:
            raise ConfigError(f"llm.on_unusable_answer: expected one of {list(K.UNUSABLE_ANSWER_POLICIES)}, "
                              f"got {short_repr(self.on_unusable_answer)}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LLMSettings:
        """Build from a validated AutoFusionClassifier config (top-level llm_* keys and the llm block)."""
        llm = config.get("llm", {})
        return cls(
            provider=config["llm_provider"], model=config.get("llm_model"), base_url=config.get("llm_base_url"),
            **{k: llm[k] for k in ("temperature", "max_concurrency", "timeout_s", "max_retries", "score_method",
                                        "on_unusable_answer", "deadline_s", "price_per_million")
               if k in llm},
        )

    def with_overrides(self, **changes: Any) -> LLMSettings:
        """A copy with some fields changed (settings are immutable)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
