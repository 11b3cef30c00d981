"""The original API's import path for the LLM classifiers: a re-export of `textclassify.train.llm_classifiers`."""
from textclassify.train.llm_classifiers import (
    DeepSeekClassifier,
    GeminiClassifier,
    LLMClassifier,
    OpenAIClassifier,
    OpenAICompatibleClassifier,
)

__all__ = ["DeepSeekClassifier", "GeminiClassifier", "LLMClassifier", "OpenAIClassifier", "OpenAICompatibleClassifier"]
