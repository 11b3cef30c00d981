"""Usage counters: one call's from two snapshots, and several added up (serving batches, Ray workers)."""
from __future__ import annotations

from textclassify.runtime.llm.usage import usage_delta, usage_sum


def test_usage_sum_adds_counters_and_keeps_an_unknown_cost_unknown() -> None:
    """Counters add; a cost of None is nothing beside a number and None when all are None; text comes first."""
    a = {"requests": 2, "prompt_tokens": 10, "cost_usd": None, "model": "m"}
    b = {"requests": 3, "prompt_tokens": 5, "cost_usd": 0.25, "model": "other"}
    assert usage_sum([a, b]) == {"requests": 5, "prompt_tokens": 15, "cost_usd": 0.25, "model": "m"}
    assert usage_sum([b, a])["cost_usd"] == 0.25
    assert usage_sum([a, a])["cost_usd"] is None
    assert usage_sum([]) == {}


def test_usage_delta_subtracts_counters() -> None:
    """The call's own counts: after minus before, other values from after."""
    assert usage_delta({"requests": 5, "cost_usd": None}, {"requests": 2, "cost_usd": None}) == {
        "requests": 3, "cost_usd": None}
