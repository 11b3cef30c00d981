"""List prices of the preset models, to turn token usage into an estimated cost."""
from __future__ import annotations

from collections.abc import Mapping

# USD per million tokens (input, output), list prices without prompt-cache discounts, checked 2025-10.
PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "deepseek-chat": (0.28, 0.42),
    "gpt-4o-mini": (0.15, 0.60),
    "gemini-2.0-flash": (0.10, 0.40),
}


def price_of(model: str, override: Mapping[str, float] | None = None) -> tuple[float, float] | None:
    """(input, output) USD per million tokens: the override (llm.price_per_million) first, else the table."""
    if override is not None:
        return float(override["input"]), float(override["output"])
    return PRICES_PER_MILLION.get(model)


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int,
             override: Mapping[str, float] | None = None) -> float | None:
    """Estimated cost of the tokens at `model`'s price (or `override`); None when no price is known."""
    price = price_of(model, override)
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000
