"""LLM usage counters: one call's from two snapshots of a scorer's running totals, and several added up."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def usage_delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """Numeric counters subtracted; other values (a cost of None, say) taken from `after`."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        prev = before.get(key)
        numeric = isinstance(value, (int, float)) and isinstance(prev, (int, float))
        out[key] = value - prev if numeric else value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def usage_sum(usages: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Numeric counters added; a None (a cost no price is known for) counts as nothing beside a number, and
    stays None when every value is None; other values are taken from the first usage that has them."""
    total: dict[str, Any] = {}
    for usage in usages:
        for key, value in usage.items():
            prev = total.get(key)
            if key not in total or prev is None:
                total[key] = value
            elif _is_number(prev) and _is_number(value):
                total[key] = prev + value
    return total
