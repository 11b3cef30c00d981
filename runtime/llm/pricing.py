"""List prices of the preset models, to turn token usage into an estimated cost."""
from __future__ import annotations

# USD per million tokens (input, output), list prices without prompt-cache discounts, checked 2025-10.
PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "deepseek-chat": (0.28, 0.42),
    "gpt-4o-mini": (0.15, 0.60),
    "gemini-2.0-flash": (0.10, 0.40),
}


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Estimated cost of the tokens at `model`'s list price; None when the model has no known price."""
    price = PRICES_PER_MILLION.get(model)
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000
