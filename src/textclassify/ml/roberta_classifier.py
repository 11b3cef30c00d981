"""The original API's import path `textclassify.ml.roberta_classifier`.

A re-export of `textclassify.train.encoder_classifier`.
"""
from textclassify.train.encoder_classifier import RoBERTaClassifier

__all__ = ["RoBERTaClassifier"]
