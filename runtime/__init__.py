"""textclassify.runtime: the torch-free half -- bundle loading, LLM scores, core types.

Imports nothing of train or export, and never torch, transformers, scikit-learn or pandas.
"""
from __future__ import annotations

import importlib
from typing import Any

from textclassify.runtime.errors import (
    BundleError,
    ConfigError,
    DataError,
    LLMError,
    TextClassifyError,
)
from textclassify.runtime.types import ClassificationResult, ClassificationType, TrainingData

__all__ = [
    "BundleError", "ClassificationResult", "ClassificationType", "ConfigError", "DataError", "LLMError",
    "TextClassifyError", "TrainingData", "load_bundle",
]


def __getattr__(name: str) -> Any:
    # load_bundle pulls in onnxruntime; import it on first use so `import textclassify.runtime` is cheap.
    if name == "load_bundle":
        return importlib.import_module("textclassify.runtime.bundle").load_bundle
    raise AttributeError(f"module 'textclassify.runtime' has no attribute {name!r}")
