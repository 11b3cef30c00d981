"""The original API's import path `textclassify.llm.deepseek_classifier`.

A re-export of `textclassify.train.llm_classifiers`.
"""
from textclassify.train.llm_classifiers import DeepSeekClassifier

__all__ = ["DeepSeekClassifier"]
