"""Provider presets: base URL, default model and API-key variable for each supported LLM service."""
from __future__ import annotations

import os
from dataclasses import dataclass

from textclassify.runtime.errors import ConfigError


@dataclass(frozen=True)
class ProviderPreset:
    """What a provider name stands for; `base_url` None means the user must give one."""

    name: str
    base_url: str | None
    default_model: str | None
    api_key_env: str | None
    key_required: bool
    base_url_env: str | None = None  # overrides `base_url` when set (a gateway or proxy), as the openai SDK does


PROVIDERS: dict[str, ProviderPreset] = {
    "deepseek": ProviderPreset("deepseek", "https://api.deepseek.com/v1", "deepseek-chat", "DEEPSEEK_API_KEY", True,
                               "DEEPSEEK_BASE_URL"),
    "openai": ProviderPreset("openai", "https://api.openai.com/v1", "gpt-4o-mini", "OPENAI_API_KEY", True,
                             "OPENAI_BASE_URL"),
    "gemini": ProviderPreset(
        "gemini", "https://generativelanguage.googleapis.com/v1beta/openai/", "gemini-2.0-flash",
        "GEMINI_API_KEY", True, "GEMINI_BASE_URL",
    ),
    "openai-compatible": ProviderPreset("openai-compatible", None, None, "OPENAI_API_KEY", False),
    # An embedded llama.cpp server on 127.0.0.1; llm_model is a GGUF path (default: SmolLM2-135M).
    "local": ProviderPreset("local", None, None, None, False),
}


def resolve_base_url(provider: str, base_url: str | None = None) -> str | None:
    """The endpoint to call: `base_url` (an explicit argument or the config), else the preset's
    environment variable (DEEPSEEK_BASE_URL, OPENAI_BASE_URL, GEMINI_BASE_URL), else the preset's URL.

    None for providers without a default ("openai-compatible" needs a URL; "local" starts its own server).
    """
    if base_url:
        return base_url
    preset = PROVIDERS[provider]
    from_env = os.environ.get(preset.base_url_env, "").strip() if preset.base_url_env else ""
    if from_env and not from_env.startswith(("http://", "https://")):
        raise ConfigError(f"{preset.base_url_env}: expected an http(s) URL, got {from_env!r}")
    return from_env or preset.base_url
