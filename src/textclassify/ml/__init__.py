"""The original API's import path for the encoder classifier (see `textclassify.ml.roberta_classifier`)."""
from textclassify.train.encoder_classifier import RoBERTaClassifier

__all__ = ["RoBERTaClassifier"]
