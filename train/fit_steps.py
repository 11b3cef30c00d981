"""The steps of AutoFusionClassifier.fit, in the order fit runs them, each a function of the previous steps' results."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textclassify.runtime.decoding import decide, encode_targets, logits_to_probabilities, scores_to_probabilities
from textclassify.runtime.llm.usage import usage_delta
from textclassify.runtime.metrics import classification_metrics
from textclassify.runtime.types import TrainingData

log = logging.getLogger(__name__)

TUNED_RULE = ("fused", "fused_no_llm", "stacker")  # metrics that use the tuned multi-label thresholds


@dataclass
class Prepared:
    """Checked training data, its targets and splits (fit's first step)."""

    texts: list[str]
    targets: np.ndarray
    labels: list[str]
    multi: bool
    splits: Any
    fusion_idx: np.ndarray  # the fusion rows, what the combiners learn on: the fusion split and stage 1's
    # validation rows, both out-of-sample for the encoder
    stage1_train_idx: np.ndarray  # what the encoder trains on; the lexical model's cross-fitting base
    evaluation: TrainingData | None

    def pick(self, idx: Sequence[int]) -> list[str]:
        return [self.texts[i] for i in idx]

    @property
    def fusion_texts(self) -> list[str]:
        return self.pick(self.fusion_idx)

    @property
    def fusion_targets(self) -> np.ndarray:
        return self.targets[self.fusion_idx]


@dataclass
class LLMScores:
    raw_fusion: np.ndarray
    raw_eval: np.ndarray | None
    usage_training: dict[str, Any]
    usage_evaluation: dict[str, Any] | None


@dataclass
class Stage1:
    encoder: Any
    tokenizer: Any
    max_length: int
    history: Any
    schedule: dict[str, Any]


@dataclass
class Components:
    """Out-of-sample component logits for the fusion rows and eval_data, and the folds they share."""

    ml_fusion: np.ndarray
    ml_eval: np.ndarray | None
    lexical: Any
    lex_fusion: np.ndarray | None
    lex_eval: np.ndarray | None
    folds: list[np.ndarray]


@dataclass
class Combiner:
    choice: Any
    calibrator: Any
    head: Any
    lexical: Any  # None when cross-fitting did not keep it
    stacker_name: str
    stacker: Any


@dataclass
class HeldOut:
    texts: list[str]
    targets: np.ndarray
    raw: np.ndarray
    calibrated: np.ndarray
    probabilities: dict[str, np.ndarray]
    metrics: dict[str, Any]



def cost_report(scorer: Any, cfg: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any] | None,
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


def score_llm(scorer: Any, prep: Prepared, progress: bool) -> LLMScores:
    """Raw LLM scores for the fusion rows (and eval_data), with the usage of each."""
    usage_start = dict(scorer.usage)
    raw_fusion = scorer.score(prep.fusion_texts, progress=progress)
    usage_training = usage_delta(scorer.usage, usage_start)
    raw_eval, usage_evaluation = None, None
    if prep.evaluation is not None:
        usage_start = dict(scorer.usage)
        raw_eval = scorer.score(prep.evaluation.texts, progress=progress)
        usage_evaluation = usage_delta(scorer.usage, usage_start)
    return LLMScores(raw_fusion, raw_eval, usage_training, usage_evaluation)


def fit_stage1(cfg: dict[str, Any], prep: Prepared, progress: bool) -> Stage1:
    """Fine-tune the encoder on the stage-1 split (its own schedule when the config sets none)."""
    import torch

    from textclassify.train.encoder import effective_max_length, load_encoder
    from textclassify.train.schedule import describe_stage1, fit_stage1

    splits, targets = prep.splits, prep.targets
    torch.manual_seed(cfg["seed"])  # the new classification head is initialised while loading
    encoder, tokenizer = load_encoder(cfg["ml_model"], prep.labels, prep.multi)
    max_length = effective_max_length(encoder, tokenizer, cfg["ml"]["max_length"])
    history, schedule = fit_stage1(encoder, tokenizer, prep.pick(splits.stage1_train), targets[splits.stage1_train],
                                   prep.pick(splits.stage1_val), targets[splits.stage1_val],
                                   multi_label=prep.multi, ml=cfg["ml"], max_length=max_length, seed=cfg["seed"],
                                   progress=progress)
    schedule["summary"] = describe_stage1(schedule)
    log.info(schedule["summary"])
    return Stage1(encoder, tokenizer, max_length, history, schedule)


def fit_lexical(cfg: dict[str, Any], prep: Prepared, stage1: Stage1) -> Components:
    """Out-of-sample component logits for the fusion rows (and eval_data): the encoder's, and the
    cross-fitted lexical model's unless `lexical` is off. Stage 1 never trained on these texts."""
    from textclassify.train.crossfit import make_folds
    from textclassify.train.encoder import encoder_logits

    bs = max(cfg["ml"]["batch_size"], 32)
    evaluation = prep.evaluation
    ml_fusion = encoder_logits(stage1.encoder, stage1.tokenizer, prep.fusion_texts, stage1.max_length, bs)
    ml_eval = (encoder_logits(stage1.encoder, stage1.tokenizer, evaluation.texts, stage1.max_length, bs)
               if evaluation else None)
    folds = make_folds(prep.fusion_targets, cfg["fusion"]["cv_folds"], cfg["seed"], prep.multi)
    lexical, lex_fusion, lex_eval = None, None, None
    if cfg["lexical"] != "off":
        from textclassify.train.lexical import cross_fitted_lexical

        base = prep.stage1_train_idx
        lex_fusion, lexical = cross_fitted_lexical(prep.pick(base), prep.targets[base], prep.fusion_texts,
                                                   prep.fusion_targets, folds,
                                                   multi_label=prep.multi, n_labels=len(prep.labels),
                                                   seed=cfg["seed"])
        lex_eval = lexical.logits(evaluation.texts) if evaluation is not None else None
    return Components(ml_fusion, ml_eval, lexical, lex_fusion, lex_eval, folds)


def choose_combiner(cfg: dict[str, Any], prep: Prepared, llm: LLMScores, comp: Components) -> Combiner:
    """The combiner chosen by k-fold cross-fitting, refitted on all the fusion rows, with the calibrator and
    the stacker baseline reported beside it."""
    from textclassify.train.calibration import fit_calibrator
    from textclassify.train.crossfit import choose, choose_combiner, fit_combiner

    multi, targets, raw = prep.multi, prep.fusion_targets, llm.raw_fusion
    choice = choose_combiner(comp.ml_fusion, comp.lex_fusion, raw, targets, folds=comp.folds, multi_label=multi,
                             labels=prep.labels, fusion=cfg["fusion"], lexical_mode=cfg["lexical"],
                             seed=cfg["seed"], calibrator_factory=lambda r, y: fit_calibrator(r, y, multi),
                             repeats=cfg["fusion"]["cv_repeats"])
    calibrator = fit_calibrator(raw, targets, multi)
    cal_fusion = calibrator.transform(raw)
    head = fit_combiner(choice.name, comp.ml_fusion, comp.lex_fusion, cal_fusion, targets, multi_label=multi,
                        fusion=cfg["fusion"], seed=cfg["seed"])
    choice.head = head
    lexical = comp.lexical
    if lexical is not None and not head.has_lexical:
        lexical = None  # cross-fitting said the lexical component does not help: it is not served
    # The stacker baseline reported beside the fused model: what the same rule serves when only the stackers
    # compete (lowest CV log-loss, a tie going to the simpler), so a tie never splits the two.
    stacker_name = choose([r for r in choice.results if r.kind == "stacker"]).name
    stacker = head if stacker_name == choice.name else fit_combiner(
        stacker_name, comp.ml_fusion, comp.lex_fusion, cal_fusion, targets, multi_label=multi,
        fusion=cfg["fusion"], seed=cfg["seed"])
    return Combiner(choice, calibrator, head, lexical, stacker_name, stacker)


def tune_thresholds(cfg: dict[str, Any], prep: Prepared, comb: Combiner) -> list[float] | None:
    """Multi-label: per-label thresholds tuned on the chosen combiner's cross-fitted predictions, each kept only
    where it beats 0.5 out of sample, overall and in most folds (train.thresholds.choose_thresholds)."""
    if not prep.multi:
        return None
    from textclassify.train.thresholds import choose_thresholds

    chosen = comb.choice.result(comb.choice.name)
    return choose_thresholds(logits_to_probabilities(chosen.oof_logits, True), prep.fusion_targets,
                             cfg["fusion"]["threshold_objective"], seed=cfg["seed"])


def choose_gate(cfg: dict[str, Any], chosen: Any, fusion_targets: np.ndarray, multi: bool,
                 thresholds: Sequence[float] | None, held: dict[str, np.ndarray],
                 held_targets: np.ndarray) -> dict[str, Any]:
    """The gate threshold, chosen on the cross-fitted fusion-split predictions (train.gate), and its held-out
    effect."""
    from textclassify.train.gate import choose_gate_threshold, held_out_report

    settings = cfg["gate"]
    gate = choose_gate_threshold(logits_to_probabilities(chosen.oof_no_llm_logits, multi),
                                 logits_to_probabilities(chosen.oof_logits, multi), fusion_targets, multi,
                                 thresholds, enabled=settings["enabled"],
                                 max_accuracy_loss=settings["max_accuracy_loss"],
                                 llm_fraction=settings["llm_fraction"], source="cross-fitted fusion rows")
    gate["held_out"] = held_out_report(gate["threshold"], held["fused_no_llm"], held["fused"], held_targets,
                                       multi, thresholds)
    return gate


def evaluate(prep: Prepared, llm: LLMScores, comp: Components, comb: Combiner,
              thresholds: Sequence[float] | None) -> HeldOut:
    """Held-out metrics for every model side by side: on eval_data, else the cross-fitted fusion rows."""
    from textclassify.train.combiners import head_logits

    multi, labels, evaluation = prep.multi, prep.labels, prep.evaluation
    choice, head, stacker = comb.choice, comb.head, comb.stacker
    if evaluation is not None:
        held_texts, held_targets = evaluation.texts, encode_targets(evaluation.labels, labels, multi)
        held_raw, held_ml, held_lex = llm.raw_eval, comp.ml_eval, comp.lex_eval
        held_cal = comb.calibrator.transform(held_raw)
        fused = head_logits(head, held_ml, held_lex, held_cal)
        fused_no_llm = head_logits(head, held_ml, held_lex, None)
        stacked = head_logits(stacker, held_ml, held_lex, held_cal)
    else:
        fusion_targets, raw_fusion = prep.fusion_targets, llm.raw_fusion
        held_texts, held_targets, held_raw, held_ml, held_lex = (prep.fusion_texts, fusion_targets, raw_fusion,
                                                                 comp.ml_fusion, comp.lex_fusion)
        held_cal = choice.oof_calibrated  # cross-fitted calibration, as the combiners saw it
        chosen = choice.result(choice.name)
        fused, fused_no_llm = chosen.oof_logits, chosen.oof_no_llm_logits
        stacked = choice.result(comb.stacker_name).oof_logits
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
    # The per-label thresholds are tuned for the combiner: a part alone answers by the default rule, as it
    # would if it were used alone (multi-class has no thresholds, so this changes nothing there).
    metrics = {name: classification_metrics(held_targets, decide(p, multi, thresholds if name in TUNED_RULE else None),
                                            labels, multi)
               for name, p in candidates.items()}
    return HeldOut(held_texts, held_targets, held_raw, held_cal, candidates, metrics)
