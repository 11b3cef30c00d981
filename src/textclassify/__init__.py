"""textclassify: fuse a fine-tuned encoder with LLM class scores; serve it as an ONNX bundle.

Names are imported lazily (PEP 562), so `import textclassify` stays torch-free until a training
class is touched.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "AutoFusionClassifier": "textclassify.train.auto",
    "BundleError": "textclassify.runtime.errors",
    "ClassificationResult": "textclassify.runtime.types",
    "ClassificationType": "textclassify.runtime.types",
    "ConfigError": "textclassify.runtime.errors",
    "DataError": "textclassify.runtime.errors",
    "DeepSeekClassifier": "textclassify.train.llm_classifiers",
    "EnsembleConfig": "textclassify.train.ensembles",
    "FusionEnsemble": "textclassify.train.ensembles",
    "FusionMLP": "textclassify.train.fusion_model",
    "FusionUtils": "textclassify.train.fusion_utils",
    "FusionWrapper": "textclassify.train.fusion_model",
    "GeminiClassifier": "textclassify.train.llm_classifiers",
    "LLMError": "textclassify.runtime.errors",
    "OpenAIClassifier": "textclassify.train.llm_classifiers",
    "OpenAICompatibleClassifier": "textclassify.train.llm_classifiers",
    "RoBERTaClassifier": "textclassify.train.encoder_classifier",
    "TextClassifyError": "textclassify.runtime.errors",
    "TrainingData": "textclassify.runtime.types",
    "VotingEnsemble": "textclassify.train.ensembles",
    "WeightedEnsemble": "textclassify.train.ensembles",
    "load_bundle": "textclassify.runtime.bundle",
}

__all__ = sorted(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'textclassify' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
