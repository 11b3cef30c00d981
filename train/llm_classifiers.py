"""LLM classifiers with the original API's fit/predict interface: thin wrappers over the one LLM client.

`DeepSeekClassifier`, `OpenAIClassifier`, `GeminiClassifier` and `OpenAICompatibleClassifier` differ
only in their provider preset (base URL, default model, API-key variable). Each scores texts with
`runtime.llm.LLMScorer` (cached, concurrent) and, when asked, calibrates the scores on the training
data with the fusion recipe's calibrator.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from textclassify.runtime import constants as K
from textclassify.runtime.decoding import encode_targets, scores_to_probabilities
from textclassify.runtime.errors import ConfigError, DataError, NotFittedError, check_is_fitted
from textclassify.runtime.llm.usage import usage_delta
from textclassify.runtime.types import ClassificationResult, TrainingData
from textclassify.runtime.validation import validate_texts
from textclassify.train.fusion_utils import check_training_data, encode_true_labels, result_from_probabilities
from textclassify.train.seed_args import apply_config


def _check_label_names(labels: Any, owner: str) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) < 2:
        raise ConfigError(f"{owner}: labels: expected a list of at least 2 label names, got {labels!r}")
    for i, name in enumerate(labels):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{owner}: labels[{i}]: expected a non-empty string, got {name!r}")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{owner}: labels: expected distinct names, got {list(labels)!r}")
    return list(labels)


class LLMClassifier:
    """Zero-shot LLM classifier over one provider preset; subclasses set `provider`.

    `__init__` only stores the parameters (the API key privately: it is never part of `to_config`,
    a repr, a cache or an error). `labels` fixes the label order and, with `multi_label`, lets `fit()`
    run without data; when `fit(data)` gets data, the data decides the task type.
    `calibrate=True` scores every training text (LLM cost) and fits temperature scaling
    (multi-class) or per-label isotonic regression (multi-label) on those scores.
    """

    provider: ClassVar[str] = "openai-compatible"

    def __init__(self, model: str | None = None, *, base_url: str | None = None, labels: Sequence[str] | None = None,
                 multi_label: bool = False, cache_dir: str = K.DEFAULT_CACHE_DIR,
                 temperature: float = K.DEFAULT_TEMPERATURE, max_concurrency: int = K.DEFAULT_MAX_CONCURRENCY,
                 timeout_s: float = K.DEFAULT_TIMEOUT_S, max_retries: int = K.DEFAULT_MAX_RETRIES,
                 score_method: str = "auto", api_key: str | None = None, calibrate: bool = False,
                 progress: bool = False, label_columns: Sequence[str] | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        if label_columns is not None and labels is not None:
            raise ConfigError(f"{type(self).__name__}: give either labels or label_columns (the original API's name), "
                              "not both.")
        self.model = model
        self.base_url = base_url
        self.labels = labels if label_columns is None else label_columns
        self.multi_label = multi_label
        self.cache_dir = cache_dir
        self.temperature = temperature
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.score_method = score_method
        self.calibrate = calibrate
        self.progress = progress
        self._api_key = api_key
        apply_config(self, config, aliases={"label_columns": "labels"})  # the original API's config={...}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    def to_config(self) -> dict[str, Any]:
        """These settings as the matching AutoFusionClassifier config keys (never the API key)."""
        return {
            "llm_provider": self.provider, "llm_model": self.model, "llm_base_url": self.base_url,
            "cache_dir": self.cache_dir,
            "llm": {"temperature": self.temperature, "max_concurrency": self.max_concurrency,
                    "timeout_s": self.timeout_s, "max_retries": self.max_retries, "score_method": self.score_method},
        }

    @property
    def api_key(self) -> str | None:
        """The key given to the constructor (None: the provider's environment variable is used)."""
        return self._api_key

    def _validated_config(self) -> dict[str, Any]:
        from textclassify.train.config import validate_config

        try:
            cfg = validate_config(self.to_config())
        except ConfigError as e:
            raise ConfigError(f"{type(self).__name__}: {e}") from None
        for name in ("multi_label", "calibrate", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{type(self).__name__}: {name}: expected a boolean, got {getattr(self, name)!r}")
        return cfg

    # ----------------------------------------------------------------------------------- fit
    def fit(self, data: TrainingData | None = None) -> LLMClassifier:
        """Learn the label set from `data` (or take `labels`); with `calibrate`, fit the score calibrator."""
        from textclassify.runtime.llm import LLMScorer, LLMSettings

        owner = type(self).__name__
        cfg = self._validated_config()
        given = None if self.labels is None else _check_label_names(self.labels, owner)
        if data is None:
            if given is None:
                raise ConfigError(f"{owner}.fit: without training data, pass labels=[...] to the constructor.")
            if self.calibrate:
                raise ConfigError(f"{owner}.fit: calibrate=True needs training data to calibrate on.")
            labels, multi = given, self.multi_label
        else:
            data = check_training_data(data, owner)
            labels, multi = list(data.label_names or []), data.is_multi_label
            if given is not None:
                if sorted(given) != sorted(labels):
                    raise DataError(f"{owner}.fit: labels={given} differ from the training data's labels {labels}.")
                labels = given
        self.close()
        self.__dict__.pop("labels_", None)  # a failed refit must not leave the old fit usable
        self._scorer = LLMScorer(LLMSettings.from_config(cfg), labels, multi, cache_dir=cfg["cache_dir"],
                                 api_key=self._api_key)
        calibrator, fit_usage = None, {}
        if data is not None and self.calibrate:
            from textclassify.train.calibration import fit_calibrator

            raw = self._scorer.score(data.texts, progress=self.progress)
            calibrator = fit_calibrator(raw, encode_targets(data.labels, labels, multi), multi)
            fit_usage = dict(self._scorer.usage)
        self.calibrator_, self.fit_usage_ = calibrator, fit_usage
        self.multi_label_ = multi
        self.thresholds_ = [K.DEFAULT_THRESHOLD] * len(labels) if multi else None
        self.llm_model_ = self._scorer.model
        self.labels_ = labels  # last: its presence means "fitted"
        return self

    # ------------------------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        check_is_fitted(self, "labels_")

    def _score(self, texts: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
        self._check_fitted()
        if getattr(self, "_scorer", None) is None:
            raise NotFittedError(f"This {type(self).__name__} instance was closed. Call 'fit' again.")
        before = self._scorer.usage
        raw = self._scorer.score(texts, progress=self.progress) if texts else np.zeros((0, len(self.labels_)))
        return raw, usage_delta(self._scorer.usage, before)

    def _probabilities(self, raw: np.ndarray) -> np.ndarray:
        if self.calibrator_ is not None and len(raw):
            return np.asarray(self.calibrator_.transform(raw), dtype=np.float32)
        return scores_to_probabilities(raw, self.multi_label_)

    def predict_scores(self, texts: Sequence[str]) -> np.ndarray:
        """Raw LLM scores [n, C] in `labels_` order, as the client returns them (uncalibrated)."""
        return self._score(validate_texts(texts))[0]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities [n, C]: calibrated scores when fitted with `calibrate`, else renormalised raw scores."""
        return self._probabilities(self.predict_scores(texts))

    def predict(self, texts: Sequence[str], labels: Sequence[Any] | None = None) -> ClassificationResult:
        """Label (or label list) per text; metadata['metrics'] with `labels`, always metadata['llm_usage']."""
        self._check_fitted()
        items = validate_texts(texts)
        y_true = encode_true_labels(labels, len(items), self.labels_, self.multi_label_)
        raw, usage = self._score(items)
        meta = {"llm_usage": usage, "llm_score_method": self._scorer.score_method, "llm_provider": self.provider,
                "llm_model": self.llm_model_, "calibrated": self.calibrator_ is not None}
        return result_from_probabilities(self._probabilities(raw), self.labels_, self.multi_label_,
                                         thresholds=self.thresholds_, y_true=y_true, metadata=meta)

    def close(self) -> None:
        """Close the LLM client and its cache (a later `fit` opens a new one)."""
        scorer = getattr(self, "_scorer", None)
        if scorer is not None:
            scorer.close()
        self._scorer = None

    def __enter__(self) -> LLMClassifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeepSeekClassifier(LLMClassifier):
    """DeepSeek (default model deepseek-chat; key from DEEPSEEK_API_KEY or `api_key`)."""

    provider: ClassVar[str] = "deepseek"


class OpenAIClassifier(LLMClassifier):
    """OpenAI (default model gpt-4o-mini; key from OPENAI_API_KEY or `api_key`)."""

    provider: ClassVar[str] = "openai"


class GeminiClassifier(LLMClassifier):
    """Gemini through its OpenAI-compatible endpoint (default gemini-2.0-flash; key from GEMINI_API_KEY)."""

    provider: ClassVar[str] = "gemini"


class OpenAICompatibleClassifier(LLMClassifier):
    """Any OpenAI-compatible server (vLLM, llama.cpp, Ollama, ...): `base_url` and `model` are required."""

    provider: ClassVar[str] = "openai-compatible"
