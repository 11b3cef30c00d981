"""The original API's import path `textclassify.core.types`: a re-export.

TrainingData, ClassificationType and ClassificationResult live in `textclassify.runtime.types`,
EnsembleConfig in `textclassify.train.ensembles` (importing it loads no torch).
"""
from textclassify.runtime.types import ClassificationResult, ClassificationType, TrainingData
from textclassify.train.ensembles import EnsembleConfig

__all__ = ["ClassificationResult", "ClassificationType", "EnsembleConfig", "TrainingData"]
