"""Provider presets: base URL, default model and API-key variable for each supported LLM service."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProviderPreset:
    """What a provider name stands for; `base_url` None means the user must give one."""

    name: str
    base_url: str | None
    default_model: str | None
    api_key_env: str | None
    key_required: bool


PROVIDERS: dict[str, ProviderPreset] = {
    "deepseek": ProviderPreset("deepseek", "https://api.deepseek.com/v1", "deepseek-chat", "DEEPSEEK_API_KEY", True),
    "openai": ProviderPreset("openai", "https://api.openai.com/v1", "gpt-4o-mini", "OPENAI_API_KEY", True),
    "gemini": ProviderPreset(
        "gemini", "https://generativelanguage.googleapis.com/v1beta/openai/", "gemini-2.0-flash",
        "GEMINI_API_KEY", True,
    ),
    "openai-compatible": ProviderPreset("openai-compatible", None, None, "OPENAI_API_KEY", False),
    # An embedded llama.cpp server on 127.0.0.1; llm_model is a GGUF path (default: SmolLM2-135M).
    "local": ProviderPreset("local", None, None, None, False),
}
