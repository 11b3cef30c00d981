"""LLMSettings: everything that decides which answers the LLM gives (and so the cache key)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from textclassify.runtime import constants as K
from textclassify.runtime.errors import ConfigError
from textclassify.runtime.llm.providers import PROVIDERS


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

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ConfigError(f"llm_provider: expected one of {sorted(PROVIDERS)}, got {self.provider!r}")
        if self.score_method not in K.SCORE_METHODS:
            raise ConfigError(f"llm.score_method: expected one of {list(K.SCORE_METHODS)}, got {self.score_method!r}")
        if self.on_unusable_answer not in K.UNUSABLE_ANSWER_POLICIES:
            raise ConfigError(f"llm.on_unusable_answer: expected one of {list(K.UNUSABLE_ANSWER_POLICIES)}, "
                              f"got {self.on_unusable_answer!r}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LLMSettings:
        """Build from a validated AutoFusionClassifier config (top-level llm_* keys and the llm block)."""
        llm = config.get("llm", {})
        return cls(
            provider=config["llm_provider"], model=config.get("llm_model"), base_url=config.get("llm_base_url"),
            **{k: llm[k] for k in ("temperature", "max_concurrency", "timeout_s", "max_retries", "score_method",
                                        "on_unusable_answer")
               if k in llm},
        )

    def with_overrides(self, **changes: Any) -> LLMSettings:
        """A copy with some fields changed (settings are immutable)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
