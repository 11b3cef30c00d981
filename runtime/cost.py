"""What the LLM costs: tokens and USD per stage (training scores, evaluation, serving) and per 1,000 predictions.

Token counts are the server's own (`usage` of each answer, summed by the LLM client); answers served from
the cache cost nothing. USD comes from the price table of runtime.llm.pricing, or from
`llm.price_per_million` where the user set it; it is None when neither knows the model.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textclassify.runtime.llm.pricing import price_of

TOKEN_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def stage_cost(usage: Mapping[str, Any], model: str | None,
               price_override: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Requests, cache hits, tokens and USD of one stage, from an LLM client usage dict (or a delta of two)."""
    out: dict[str, Any] = {"requests": int(usage.get("requests", 0) or 0),
                           "cache_hits": int(usage.get("cache_hits", 0) or 0)}
    out.update({key: int(usage.get(key, 0) or 0) for key in TOKEN_KEYS})
    price = price_of(model or "", price_override)
    out["cost_usd"] = None if price is None else (out["prompt_tokens"] * price[0]
                                                   + out["completion_tokens"] * price[1]) / 1_000_000
    out["price_per_million"] = None if price is None else {"input": price[0], "output": price[1]}
    return out


def projection(reference: Mapping[str, Any], llm_fraction: float | None, n: int = 1000) -> dict[str, Any]:
    """The LLM cost of `n` predictions of uncached texts, always asking the LLM and with the gate.

    `reference` is a stage_cost whose requests set the mean tokens per request (training's LLM calls);
    `llm_fraction` is the share of rows the gate sent to the LLM on held-out data (None: no gate).
    """
    requests = reference.get("requests", 0)
    fraction = 1.0 if llm_fraction is None else float(llm_fraction)
    out: dict[str, Any] = {"n_predictions": n, "llm_fraction_gated": fraction, "llm_calls_always": n,
                           "llm_calls_gated": round(n * fraction)}
    if not requests:
        out.update(tokens_per_request=None, always_llm_usd=None, gated_usd=None, tokens_always=None,
                   tokens_gated=None, note="no LLM request was made (all answers cached): tokens per request unknown")
        return out
    per_prompt = reference["prompt_tokens"] / requests
    per_completion = reference["completion_tokens"] / requests
    out["tokens_per_request"] = {"prompt": per_prompt, "completion": per_completion}
    out["tokens_always"] = round(n * (per_prompt + per_completion))
    out["tokens_gated"] = round(n * fraction * (per_prompt + per_completion))
    price = reference.get("price_per_million")
    if price is None:
        out["always_llm_usd"] = out["gated_usd"] = None
    else:
        one = (per_prompt * price["input"] + per_completion * price["output"]) / 1_000_000
        out["always_llm_usd"] = n * one
        out["gated_usd"] = n * fraction * one
    return out
