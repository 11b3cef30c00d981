"""The original API's ensembles: VotingEnsemble, WeightedEnsemble and FusionEnsemble (with EnsembleConfig).

Voting and weighted ensembles combine the predictions of any models with `fit(TrainingData)` and
`predict(texts) -> ClassificationResult` (RoBERTaClassifier, the LLM classifiers, ...).
FusionEnsemble is the fusion recipe (docs/architecture.md): it reads the settings of one RoBERTaClassifier and one LLM
classifier and trains an AutoFusionClassifier with them.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textclassify.runtime import constants as K
from textclassify.runtime.decoding import decide, encode_targets
from textclassify.runtime.errors import ConfigError, DataError, check_is_fitted
from textclassify.runtime.metrics import classification_metrics, log_loss
from textclassify.runtime.types import ClassificationResult, TrainingData
from textclassify.runtime.validation import validate_texts
from textclassify.train.fusion_utils import (
    align_columns,
    check_training_data,
    encode_true_labels,
    result_from_probabilities,
)

ENSEMBLE_METHODS = ("voting", "weighted", "fusion")
VOTING_MODES = ("hard", "soft")


@dataclass
class EnsembleConfig:
    """The original API's ensemble description: a method, its component models and its parameters."""

    ensemble_method: str = "fusion"
    models: list[Any] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)


def _check_config(config: Any, method: str, allowed: Sequence[str], owner: str) -> EnsembleConfig:
    if not isinstance(config, EnsembleConfig):
        raise ConfigError(f"{owner}: expected an EnsembleConfig or a list of models, got {type(config).__name__}")
    if config.ensemble_method != method:
        raise ConfigError(f"{owner}: ensemble_method: expected {method!r}, got {config.ensemble_method!r} "
                          f"(one of {list(ENSEMBLE_METHODS)}, each with its own class)")
    if not isinstance(config.parameters, dict):
        raise ConfigError(f"{owner}: parameters: expected a dict, got {type(config.parameters).__name__}")
    unknown = sorted(set(config.parameters) - set(allowed))
    if unknown:
        raise ConfigError(f"{owner}: parameters: unknown key(s) {unknown} (known keys: {', '.join(sorted(allowed))})")
    if not isinstance(config.models, (list, tuple)):
        raise ConfigError(f"{owner}: models: expected a list of models, got {type(config.models).__name__}")
    return config


def _subset(data: TrainingData, idx: np.ndarray) -> TrainingData:
    return TrainingData(texts=[data.texts[i] for i in idx], labels=[data.labels[i] for i in idx],
                        classification_type=data.classification_type, label_names=list(data.label_names or []))


class _ComponentEnsemble:
    """Shared plumbing of the voting and weighted ensembles: named components, fitting, aligned predictions."""

    method = ""
    parameter_names: tuple[str, ...] = ()

    def __init__(self, models: Sequence[Any] | EnsembleConfig | None = None, *, prefit: bool = False) -> None:
        self.models = models
        self.prefit = prefit
        self._added: list[tuple[str | None, Any]] = []

    def add_model(self, model: Any, name: str | None = None) -> _ComponentEnsemble:
        """Add a component (anything with fit(TrainingData) and predict(texts) -> ClassificationResult)."""
        self._added.append((name, model))
        return self

    def _settings(self) -> tuple[list[Any], dict[str, Any]]:
        """(models, parameters): from the EnsembleConfig (its parameters win) or from the keyword arguments."""
        owner = type(self).__name__
        params = {name: getattr(self, name) for name in self.parameter_names}
        if isinstance(self.models, EnsembleConfig):
            cfg = _check_config(self.models, self.method, self.parameter_names, owner)
            return list(cfg.models), {**params, **cfg.parameters}
        if self.models is None:
            return [], params
        if isinstance(self.models, (str, bytes)) or not isinstance(self.models, Sequence):
            raise ConfigError(f"{owner}: expected a list of models or an EnsembleConfig, "
                              f"got {type(self.models).__name__}")
        return list(self.models), params

    def _named_components(self, models: list[Any]) -> list[tuple[str, Any]]:
        owner = type(self).__name__
        named: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for name, model in [(None, m) for m in models] + self._added:
            for what in ("fit", "predict"):
                if not callable(getattr(model, what, None)):
                    raise ConfigError(f"{owner}: {type(model).__name__} has no '{what}' method; components need "
                                      "fit(TrainingData) and predict(texts) -> ClassificationResult.")
            base = name or type(model).__name__
            unique, k = base, 2
            while unique in seen:
                unique, k = f"{base}_{k}", k + 1
            seen.add(unique)
            named.append((unique, model))
        if len(named) < 2:
            raise ConfigError(f"{owner}: needs at least 2 models; got {len(named)}.")
        return named

    def _start_fit(self, data: Any) -> tuple[TrainingData, dict[str, Any]]:
        owner = type(self).__name__
        self._fitted = False  # set at the end of fit: a failed fit leaves no half-fitted ensemble usable
        models, params = self._settings()
        if not isinstance(self.prefit, bool):
            raise ConfigError(f"{owner}: prefit: expected a boolean, got {self.prefit!r}")
        self.components_ = self._named_components(models)
        data = check_training_data(data, owner)
        self.labels_, self.multi_label_ = list(data.label_names or []), data.is_multi_label
        self.thresholds_ = [K.DEFAULT_THRESHOLD] * len(self.labels_) if self.multi_label_ else None
        return data, params

    def _fit_components(self, data: TrainingData) -> None:
        if not self.prefit:
            for _, model in self.components_:
                model.fit(data)

    def _check_fitted(self) -> None:
        check_is_fitted(self, "_fitted")

    def _component_outputs(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Probabilities [K, n, C] and predicted targets (per component, ensemble label order), LLM usage."""
        probs, targets, usage = [], [], {}
        for name, model in self.components_:
            res = model.predict(texts)
            if not isinstance(res, ClassificationResult):
                raise DataError(f"{name}.predict returned {type(res).__name__}; expected a ClassificationResult.")
            probs.append(align_columns(res.probabilities, res.labels, self.labels_, name))
            try:
                targets.append(encode_targets(res.predictions, self.labels_, self.multi_label_))
            except ValueError as e:
                raise DataError(f"{name}: {e}") from None
            if "llm_usage" in res.metadata:
                usage[name] = res.metadata["llm_usage"]
        return np.stack(probs), np.stack(targets), usage

    def _combine(self, probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Combined probabilities [n, C] in `labels_` order."""
        self._check_fitted()
        items = validate_texts(texts)
        if not items:
            return np.zeros((0, len(self.labels_)), dtype=np.float32)
        probs, targets, _ = self._component_outputs(items)
        return self._combine(probs, targets)[0]

    def predict(self, texts: Sequence[str], labels: Sequence[Any] | None = None) -> ClassificationResult:
        """Combined labels per text; metadata['metrics'] (and each component's) when `labels` are given."""
        self._check_fitted()
        items = validate_texts(texts)
        y_true = encode_true_labels(labels, len(items), self.labels_, self.multi_label_)
        meta: dict[str, Any] = {"ensemble_method": self.method, "components": [n for n, _ in self.components_]}
        if not items:
            return result_from_probabilities(np.zeros((0, len(self.labels_))), self.labels_, self.multi_label_,
                                             y_true=y_true, metadata=meta)
        probs, targets, usage = self._component_outputs(items)
        combined, decided = self._combine(probs, targets)
        if usage:
            meta["llm_usage"] = usage
        if y_true is not None:
            meta["component_metrics"] = {
                name: classification_metrics(y_true, targets[k], self.labels_, self.multi_label_)
                for k, (name, _) in enumerate(self.components_)}
        meta.update(self._extra_metadata())
        return result_from_probabilities(combined, self.labels_, self.multi_label_, thresholds=self.thresholds_,
                                         y_true=y_true, predicted=decided, metadata=meta)

    def _extra_metadata(self) -> dict[str, Any]:
        return {}


class VotingEnsemble(_ComponentEnsemble):
    """Majority vote ('hard', ties broken by mean probability) or mean probability ('soft') of the components.

    Hard voting reports vote fractions as probabilities. Multi-label: a label is on when more than
    half the components predict it (exactly half: when the mean probability reaches 0.5).
    """

    method = "voting"
    parameter_names = ("voting",)

    def __init__(self, models: Sequence[Any] | EnsembleConfig | None = None, *, voting: str = "hard",
                 prefit: bool = False) -> None:
        super().__init__(models, prefit=prefit)
        self.voting = voting

    def fit(self, data: TrainingData) -> VotingEnsemble:
        """Fit every component on `data` (skipped with `prefit=True`)."""
        data, params = self._start_fit(data)
        if params["voting"] not in VOTING_MODES:
            raise ConfigError(f"VotingEnsemble: voting: expected one of {list(VOTING_MODES)}, got {params['voting']!r}")
        self.voting_ = params["voting"]
        self._fit_components(data)
        self._fitted = True
        return self

    def _combine(self, probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        mean = probs.mean(axis=0)
        if self.voting_ == "soft":
            return mean, None
        n_models, c = probs.shape[0], probs.shape[2]
        if not self.multi_label_:
            votes = np.eye(c)[targets].sum(axis=0)  # [n, C]
            # Vote counts differ by whole numbers, 0.5 * mean probability by less than 1: it only breaks ties.
            return (votes / n_models).astype(np.float32), (votes + 0.5 * mean).argmax(axis=1)
        share = targets.sum(axis=0) / n_models
        decided = (share > 0.5) | ((share == 0.5) & (mean >= 0.5))
        return share.astype(np.float32), decided.astype(np.int64)

    def _extra_metadata(self) -> dict[str, Any]:
        return {"voting": self.voting_}


def learn_weights(probs: np.ndarray, targets: np.ndarray, multi_label: bool) -> np.ndarray:
    """Simplex weights [K] minimising the log loss of the weighted mean of component probabilities [K, n, C]."""
    from scipy.optimize import minimize

    def weights(theta: np.ndarray) -> np.ndarray:
        e = np.exp(theta - theta.max())
        return e / e.sum()

    def loss(theta: np.ndarray) -> float:
        return log_loss(np.tensordot(weights(theta), probs, axes=1), targets, multi_label)

    result = minimize(loss, np.zeros(probs.shape[0]), method="L-BFGS-B")
    return weights(result.x)


class WeightedEnsemble(_ComponentEnsemble):
    """Weighted mean of component probabilities; weights given, or learned on a held-out validation slice.

    Learning: the components are fitted on the data minus a stratified `val_split` slice, and the
    weights minimise the log loss of the mixture on that slice (with `prefit=True` the components are
    used as they are and the weights are learned on all of `data`).
    """

    method = "weighted"
    parameter_names = ("weights", "val_split", "seed")

    def __init__(self, models: Sequence[Any] | EnsembleConfig | None = None, *,
                 weights: Sequence[float] | None = None, val_split: float = 0.2, seed: int = 42,
                 prefit: bool = False) -> None:
        super().__init__(models, prefit=prefit)
        self.weights = weights
        self.val_split = val_split
        self.seed = seed

    def _given_weights(self, weights: Any) -> np.ndarray:
        k = len(self.components_)
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != k:
            raise ConfigError(f"WeightedEnsemble: weights: expected {k} non-negative numbers (one per model), "
                              f"got {weights!r}")
        w = np.asarray(weights, dtype=np.float64) if all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in weights) else None
        if w is None or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ConfigError(f"WeightedEnsemble: weights: expected {k} non-negative numbers with a positive sum, "
                              f"got {list(weights)!r}")
        return w / w.sum()

    def fit(self, data: TrainingData) -> WeightedEnsemble:
        """Fit the components, then take the given weights or learn them on the validation slice."""
        data, params = self._start_fit(data)
        self.validation_metrics_: dict[str, Any] = {}
        if params["weights"] is not None:
            self.weights_ = self._given_weights(params["weights"])
            self.weights_source_ = "given"
            self._fit_components(data)
            self._fitted = True
            return self
        val_split, seed = params["val_split"], params["seed"]
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or not 0 < val_split < 1:
            raise ConfigError(f"WeightedEnsemble: val_split: expected a float in (0, 1), got {val_split!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"WeightedEnsemble: seed: expected a non-negative integer, got {seed!r}")
        targets = data.label_matrix()
        if self.prefit:
            val = data
        else:
            from textclassify.train.splits import stratified_split

            fit_idx, val_idx = stratified_split(targets, val_split, self.multi_label_, np.random.default_rng(seed))
            self._check_fit_part(_subset(data, fit_idx), val_split)
            self._fit_components(_subset(data, fit_idx))
            val = _subset(data, val_idx)
        probs, predicted, _ = self._component_outputs(val.texts)
        y_val = val.label_matrix()
        self.weights_ = learn_weights(probs, y_val, self.multi_label_)
        self.weights_source_ = f"learned on {len(val.texts)} validation rows (log loss)"
        mixed = np.tensordot(self.weights_, probs, axes=1)
        for k, (name, _) in enumerate(self.components_):
            self.validation_metrics_[name] = classification_metrics(y_val, predicted[k], self.labels_,
                                                                    self.multi_label_)
        self.validation_metrics_["ensemble"] = classification_metrics(
            y_val, decide(mixed, self.multi_label_, self.thresholds_), self.labels_,
            self.multi_label_)
        self._fitted = True
        return self

    def _check_fit_part(self, part: TrainingData, val_split: float) -> None:
        counts = part.label_matrix()
        counts = counts.sum(axis=0) if self.multi_label_ else np.bincount(counts, minlength=len(self.labels_))
        for name, count in zip(self.labels_, counts):
            if count < 2:
                raise DataError(f"WeightedEnsemble: after holding out val_split={val_split:g} to learn the weights, "
                                f"label {name!r} has {int(count)} training example(s); each needs at least 2. "
                                "Give more data, a smaller val_split, or weights=[...].")

    def _combine(self, probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return np.tensordot(self.weights_, probs, axes=1).astype(np.float32), None

    def _extra_metadata(self) -> dict[str, Any]:
        return {"weights": {name: float(w) for (name, _), w in zip(self.components_, self.weights_)},
                "weights_source": self.weights_source_}


# ------------------------------------------------------------------------------------- fusion
FUSION_PARAMETERS: dict[str, tuple[str, ...]] = {  # EnsembleConfig.parameters key -> AutoFusionClassifier config path
    "fusion_hidden_dims": ("fusion", "hidden_dims"), "ml_lr": ("fusion", "ml_lr"),
    "fusion_lr": ("fusion", "fusion_lr"), "num_epochs": ("fusion", "num_epochs"),
    "batch_size": ("fusion", "batch_size"), "dropout": ("fusion", "dropout"),
    "warmup_epochs": ("fusion", "warmup_epochs"), "val_split": ("fusion", "val_split"),
    "early_stopping_patience": ("fusion", "early_stopping_patience"), "fusion_split": ("fusion_split",),
    "output_dir": ("output_dir",),
}


def _auto_classifier(config: dict[str, Any], api_key: str | None) -> Any:
    from textclassify.train.auto import AutoFusionClassifier

    return AutoFusionClassifier(config, api_key=api_key)


class FusionEnsemble:
    """The fusion recipe (docs/architecture.md) over one RoBERTaClassifier and one LLM classifier (original API).

    `fit` builds an AutoFusionClassifier config from the components' settings (`to_config`) and the
    EnsembleConfig parameters (`fusion_hidden_dims`, `ml_lr`, `fusion_lr`, `num_epochs`, `batch_size`,
    and also `dropout`, `warmup_epochs`, `val_split`, `early_stopping_patience`, `fusion_split`,
    `output_dir`), then trains it; the components themselves stay unfitted (their `calibrate` flag is
    not used: fusion always calibrates on its own split).
    """

    method = "fusion"

    def __init__(self, config: EnsembleConfig | None = None, *, progress: bool = False) -> None:
        self.config = config
        self.progress = progress
        self.ml_model: Any = None
        self.llm_model: Any = None

    def add_ml_model(self, model: Any) -> FusionEnsemble:
        """Use this RoBERTaClassifier's settings (encoder, epochs, learning rate, max_length, seed)."""
        from textclassify.train.encoder_classifier import RoBERTaClassifier

        if not isinstance(model, RoBERTaClassifier):
            raise ConfigError(f"FusionEnsemble.add_ml_model: expected a RoBERTaClassifier, got {type(model).__name__}")
        self.ml_model = model
        return self

    def add_llm_model(self, model: Any) -> FusionEnsemble:
        """Use this LLM classifier's settings (provider, model, base URL, request policy, cache, API key)."""
        from textclassify.train.llm_classifiers import LLMClassifier

        if not isinstance(model, LLMClassifier):
            raise ConfigError(f"FusionEnsemble.add_llm_model: expected an LLM classifier (DeepSeekClassifier, "
                              f"OpenAIClassifier, GeminiClassifier, OpenAICompatibleClassifier), got "
                              f"{type(model).__name__}")
        self.llm_model = model
        return self

    def _components(self) -> tuple[Any, Any, dict[str, Any]]:
        from textclassify.train.encoder_classifier import RoBERTaClassifier
        from textclassify.train.llm_classifiers import LLMClassifier

        ml, llm, params = self.ml_model, self.llm_model, {}
        if self.config is not None:
            cfg = _check_config(self.config, self.method, tuple(FUSION_PARAMETERS), "FusionEnsemble")
            params = dict(cfg.parameters)
            for model in cfg.models:
                if isinstance(model, RoBERTaClassifier):
                    ml = ml if ml is not None and ml is not model else model
                elif isinstance(model, LLMClassifier):
                    llm = llm if llm is not None and llm is not model else model
                else:
                    raise ConfigError(f"FusionEnsemble: models: expected a RoBERTaClassifier and an LLM classifier, "
                                      f"got {type(model).__name__}")
        if ml is None or llm is None:
            raise ConfigError("FusionEnsemble: needs one ML model (add_ml_model) and one LLM model (add_llm_model); "
                              f"got {'an' if ml is not None else 'no'} ML model and "
                              f"{'an' if llm is not None else 'no'} LLM model.")
        return ml, llm, params

    def to_config(self, data: TrainingData) -> dict[str, Any]:
        """The AutoFusionClassifier config this ensemble trains with on `data` (validated)."""
        from textclassify.train.config import validate_config

        ml, llm, params = self._components()
        names = list(data.label_names or [])
        if llm.labels is not None and sorted(llm.labels) != sorted(names):
            raise DataError(f"FusionEnsemble: the LLM model's labels {list(llm.labels)} differ from the training "
                            f"data's labels {names}.")
        config: dict[str, Any] = {**ml.to_config(), **llm.to_config(), "multi_label": data.is_multi_label,
                                  "label_columns": names if data.is_multi_label else ["label"], "fusion": {}}
        for key, value in params.items():
            *parents, leaf = FUSION_PARAMETERS[key]
            (config[parents[0]] if parents else config)[leaf] = value
        try:
            validate_config(config)
        except ConfigError as e:
            raise ConfigError(f"FusionEnsemble: {e}") from None
        return config

    def fit(self, data: TrainingData, eval_data: TrainingData | None = None) -> FusionEnsemble:
        """Train the fusion recipe on `data`; held-out metrics on `eval_data` if given, else on fusion-val."""
        data = check_training_data(self._named(data), "FusionEnsemble")
        eval_data = self._named(eval_data)
        if eval_data is not None and not isinstance(eval_data, TrainingData):
            raise DataError(f"FusionEnsemble.fit: eval_data: expected TrainingData, got {type(eval_data).__name__}.")
        config = self.to_config(data)
        _, llm, _ = self._components()
        self.classifier_ = _auto_classifier(config, llm.api_key).fit(data, eval_data, progress=self.progress)
        return self

    def _named(self, data: Any) -> Any:
        """Multi-label TrainingData of unnamed 0/1 rows, named with the LLM classifier's labels (column order)."""
        if not isinstance(data, TrainingData) or data.label_names is not None:
            return data
        _, llm, _ = self._components()
        if llm.labels is None:
            return data
        return TrainingData(data.texts, data.labels, data.classification_type, label_names=list(llm.labels))

    def _check_fitted(self) -> None:
        check_is_fitted(self, "classifier_")

    @property
    def labels_(self) -> list[str]:
        self._check_fitted()
        return self.classifier_.labels_

    @property
    def multi_label_(self) -> bool:
        self._check_fitted()
        return self.classifier_.multi_label_

    @property
    def metrics_(self) -> dict[str, Any]:
        """Held-out metrics of ML alone, LLM alone (raw and calibrated), the stacker baseline and fused."""
        self._check_fitted()
        return self.classifier_.metrics_

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Fused probabilities [n, C] in `labels_` order."""
        self._check_fitted()
        return self.classifier_.predict_proba(texts)

    def predict(self, texts: Sequence[str], labels: Sequence[Any] | None = None) -> ClassificationResult:
        """Fused labels per text; metadata['metrics'] when `labels` are given, and metadata['llm_usage']."""
        self._check_fitted()
        result = self.classifier_.predict(texts, labels)
        result.metadata["ensemble_method"] = self.method
        return result

    def save(self, directory: str | os.PathLike) -> Path:
        """Save the fitted model (AutoFusionClassifier.save: safetensors + JSON, no pickle)."""
        self._check_fitted()
        return self.classifier_.save(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> FusionEnsemble:
        """A fitted FusionEnsemble from `save`'s folder; its LLM key comes from the environment."""
        from textclassify.train.auto import AutoFusionClassifier

        ensemble = cls()
        ensemble.classifier_ = AutoFusionClassifier.load(directory)
        return ensemble

    def export(self, bundle_dir: str | os.PathLike, **kwargs: Any) -> Path:
        """Write the ONNX bundle (AutoFusionClassifier.export)."""
        self._check_fitted()
        return self.classifier_.export(bundle_dir, **kwargs)


__all__ = ["ENSEMBLE_METHODS", "EnsembleConfig", "FusionEnsemble", "VotingEnsemble", "WeightedEnsemble",
           "learn_weights"]
