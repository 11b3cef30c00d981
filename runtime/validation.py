"""Input checks shared by every public predict method (training model and bundle alike)."""
from __future__ import annotations

from typing import Any

from textclassify.runtime.errors import DataError


def validate_texts(texts: Any, what: str = "texts") -> list[str]:
    """Prediction input must be a list of strings; a single string is rejected (wrap it in a list)."""
    if isinstance(texts, (str, bytes)):
        raise DataError(f"{what}: expected a list of strings, got a single {type(texts).__name__}; "
                        "pass [text] instead.")
    if texts is None:
        raise DataError(f"{what}: expected a list of strings, got None.")
    try:
        items = list(texts)
    except TypeError:
        raise DataError(f"{what}: expected a list of strings, got {type(texts).__name__}.") from None
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise DataError(f"{what}[{i}]: expected a string, got {text!r} ({type(text).__name__}).")
    return items
