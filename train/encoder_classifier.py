"""RoBERTaClassifier: a fine-tuned Hugging Face encoder on its own, with the original API's fit/predict interface.

The name is kept for familiarity; `model_name` may be any AutoModelForSequenceClassification model
(hub name or local folder). Training is stage 1 of the fusion recipe (`train.encoder`), on the
data minus a stratified validation slice used for early stopping.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from textclassify.runtime import constants as K
from textclassify.runtime.decoding import encode_targets, logits_to_probabilities
from textclassify.runtime.errors import ConfigError, check_is_fitted
from textclassify.runtime.types import ClassificationResult, TrainingData
from textclassify.runtime.validation import validate_texts
from textclassify.train import constants as TK
from textclassify.train.fusion_utils import check_training_data, encode_true_labels, result_from_probabilities
from textclassify.train.seed_args import apply_config


class RoBERTaClassifier:
    """Fine-tune an encoder (cross-entropy or BCE) and predict with it alone.

    `__init__` only stores the parameters; they are checked, with the config's rules
    (`ml.*` keys of AutoFusionClassifier), when `fit` starts.
    """

    def __init__(self, model_name: str = TK.DEFAULT_ML_MODEL, *, num_epochs: int = 3, batch_size: int = 16,
                 learning_rate: float = 2e-5, max_length: int = 256, warmup_ratio: float = 0.1,
                 weight_decay: float = 0.01, val_split: float = 0.1, early_stopping_patience: int = 2,
                 seed: int = 42, progress: bool = False, config: Mapping[str, Any] | None = None) -> None:
        self.model_name = model_name
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_length = max_length
        self.warmup_ratio = warmup_ratio
        self.weight_decay = weight_decay
        self.val_split = val_split
        self.early_stopping_patience = early_stopping_patience
        self.seed = seed
        self.progress = progress
        apply_config(self, config)  # the original API's RoBERTaClassifier(config={...}): the same keywords as a dict

    def to_config(self) -> dict[str, Any]:
        """These settings as the matching AutoFusionClassifier config keys (ml_model, seed, ml.*)."""
        return {
            "ml_model": self.model_name, "seed": self.seed,
            "ml": {"num_epochs": self.num_epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                   "max_length": self.max_length, "warmup_ratio": self.warmup_ratio,
                   "weight_decay": self.weight_decay, "val_split": self.val_split,
                   "early_stopping_patience": self.early_stopping_patience},
        }

    def _validated_config(self) -> dict[str, Any]:
        from textclassify.train.config import validate_config

        try:
            return validate_config(self.to_config())
        except ConfigError as e:
            raise ConfigError(f"{type(self).__name__}: {e}") from None

    # ----------------------------------------------------------------------------------- fit
    def fit(self, data: TrainingData) -> RoBERTaClassifier:
        """Fine-tune on `data` minus a stratified `val_split` slice (early stopping on its loss)."""
        cfg = self._validated_config()
        data = check_training_data(data, type(self).__name__)
        from textclassify.train.encoder import effective_max_length, load_encoder, train_encoder
        from textclassify.train.splits import stratified_split

        labels, multi = list(data.label_names or []), data.is_multi_label
        targets = encode_targets(data.labels, labels, multi)
        rng = np.random.default_rng(cfg["seed"])
        train_idx, val_idx = stratified_split(targets, cfg["ml"]["val_split"], multi, rng)
        texts = data.texts
        import torch

        torch.manual_seed(cfg["seed"])  # the fresh classification head is initialised while loading
        encoder, tokenizer = load_encoder(cfg["ml_model"], labels, multi)
        max_length = effective_max_length(encoder, tokenizer, cfg["ml"]["max_length"])
        history = train_encoder(encoder, tokenizer, [texts[i] for i in train_idx], targets[train_idx],
                                [texts[i] for i in val_idx], targets[val_idx], multi_label=multi, ml=cfg["ml"],
                                max_length=max_length, seed=cfg["seed"], progress=self.progress)
        self.model_, self.tokenizer_ = encoder, tokenizer
        self.labels_, self.multi_label_ = labels, multi
        self.thresholds_ = [K.DEFAULT_THRESHOLD] * len(labels) if multi else None
        self.max_length_ = max_length
        self.history_ = history.to_dict()
        self.splits_ = {"train": int(len(train_idx)), "val": int(len(val_idx))}
        return self

    # ------------------------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        check_is_fitted(self, "model_")

    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        """Encoder logits [n, C] in `labels_` order."""
        self._check_fitted()
        from textclassify.train.encoder import encoder_logits

        items = validate_texts(texts)
        return encoder_logits(self.model_, self.tokenizer_, items, self.max_length_,
                              max(K.DEFAULT_BATCH_SIZE, self.batch_size))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities [n, C]: softmax (multi-class) or sigmoids (multi-label)."""
        return logits_to_probabilities(self.predict_logits(texts), self.multi_label_)

    def predict(self, texts: Sequence[str], labels: Sequence[Any] | None = None) -> ClassificationResult:
        """Label (or label list) per text; metadata['metrics'] when `labels` are given."""
        self._check_fitted()
        items = validate_texts(texts)
        y_true = encode_true_labels(labels, len(items), self.labels_, self.multi_label_)
        probs = self.predict_proba(items)
        return result_from_probabilities(probs, self.labels_, self.multi_label_, thresholds=self.thresholds_,
                                         y_true=y_true, metadata={"model": self.model_name})
