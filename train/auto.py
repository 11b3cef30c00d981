"""AutoFusionClassifier: the fusion recipe (docs/architecture.md) behind one fit/predict/save/load/export object."""
from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textclassify.runtime.decoding import (
    decide,
    decode_predictions,
    encode_targets,
    encode_true_labels,
    logits_to_probabilities,
    scores_to_probabilities,
)
from textclassify.runtime.errors import DataError, check_is_fitted
from textclassify.runtime.llm.settings import LLMSettings
from textclassify.runtime.llm.usage import usage_delta
from textclassify.runtime.metrics import classification_metrics
from textclassify.runtime.types import ClassificationResult, TrainingData
from textclassify.runtime.validation import validate_texts
from textclassify.train import persistence
from textclassify.train.config import validate_config
from textclassify.train.data import dataframe_to_training_data, read_labelled_frame, validate_training_data
from textclassify.train.splits import make_splits

log = logging.getLogger(__name__)




def _check_known_labels(data: Any, td: TrainingData, cfg: dict[str, Any], what: str,
                        label_names: Sequence[str]) -> None:
    """Evaluation labels must be ones training saw; the error names the column and row (or the list index)."""
    known = set(label_names)
    for i, lab in enumerate(td.labels):
        for name in (lab if td.is_multi_label else [lab]):
            if name not in known:
                where = (f"labels[{i}]" if isinstance(data, TrainingData)
                         else f"column {cfg['label_columns'][0]!r}, row {data.index[i]}")
                raise DataError(f"{what}: {where}: unknown label {name!r}; training saw {list(label_names)}.")


class AutoFusionClassifier:
    """Fine-tuned encoder + calibrated LLM scores, fused by an MLP trained as docs/architecture.md lays out.

    `__init__` only stores the config; it is validated when `fit` starts.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, api_key: str | None = None) -> None:
        self.config = dict(config or {})
        self._api_key = api_key  # kept out of config, repr, saved files and the cache

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # ----------------------------------------------------------------------------------- fit
    def fit(self, data: Any, eval_data: Any = None, *, progress: bool = True) -> AutoFusionClassifier:
        """Train on a DataFrame (or TrainingData); metrics on `eval_data` if given, else on fusion-val."""
        cfg = validate_config(self.config)
        train = self._to_training_data(data, cfg, "data")
        evaluation = None
        if eval_data is not None:
            evaluation = self._to_training_data(eval_data, cfg, "eval_data", train.label_names)
        labels, multi = list(train.label_names), train.is_multi_label
        targets = encode_targets(train.labels, labels, multi)
        splits = make_splits(targets, multi, cfg["fusion_split"], cfg["ml"]["val_split"], cfg["fusion"]["val_split"],
                             cfg["seed"], len(labels))
        texts = train.texts
        pick = lambda idx: [texts[i] for i in idx]  # noqa: E731
        timings: dict[str, float] = {}

        # LLM scores first: a wrong key or URL fails in seconds, not after minutes of fine-tuning; the
        # cache keeps every answer, so nothing paid for is lost if a later step fails.
        scorer = self._make_scorer(cfg, labels, multi)
        t = time.perf_counter()
        fusion_idx = np.concatenate([splits.fusion_train, splits.fusion_val])
        raw_fusion = scorer.score(pick(fusion_idx), progress=progress)
        raw_train, raw_val = raw_fusion[: len(splits.fusion_train)], raw_fusion[len(splits.fusion_train):]
        raw_eval = scorer.score(evaluation.texts, progress=progress) if evaluation is not None else None
        timings["llm_scoring_s"] = time.perf_counter() - t

        import torch

        from textclassify.train.encoder import effective_max_length, encoder_logits, load_encoder
        from textclassify.train.schedule import describe_stage1, fit_stage1

        t = time.perf_counter()
        torch.manual_seed(cfg["seed"])  # the new classification head is initialised while loading
        encoder, tokenizer = load_encoder(cfg["ml_model"], labels, multi)
        max_length = effective_max_length(encoder, tokenizer, cfg["ml"]["max_length"])
        hist1, stage1 = fit_stage1(encoder, tokenizer, pick(splits.stage1_train), targets[splits.stage1_train],
                                   pick(splits.stage1_val), targets[splits.stage1_val], multi_label=multi,
                                   ml=cfg["ml"], max_length=max_length, seed=cfg["seed"], progress=progress)
        stage1["summary"] = describe_stage1(stage1)
        log.info(stage1["summary"])
        timings["stage1_s"] = time.perf_counter() - t

        from textclassify.train.calibration import calibration_report, fit_calibrator

        calibrator = fit_calibrator(raw_train, targets[splits.fusion_train], multi)
        cal_train, cal_val = calibrator.transform(raw_train), calibrator.transform(raw_val)

        # Stage-1 logits for the fusion split (and held-out data) are out-of-sample: compute them before
        # joint training changes the encoder in place.
        t = time.perf_counter()
        bs = max(cfg["ml"]["batch_size"], 32)
        held_texts = evaluation.texts if evaluation is not None else pick(splits.fusion_val)
        logits_train = encoder_logits(encoder, tokenizer, pick(splits.fusion_train), max_length, bs)
        logits_val = encoder_logits(encoder, tokenizer, pick(splits.fusion_val), max_length, bs)
        logits_held = logits_val
        if evaluation is not None:
            logits_held = encoder_logits(encoder, tokenizer, held_texts, max_length, bs)

        from textclassify.train.fusion_training import predict_fused_logits, train_fusion
        from textclassify.train.stacker import fit_stacker, stacker_probabilities

        wrapper, hist2 = train_fusion(
            encoder, tokenizer, train_texts=pick(splits.fusion_train), train_scores=cal_train,
            train_targets=targets[splits.fusion_train], train_logits=logits_train,
            val_texts=pick(splits.fusion_val), val_scores=cal_val, val_targets=targets[splits.fusion_val],
            val_logits=logits_val, multi_label=multi, fusion=cfg["fusion"], max_length=max_length,
            seed=cfg["seed"], progress=progress)
        timings["stage2_s"] = time.perf_counter() - t
        stacker = fit_stacker(np.hstack([logits_train, cal_train]), targets[splits.fusion_train], multi, cfg["seed"])

        # Held-out metrics for every model side by side.
        thresholds = [0.5] * len(labels) if multi else None
        if evaluation is not None:
            held_targets, held_raw = encode_targets(evaluation.labels, labels, multi), raw_eval
        else:
            held_targets, held_raw = targets[splits.fusion_val], raw_val
        held_cal = calibrator.transform(held_raw)
        ml_final, fused = predict_fused_logits(wrapper, tokenizer, held_texts, held_cal, max_length=max_length,
                                               batch_size=bs)
        candidates = {
            "ml": logits_to_probabilities(ml_final, multi),
            "ml_stage1": logits_to_probabilities(logits_held, multi),
            "llm_raw": scores_to_probabilities(held_raw, multi),
            "llm": held_cal,
            "stacker": stacker_probabilities(stacker, np.hstack([logits_held, held_cal]), len(labels), multi),
            "fused": logits_to_probabilities(fused, multi),
        }
        metrics = {name: classification_metrics(held_targets, decide(p, multi, thresholds), labels, multi)
                   for name, p in candidates.items()}

        self.config_ = cfg
        self.labels_, self.multi_label_, self.thresholds_ = labels, multi, thresholds
        self.max_length_ = max_length
        self.model_, self.tokenizer_, self.calibrator_ = wrapper, tokenizer, calibrator
        self.llm_settings_ = LLMSettings.from_config(cfg).with_overrides(score_method=scorer.score_method)
        self._scorer = scorer
        self.validation_ = {"texts": held_texts[:256], "raw_llm_scores": np.asarray(held_raw[:256]).tolist()}
        self.metrics_ = metrics
        self.metadata_ = {
            "metrics": metrics,
            "held_out": "eval_data" if evaluation is not None else "fusion_val (also used for early stopping)",
            "n_held_out": len(held_texts),
            "calibration": calibration_report(held_raw, held_cal, held_targets, multi),
            "llm_usage": dict(scorer.usage),
            "llm_score_method": scorer.score_method,
            "splits": {k: int(len(getattr(splits, k)))
                       for k in ("stage1_train", "stage1_val", "fusion_train", "fusion_val")},
            "history": {"stage1": hist1.to_dict(), "stage2": hist2.to_dict()},
            "stage1": stage1,
            "timings": timings,
            "max_length": max_length,
            "held_out_predictions": {"targets": held_targets, "probabilities": candidates, "thresholds": thresholds},
        }
        self._write_metrics(cfg["output_dir"])
        from textclassify.train.reports import write_classifier_report

        write_classifier_report(self)
        return self

    def _to_training_data(self, data: Any, cfg: dict[str, Any], what: str,
                          label_names: Sequence[str] | None = None) -> TrainingData:
        if isinstance(data, TrainingData):
            if data.is_multi_label != cfg["multi_label"]:
                raise DataError(f"{what}: TrainingData is {data.classification_type.value} but config multi_label "
                                f"is {cfg['multi_label']}.")
            td = validate_training_data(data) if label_names is None else data
        else:
            read = dataframe_to_training_data if label_names is None else read_labelled_frame
            td = read(data, cfg["text_column"], cfg["label_columns"], cfg["multi_label"])
        if label_names is not None:
            _check_known_labels(data, td, cfg, what, label_names)
            td.label_names = list(label_names)
        return td

    def _make_scorer(self, cfg: dict[str, Any], labels: list[str], multi: bool):
        from textclassify.runtime.llm import LLMScorer

        return LLMScorer(LLMSettings.from_config(cfg), labels, multi, cache_dir=cfg["cache_dir"], api_key=self._api_key)

    def _write_metrics(self, output_dir: str) -> None:
        out = Path(output_dir).expanduser()
        payload = {k: self.metadata_[k] for k in ("metrics", "held_out", "n_held_out", "calibration", "llm_usage",
                                                   "llm_score_method", "splits", "timings", "stage1")}
        persistence.write_json(out / "metrics.json", payload)

    # ------------------------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        check_is_fitted(self, "model_")

    def _scores(self, texts: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
        if getattr(self, "_scorer", None) is None:
            from textclassify.runtime.llm import LLMScorer

            self._scorer = LLMScorer(self.llm_settings_, self.labels_, self.multi_label_,
                                     cache_dir=self.config_["cache_dir"], api_key=self._api_key)
        before = dict(self._scorer.usage)
        raw = self._scorer.score(texts)
        return raw, usage_delta(self._scorer.usage, before)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Fused probabilities [n, C] in `labels_` order."""
        return self._predict(validate_texts(texts))[0]

    def predict(self, texts: Sequence[str], labels: Sequence[Any] | None = None) -> ClassificationResult:
        """Labels (or label lists) per text; metadata['metrics'] when `labels` are given."""
        items = validate_texts(texts)
        y = None
        if labels is not None:  # checked before any LLM request, as the bundle does
            self._check_fitted()
            y = encode_true_labels(labels, len(items), self.labels_, self.multi_label_)
        probs, usage = self._predict(items)
        preds = decode_predictions(probs, self.labels_, self.multi_label_, self.thresholds_)
        metadata: dict[str, Any] = {"llm_usage": usage}
        if y is not None:
            metadata["metrics"] = classification_metrics(
                y, decide(probs, self.multi_label_, self.thresholds_), self.labels_,
                self.multi_label_)
        return ClassificationResult(predictions=preds, probabilities=probs, labels=list(self.labels_),
                                    metadata=metadata)

    def _predict(self, texts: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
        self._check_fitted()
        if not texts:
            return np.zeros((0, len(self.labels_)), dtype=np.float32), {}
        from textclassify.train.fusion_training import predict_fused_logits

        raw, usage = self._scores(texts)
        calibrated = self.calibrator_.transform(raw)
        _, fused = predict_fused_logits(self.model_, self.tokenizer_, texts, calibrated, max_length=self.max_length_,
                                        batch_size=max(32, self.config_["ml"]["batch_size"]))
        return logits_to_probabilities(fused, self.multi_label_), usage

    # --------------------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write safetensors + JSON (no pickle) that `load` reads back to identical predictions."""
        self._check_fitted()
        import torch
        import transformers

        meta = {
            "config": self.config_, "labels": self.labels_, "multi_label": self.multi_label_,
            "thresholds": self.thresholds_, "max_length": self.max_length_, "llm": self.llm_settings_.to_dict(),
            "calibrator": self.calibrator_.to_dict(), "fusion_mlp": self.model_.mlp.spec(),
            "metrics": self.metrics_, "llm_usage": self.metadata_.get("llm_usage", {}),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
        }
        return persistence.save_model_dir(directory, meta=meta, encoder=self.model_.encoder, tokenizer=self.tokenizer_,
                                          mlp=self.model_.mlp, validation=self.validation_)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, api_key: str | None = None) -> AutoFusionClassifier:
        """Rebuild a fitted classifier from `save`'s folder (safetensors and JSON only)."""
        from textclassify.train.calibration import calibrator_from_dict
        from textclassify.train.encoder import load_encoder
        from textclassify.train.fusion_model import FusionMLP, FusionWrapper

        folder, meta, validation = persistence.read_model_meta(directory)
        encoder, tokenizer = load_encoder(str(folder / persistence.ENCODER_DIR), meta["labels"], meta["multi_label"])
        mlp = FusionMLP(**meta["fusion_mlp"])
        mlp.load_state_dict(persistence.load_mlp_state(folder))
        clf = cls(meta["config"], api_key=api_key)
        clf.config_ = validate_config(meta["config"])
        clf.labels_, clf.multi_label_ = list(meta["labels"]), bool(meta["multi_label"])
        clf.thresholds_, clf.max_length_ = meta["thresholds"], int(meta["max_length"])
        clf.model_ = FusionWrapper(encoder, mlp).eval()
        clf.tokenizer_ = tokenizer
        clf.calibrator_ = calibrator_from_dict(meta["calibrator"])
        clf.llm_settings_ = LLMSettings(**meta["llm"])
        clf.validation_ = validation
        clf.metrics_ = meta.get("metrics", {})
        clf.metadata_ = {"metrics": clf.metrics_, "llm_usage": meta.get("llm_usage", {})}
        clf._scorer = None
        return clf

    def export(self, bundle_dir: str | os.PathLike, int8: bool = False, fp16: bool = False, **kwargs: Any) -> Path:
        """Write the ONNX bundle (same as the `fusion-export` command)."""
        self._check_fitted()
        from textclassify.export import export_bundle

        return export_bundle(self, bundle_dir, int8=int8, fp16=fp16, **kwargs)
