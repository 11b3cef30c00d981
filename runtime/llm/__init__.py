"""LLM label scores: one client for every OpenAI-compatible provider, with a SQLite cache."""
from __future__ import annotations

from textclassify.runtime.llm.client import LLMScorer, PartialScores
from textclassify.runtime.llm.pricing import cost_usd
from textclassify.runtime.llm.providers import PROVIDERS, ProviderPreset
from textclassify.runtime.llm.settings import LLMSettings

__all__ = ["LLMScorer", "LLMSettings", "PROVIDERS", "PartialScores", "ProviderPreset", "cost_usd"]
