"""Base URLs from the environment: explicit argument, then config, then DEEPSEEK/OPENAI/GEMINI_BASE_URL, then preset."""
from __future__ import annotations

import socket

import pytest

from textclassify.runtime.errors import ConfigError
from textclassify.runtime.llm import LLMSettings
from textclassify.runtime.llm.client import LLMScorer
from textclassify.runtime.llm.providers import PROVIDERS, resolve_base_url

ENV_VARS = {"deepseek": "DEEPSEEK_BASE_URL", "openai": "OPENAI_BASE_URL", "gemini": "GEMINI_BASE_URL"}
LABELS = ["billing", "shipping", "technical"]


def _dead_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENV_VARS.values():
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("provider", sorted(ENV_VARS))
def test_environment_overrides_the_preset(provider, monkeypatch):
    """Each preset's variable replaces its URL; unset or blank, the preset's URL stays."""
    assert resolve_base_url(provider) == PROVIDERS[provider].base_url
    monkeypatch.setenv(ENV_VARS[provider], "   ")
    assert resolve_base_url(provider) == PROVIDERS[provider].base_url
    monkeypatch.setenv(ENV_VARS[provider], "http://gateway.internal:8080/v1")
    assert resolve_base_url(provider) == "http://gateway.internal:8080/v1"


def test_config_or_argument_wins_over_the_environment(monkeypatch):
    """A URL given in code or config beats the environment variable."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://from-env:1/v1")
    assert resolve_base_url("openai", "http://from-config:2/v1") == "http://from-config:2/v1"


def test_other_providers_read_no_variable(monkeypatch):
    """openai-compatible needs its own URL and local starts its own server: no environment fallback."""
    for name in ENV_VARS.values():
        monkeypatch.setenv(name, "http://from-env:1/v1")
    assert resolve_base_url("openai-compatible") is None
    assert resolve_base_url("local") is None


def test_a_malformed_environment_url_is_a_config_error(monkeypatch):
    """The error names the variable and the value."""
    monkeypatch.setenv("GEMINI_BASE_URL", "gateway:8080")
    with pytest.raises(ConfigError, match=r"^GEMINI_BASE_URL: expected an http\(s\) URL, got 'gateway:8080'$"):
        resolve_base_url("gemini")


def test_scorer_reaches_the_server_named_by_the_environment(llm_server, monkeypatch):
    """provider 'deepseek' with DEEPSEEK_BASE_URL set talks to that server through the openai SDK."""
    monkeypatch.setenv("DEEPSEEK_BASE_URL", llm_server.base_url)
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test")
    with LLMScorer(LLMSettings(provider="deepseek"), LABELS, False, cache_dir=None) as scorer:
        scores = scorer.score(["ticket 1: refund my card payment", "ticket 2: parcel delivery late"])
    assert scores.shape == (2, 3)
    assert llm_server.requests >= 2
    assert [b["model"] for b in llm_server.bodies][-1] == "deepseek-chat"


def test_scorer_prefers_config_url_over_the_environment(llm_server, monkeypatch):
    """With the environment pointing at a dead port, the config's URL is the one called."""
    monkeypatch.setenv("OPENAI_BASE_URL", _dead_url())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = LLMSettings(provider="openai", base_url=llm_server.base_url, max_retries=0)
    with LLMScorer(settings, LABELS, False, cache_dir=None) as scorer:
        scores = scorer.score(["ticket 3: login error on screen"])
    assert scores.shape == (1, 3)
    assert llm_server.requests >= 1
