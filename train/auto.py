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
)
from textclassify.runtime.errors import BundleError, DataError, check_is_fitted
from textclassify.runtime.llm.settings import LLMSettings
from textclassify.runtime.llm.usage import usage_delta
from textclassify.runtime.metrics import classification_metrics
from textclassify.runtime.output_paths import check_output_dir
from textclassify.runtime.types import ClassificationResult, TrainingData
from textclassify.runtime.validation import redact_config, validate_texts
from textclassify.train import fit_steps, persistence
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
        return f"{type(self).__name__}({redact_config(self.config)!r})"  # never user:pass@ of a base URL

    # ----------------------------------------------------------------------------------- fit
    def fit(self, data: Any, eval_data: Any = None, *, progress: bool = True) -> AutoFusionClassifier:
        """Train on a DataFrame (or TrainingData); metrics on `eval_data` if given, else cross-fitted on the
        fusion split and stage 1's validation rows."""
        cfg = validate_config(self.config)
        # Where the results go is checked before any work: a file at output_dir failed after the whole run.
        check_output_dir(cfg["output_dir"], "output_dir", files=["metrics.json"], folders=["report"])
        prep = self._prepare_data(data, eval_data, cfg)
        timings: dict[str, float] = {}

        # LLM scores first: a wrong key or URL fails in seconds, not after minutes of fine-tuning; the
        # cache keeps every answer, so nothing paid for is lost if a later step fails.
        scorer = self._make_scorer(cfg, prep.labels, prep.multi)
        t = time.perf_counter()
        llm = fit_steps.score_llm(scorer, prep, progress)
        timings["llm_scoring_s"] = time.perf_counter() - t

        t = time.perf_counter()
        stage1 = fit_steps.fit_stage1(cfg, prep, progress)
        timings["stage1_s"] = time.perf_counter() - t

        t = time.perf_counter()
        comp = fit_steps.fit_lexical(cfg, prep, stage1)
        timings["lexical_s"] = time.perf_counter() - t

        t = time.perf_counter()
        comb = fit_steps.choose_combiner(cfg, prep, llm, comp)
        timings["combiner_s"] = time.perf_counter() - t

        thresholds = fit_steps.tune_thresholds(cfg, prep, comb)
        held = fit_steps.evaluate(prep, llm, comp, comb, thresholds)
        gate = fit_steps.choose_gate(cfg, comb.choice.result(comb.choice.name), prep.fusion_targets, prep.multi,
                                     thresholds, held.probabilities, held.targets)

        self._set_predictor_state(
            config=cfg, labels=prep.labels, multi=prep.multi, thresholds=thresholds, max_length=stage1.max_length,
            encoder=stage1.encoder, tokenizer=stage1.tokenizer, head=comb.head, lexical=comb.lexical,
            calibrator=comb.calibrator, combiner=comb.choice.name, cv_table=comb.choice.table(), gate=gate,
            llm_settings=LLMSettings.from_config(cfg).with_overrides(score_method=scorer.score_method),
            validation={"texts": held.texts[:256], "raw_llm_scores": np.asarray(held.raw[:256]).tolist()},
            metrics=held.metrics)
        self._scorer = scorer
        self._report(cfg, prep, llm, stage1, comb, thresholds, held, gate, scorer, timings)
        return self

    def _prepare_data(self, data: Any, eval_data: Any, cfg: dict[str, Any]) -> fit_steps.Prepared:
        """Checked training (and evaluation) data, encoded targets and the seeded stratified splits."""
        train = self._to_training_data(data, cfg, "data")
        evaluation = None
        if eval_data is not None:
            evaluation = self._to_training_data(eval_data, cfg, "eval_data", train.label_names)
        labels, multi = list(train.label_names), train.is_multi_label
        targets = encode_targets(train.labels, labels, multi)
        splits = make_splits(targets, multi, cfg["fusion_split"], cfg["ml"]["val_split"], cfg["fusion"]["val_split"],
                             cfg["seed"], len(labels))
        return fit_steps.Prepared(texts=train.texts, targets=targets, labels=labels, multi=multi, splits=splits,
                                  fusion_idx=splits.fusion_rows, stage1_train_idx=splits.stage1_train,
                                  evaluation=evaluation)

    def _set_predictor_state(self, *, config: dict[str, Any], labels: list[str], multi: bool,
                             thresholds: Sequence[float] | None, max_length: int, encoder: Any, tokenizer: Any,
                             head: Any, lexical: Any, calibrator: Any, combiner: str, cv_table: list[Any],
                             gate: dict[str, Any] | None, llm_settings: LLMSettings, validation: dict[str, Any],
                             metrics: dict[str, Any]) -> None:
        """Everything predict, save and export read: the one place both `fit` and `load` build it."""
        from textclassify.train.fusion_model import FusionWrapper

        self.config_ = config
        self.labels_, self.multi_label_, self.thresholds_ = labels, multi, thresholds
        self.max_length_ = max_length
        self.model_ = FusionWrapper(encoder, head).eval()
        self.encoder_, self.head_, self.lexical_ = self.model_.encoder, head, lexical
        self.tokenizer_, self.calibrator_ = tokenizer, calibrator
        self.combiner_, self.cv_table_ = combiner, cv_table
        self.gate_ = gate
        self.llm_settings_ = llm_settings
        self.validation_ = validation
        self.metrics_ = metrics

    def _report(self, cfg: dict[str, Any], prep: fit_steps.Prepared, llm: fit_steps.LLMScores,
                stage1: fit_steps.Stage1, comb: fit_steps.Combiner, thresholds: Sequence[float] | None,
                held: fit_steps.HeldOut, gate: dict[str, Any], scorer: Any, timings: dict[str, float]) -> None:
        """fit's metadata, metrics.json and the report folder."""
        from textclassify.train.calibration import calibration_report
        from textclassify.train.reports import write_classifier_report

        choice, splits = comb.choice, prep.splits
        self.metadata_ = {
            "metrics": held.metrics,
            "held_out": ("eval_data" if prep.evaluation is not None
                         else f"fusion split and stage 1's validation rows, {choice.folds}-fold cross-fitted "
                              "(no model saw its own rows)"),
            "n_held_out": len(held.texts),
            "calibration": calibration_report(held.raw, held.calibrated, held.targets, prep.multi),
            "llm_usage": dict(scorer.usage),
            "cost": fit_steps.cost_report(scorer, cfg, llm.usage_training, llm.usage_evaluation, gate),
            "llm_score_method": scorer.score_method,
            "splits": {"stage1_train": int(len(splits.stage1_train)), "stage1_val": int(len(splits.stage1_val)),
                       "fusion_split": int(len(splits.fusion_train) + len(splits.fusion_val)),
                       "fusion": int(len(prep.fusion_idx))},  # the rows the combiners learn on: LLM-scored
            "history": {"stage1": stage1.history.to_dict()},
            "stage1": stage1.schedule,
            "combiner": {"chosen": choice.name, "folds": choice.folds, "repeats": choice.repeats,
                         "cv_table": choice.table(), "left_out": dict(choice.left_out),
                         "lexical": "served" if comb.lexical is not None else (
                             "off" if cfg["lexical"] == "off" else "not kept (cross-fitting)"),
                         "thresholds": thresholds, "threshold_objective": cfg["fusion"]["threshold_objective"]},
            "timings": timings,
            "max_length": stage1.max_length,
            "held_out_predictions": {"targets": held.targets, "probabilities": held.probabilities,
                                     "thresholds": thresholds},
            "gate": gate,
        }
        self._write_metrics(cfg["output_dir"])
        write_classifier_report(self)

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
        keys = ("metrics", "held_out", "n_held_out", "calibration", "llm_usage", "llm_score_method", "splits",
                "timings", "stage1", "combiner", "gate", "cost")
        payload = {k: self.metadata_[k] for k in keys}
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
        probs, usage, skipped = self._predict_gated(items)
        preds = decode_predictions(probs, self.labels_, self.multi_label_, self.thresholds_)
        metadata: dict[str, Any] = {"llm_usage": usage, "llm_skipped": skipped}
        if y is not None:
            metadata["metrics"] = classification_metrics(
                y, decide(probs, self.multi_label_, self.thresholds_), self.labels_,
                self.multi_label_)
        return ClassificationResult(predictions=preds, probabilities=probs, labels=list(self.labels_),
                                    metadata=metadata)

    def _predict(self, texts: list[str]) -> tuple[np.ndarray, dict[str, Any]]:
        probs, usage, _ = self._predict_gated(texts)
        return probs, usage

    def _predict_gated(self, texts: list[str]) -> tuple[np.ndarray, dict[str, Any], list[int]]:
        """As the bundle serves: the no-LLM answer first, the gate, the LLM only for the rows it lets through."""
        self._check_fitted()
        if not texts:
            return np.zeros((0, len(self.labels_)), dtype=np.float32), {}, []
        from textclassify.runtime.gate import confidence, skips_llm
        from textclassify.train.combiners import head_logits
        from textclassify.train.encoder import encoder_logits

        ml = encoder_logits(self.model_.encoder, self.tokenizer_, texts, self.max_length_,
                            max(32, self.config_["ml"]["batch_size"]))
        lexical = self.lexical_.logits(texts) if getattr(self, "lexical_", None) is not None else None
        no_llm = head_logits(self.model_.mlp, ml, lexical, None)
        threshold = (getattr(self, "gate_", None) or {}).get("threshold")
        skipped = skips_llm(confidence(logits_to_probabilities(no_llm, self.multi_label_), self.multi_label_,
                                       self.thresholds_), threshold)
        logits, usage = no_llm, {}
        ask = np.flatnonzero(~skipped)
        if len(ask):
            raw, usage = self._scores([texts[i] for i in ask])
            calibrated = np.asarray(self.calibrator_.transform(raw), dtype=np.float32)
            logits = no_llm.copy()
            logits[ask] = head_logits(self.model_.mlp, ml[ask], None if lexical is None else lexical[ask], calibrated)
        return logits_to_probabilities(logits, self.multi_label_), usage, [int(i) for i in np.flatnonzero(skipped)]

    # --------------------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write safetensors + JSON (no pickle) that `load` reads back to identical predictions."""
        self._check_fitted()
        import torch
        import transformers

        from textclassify.train.combiners import combiner_spec

        meta = {
            "config": self.config_, "labels": self.labels_, "multi_label": self.multi_label_,
            "thresholds": self.thresholds_, "max_length": self.max_length_, "llm": self.llm_settings_.to_dict(),
            "calibrator": self.calibrator_.to_dict(), "fusion_mlp": combiner_spec(self.model_.mlp),
            "combiner": {"chosen": getattr(self, "combiner_", "mlp"), "cv_table": getattr(self, "cv_table_", [])},
            "lexical": None if getattr(self, "lexical_", None) is None else self.lexical_.to_dict(),
            "gate": getattr(self, "gate_", None),
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
        from textclassify.train.combiners import combiner_from_spec
        from textclassify.train.encoder import load_encoder
        from textclassify.train.lexical import LexicalModel

        folder, meta, validation = persistence.read_model_meta(directory)
        encoder, tokenizer = load_encoder(str(folder / persistence.ENCODER_DIR), meta["labels"], meta["multi_label"])
        if "components" not in meta["fusion_mlp"]:
            raise BundleError(f"{folder}: saved by an older textclassify whose fusion head has no llm_present input; "
                              "fit the model again with this version.")
        mlp = combiner_from_spec(meta["fusion_mlp"])
        mlp.load_state_dict(persistence.load_mlp_state(folder))
        combiner = meta.get("combiner") or {}
        clf = cls(meta["config"], api_key=api_key)
        clf._set_predictor_state(
            config=validate_config(meta["config"]), labels=list(meta["labels"]), multi=bool(meta["multi_label"]),
            thresholds=meta["thresholds"], max_length=int(meta["max_length"]), encoder=encoder, tokenizer=tokenizer,
            head=mlp, lexical=LexicalModel.from_dict(meta["lexical"]) if meta.get("lexical") else None,
            calibrator=calibrator_from_dict(meta["calibrator"]), combiner=combiner.get("chosen", "mlp"),
            cv_table=combiner.get("cv_table", []), gate=meta.get("gate"), llm_settings=LLMSettings(**meta["llm"]),
            validation=validation, metrics=meta.get("metrics", {}))
        clf.metadata_ = {"metrics": clf.metrics_, "llm_usage": meta.get("llm_usage", {}), "gate": clf.gate_,
                         "combiner": combiner}
        clf._scorer = None
        return clf

    def export(self, bundle_dir: str | os.PathLike, int8: bool = False, fp16: bool = False, **kwargs: Any) -> Path:
        """Write the ONNX bundle (same as the `fusion-export` command)."""
        self._check_fitted()
        from textclassify.export import export_bundle

        return export_bundle(self, bundle_dir, int8=int8, fp16=fp16, **kwargs)
