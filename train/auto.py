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
from textclassify.runtime.errors import BundleError, DataError, check_is_fitted
from textclassify.runtime.llm.settings import LLMSettings
from textclassify.runtime.llm.usage import usage_delta
from textclassify.runtime.metrics import classification_metrics
from textclassify.runtime.output_paths import check_output_dir
from textclassify.runtime.validation import redact_config
from textclassify.runtime.types import ClassificationResult, TrainingData
from textclassify.runtime.validation import validate_texts
from textclassify.train import persistence
from textclassify.train.config import validate_config
from textclassify.train.data import dataframe_to_training_data, read_labelled_frame, validate_training_data
from textclassify.train.splits import make_splits

log = logging.getLogger(__name__)




def _cost_report(scorer: Any, cfg: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any] | None,
                 gate: dict[str, Any] | None) -> dict[str, Any]:
    """Tokens and USD per stage of fit, and the projected LLM cost of 1,000 predictions with and without the gate."""
    from textclassify.runtime.cost import projection, stage_cost

    price = cfg["llm"].get("price_per_million")
    stages = {"training_scores": stage_cost(training, scorer.model, price)}
    if evaluation is not None:
        stages["evaluation"] = stage_cost(evaluation, scorer.model, price)
    held = (gate or {}).get("held_out") or {}
    fraction = held.get("llm_fraction") if (gate or {}).get("threshold") is not None else None
    return {"model": scorer.model, "stages": stages, "per_1000_predictions": projection(stages["training_scores"],
                                                                                        fraction)}


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
        """Train on a DataFrame (or TrainingData); metrics on `eval_data` if given, else on fusion-val."""
        cfg = validate_config(self.config)
        # Where the results go is checked before any work: a file at output_dir failed after the whole run.
        check_output_dir(cfg["output_dir"], "output_dir", files=["metrics.json"], folders=["report"])
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
        stage1_idx = np.concatenate([splits.stage1_train, splits.stage1_val])
        usage_start = dict(scorer.usage)
        raw_fusion = scorer.score(pick(fusion_idx), progress=progress)
        usage_training = usage_delta(scorer.usage, usage_start)
        usage_start = dict(scorer.usage)
        raw_eval = scorer.score(evaluation.texts, progress=progress) if evaluation is not None else None
        usage_evaluation = usage_delta(scorer.usage, usage_start) if evaluation is not None else None
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

        # Stage-1 logits for the fusion split (and held-out data) are out-of-sample: stage 1 never saw them.
        t = time.perf_counter()
        bs = max(cfg["ml"]["batch_size"], 32)
        fusion_texts, fusion_targets = pick(fusion_idx), targets[fusion_idx]
        ml_fusion = encoder_logits(encoder, tokenizer, fusion_texts, max_length, bs)
        ml_eval = encoder_logits(encoder, tokenizer, evaluation.texts, max_length, bs) if evaluation else None
        from textclassify.train.crossfit import choose_combiner, fit_combiner, make_folds
        from textclassify.train.fusion_model import FusionWrapper

        folds = make_folds(fusion_targets, cfg["fusion"]["cv_folds"], cfg["seed"], multi)
        lexical, lex_fusion, lex_eval = None, None, None
        if cfg["lexical"] != "off":
            from textclassify.train.lexical import cross_fitted_lexical

            lex_fusion, lexical = cross_fitted_lexical(pick(stage1_idx), targets[stage1_idx], fusion_texts,
                                                       fusion_targets, folds, multi_label=multi, n_labels=len(labels),
                                                       seed=cfg["seed"])
            lex_eval = lexical.logits(evaluation.texts) if evaluation is not None else None
        timings["lexical_s"] = time.perf_counter() - t

        from textclassify.train.calibration import calibration_report, fit_calibrator

        t = time.perf_counter()
        choice = choose_combiner(ml_fusion, lex_fusion, raw_fusion, fusion_targets, folds=folds, multi_label=multi,
                                 labels=labels, fusion=cfg["fusion"], lexical_mode=cfg["lexical"], seed=cfg["seed"],
                                 calibrator_factory=lambda raw, y: fit_calibrator(raw, y, multi))
        calibrator = fit_calibrator(raw_fusion, fusion_targets, multi)
        cal_fusion = calibrator.transform(raw_fusion)
        head = fit_combiner(choice.name, ml_fusion, lex_fusion, cal_fusion, fusion_targets, multi_label=multi,
                            fusion=cfg["fusion"], seed=cfg["seed"])
        choice.head = head
        if lexical is not None and not head.has_lexical:
            lexical = None  # cross-fitting said the lexical component does not help: it is not served
        # The stacker baseline reported beside the fused model: the better (by CV) of the stackers compared.
        stacker_name = min((r for r in choice.results if r.kind == "stacker"), key=lambda r: r.log_loss).name
        stacker = head if stacker_name == choice.name else fit_combiner(
            stacker_name, ml_fusion, lex_fusion, cal_fusion, fusion_targets, multi_label=multi, fusion=cfg["fusion"],
            seed=cfg["seed"])
        timings["combiner_s"] = time.perf_counter() - t

        from textclassify.train.thresholds import tune_thresholds

        chosen = choice.result(choice.name)
        thresholds = None
        if multi:
            thresholds = tune_thresholds(logits_to_probabilities(chosen.oof_logits, True), fusion_targets,
                                         cfg["fusion"]["threshold_objective"])

        # Held-out metrics for every model side by side: on eval_data, else the cross-fitted fusion split.
        from textclassify.train.combiners import head_logits

        if evaluation is not None:
            held_texts, held_targets = evaluation.texts, encode_targets(evaluation.labels, labels, multi)
            held_raw, held_ml, held_lex = raw_eval, ml_eval, lex_eval
            held_cal = calibrator.transform(held_raw)
            fused = head_logits(head, held_ml, held_lex, held_cal)
            fused_no_llm = head_logits(head, held_ml, held_lex, None)
            stacked = head_logits(stacker, held_ml, held_lex, held_cal)
        else:
            held_texts, held_targets, held_raw, held_ml, held_lex = (fusion_texts, fusion_targets, raw_fusion,
                                                                     ml_fusion, lex_fusion)
            held_cal = np.zeros_like(raw_fusion)
            for test in folds:  # cross-fitted calibration, as the combiners saw it
                train_rows = np.setdiff1d(np.arange(len(fusion_targets)), test)
                held_cal[test] = fit_calibrator(raw_fusion[train_rows], fusion_targets[train_rows],
                                                multi).transform(raw_fusion[test])
            fused, fused_no_llm = chosen.oof_logits, chosen.oof_no_llm_logits
            stacked = choice.result(stacker_name).oof_logits
        candidates = {
            "ml": logits_to_probabilities(held_ml, multi),
            "llm_raw": scores_to_probabilities(held_raw, multi),
            "llm": held_cal,
            "stacker": logits_to_probabilities(stacked, multi),
            "fused": logits_to_probabilities(fused, multi),
            "fused_no_llm": logits_to_probabilities(fused_no_llm, multi),
        }
        if held_lex is not None:
            candidates["lexical"] = logits_to_probabilities(held_lex, multi)
        metrics = {name: classification_metrics(held_targets, decide(p, multi, thresholds), labels, multi)
                   for name, p in candidates.items()}
        gate = self._choose_gate(cfg, chosen, fusion_targets, multi, thresholds, candidates, held_targets)

        self.config_ = cfg
        self.labels_, self.multi_label_, self.thresholds_ = labels, multi, thresholds
        self.max_length_ = max_length
        self.encoder_, self.head_, self.lexical_ = encoder.eval(), head, lexical
        self.model_ = FusionWrapper(encoder, head).eval()
        self.tokenizer_, self.calibrator_ = tokenizer, calibrator
        self.combiner_, self.cv_table_ = choice.name, choice.table()
        self.gate_ = gate
        self.llm_settings_ = LLMSettings.from_config(cfg).with_overrides(score_method=scorer.score_method)
        self._scorer = scorer
        self.validation_ = {"texts": held_texts[:256], "raw_llm_scores": np.asarray(held_raw[:256]).tolist()}
        self.metrics_ = metrics
        self.metadata_ = {
            "metrics": metrics,
            "held_out": ("eval_data" if evaluation is not None
                         else f"fusion split, {choice.folds}-fold cross-fitted (no model saw its own rows)"),
            "n_held_out": len(held_texts),
            "calibration": calibration_report(held_raw, held_cal, held_targets, multi),
            "llm_usage": dict(scorer.usage),
            "cost": _cost_report(scorer, cfg, usage_training, usage_evaluation, gate),
            "llm_score_method": scorer.score_method,
            "splits": {"stage1_train": int(len(splits.stage1_train)), "stage1_val": int(len(splits.stage1_val)),
                       "fusion": int(len(fusion_idx))},
            "history": {"stage1": hist1.to_dict()},
            "stage1": stage1,
            "combiner": {"chosen": choice.name, "folds": choice.folds, "cv_table": choice.table(),
                         "lexical": "served" if lexical is not None else (
                             "off" if cfg["lexical"] == "off" else "not kept (cross-fitting)"),
                         "thresholds": thresholds, "threshold_objective": cfg["fusion"]["threshold_objective"]},
            "timings": timings,
            "max_length": max_length,
            "held_out_predictions": {"targets": held_targets, "probabilities": candidates, "thresholds": thresholds},
            "gate": gate,
        }
        self._write_metrics(cfg["output_dir"])
        from textclassify.train.reports import write_classifier_report

        write_classifier_report(self)
        return self

    @staticmethod
    def _choose_gate(cfg: dict[str, Any], chosen: Any, fusion_targets: np.ndarray, multi: bool,
                     thresholds: Sequence[float] | None, held: dict[str, np.ndarray],
                     held_targets: np.ndarray) -> dict[str, Any]:
        """The gate threshold, chosen on the cross-fitted fusion-split predictions (train.gate), and its held-out effect."""
        from textclassify.train.gate import choose_gate_threshold, held_out_report

        settings = cfg["gate"]
        gate = choose_gate_threshold(logits_to_probabilities(chosen.oof_no_llm_logits, multi),
                                     logits_to_probabilities(chosen.oof_logits, multi), fusion_targets, multi,
                                     thresholds, enabled=settings["enabled"],
                                     max_accuracy_loss=settings["max_accuracy_loss"],
                                     llm_fraction=settings["llm_fraction"], source="cross-fitted fusion split")
        gate["held_out"] = held_out_report(gate["threshold"], held["fused_no_llm"], held["fused"], held_targets,
                                           multi, thresholds)
        return gate

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
                                                   "llm_score_method", "splits", "timings", "stage1", "combiner", "gate",
                                                   "cost")}
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
        from textclassify.train.encoder import load_encoder
        from textclassify.train.combiners import combiner_from_spec
        from textclassify.train.fusion_model import FusionWrapper
        from textclassify.train.lexical import LexicalModel

        folder, meta, validation = persistence.read_model_meta(directory)
        encoder, tokenizer = load_encoder(str(folder / persistence.ENCODER_DIR), meta["labels"], meta["multi_label"])
        if "components" not in meta["fusion_mlp"]:
            raise BundleError(f"{folder}: saved by an older textclassify whose fusion head has no llm_present input; "
                              "fit the model again with this version.")
        mlp = combiner_from_spec(meta["fusion_mlp"])
        mlp.load_state_dict(persistence.load_mlp_state(folder))
        mlp.eval()
        clf = cls(meta["config"], api_key=api_key)
        clf.config_ = validate_config(meta["config"])
        clf.labels_, clf.multi_label_ = list(meta["labels"]), bool(meta["multi_label"])
        clf.thresholds_, clf.max_length_ = meta["thresholds"], int(meta["max_length"])
        clf.model_ = FusionWrapper(encoder, mlp).eval()
        clf.encoder_, clf.head_ = clf.model_.encoder, mlp
        clf.lexical_ = LexicalModel.from_dict(meta["lexical"]) if meta.get("lexical") else None
        combiner = meta.get("combiner") or {}
        clf.combiner_, clf.cv_table_ = combiner.get("chosen", "mlp"), combiner.get("cv_table", [])
        clf.tokenizer_ = tokenizer
        clf.calibrator_ = calibrator_from_dict(meta["calibrator"])
        clf.llm_settings_ = LLMSettings(**meta["llm"])
        clf.validation_ = validation
        clf.metrics_ = meta.get("metrics", {})
        clf.gate_ = meta.get("gate")
        clf.metadata_ = {"metrics": clf.metrics_, "llm_usage": meta.get("llm_usage", {}), "gate": clf.gate_,
                         "combiner": combiner}
        clf._scorer = None
        return clf

    def export(self, bundle_dir: str | os.PathLike, int8: bool = False, fp16: bool = False, **kwargs: Any) -> Path:
        """Write the ONNX bundle (same as the `fusion-export` command)."""
        self._check_fitted()
        from textclassify.export import export_bundle

        return export_bundle(self, bundle_dir, int8=int8, fp16=fp16, **kwargs)
