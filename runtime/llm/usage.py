"""Per-call LLM usage from two snapshots of a scorer's running totals."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def usage_delta(after: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """Numeric counters subtracted; other values (a cost of None, say) taken from `after`."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        prev = before.get(key)
        numeric = isinstance(value, (int, float)) and isinstance(prev, (int, float))
        out[key] = value - prev if numeric else value
    return out
