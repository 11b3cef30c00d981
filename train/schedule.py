"""Stage 1's learning rate and length when the user sets none, and the check that it learned at all.

Small labelled sets need many more optimizer steps than "3 epochs" gives them: 600 texts at batch 16
are 30 steps an epoch, and all-MiniLM-L6-v2 at lr 2e-5 for 2-3 epochs collapsed to the majority class
while lr 1e-4 for 5 epochs learned. So "auto" means: a learning rate by encoder size, and training
until validation macro-F1 stops improving under a budget counted in optimizer steps, not epochs.
A stage 1 whose best state is no better than always answering the majority is retried once with a
larger learning rate; what happened is reported (metrics.json, summary, report).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# lr = REFERENCE_LR * sqrt(REFERENCE_PARAMS / n_params), clipped: 1.1e-4 for MiniLM-L6 (22.7M parameters),
# 4.5e-5 for roberta-base (125M), 2.7e-5 for roberta-large (355M), the ceiling for tiny test models.
REFERENCE_LR, REFERENCE_PARAMS = 1e-4, 25e6
MIN_AUTO_LR, MAX_AUTO_LR = 1e-5, 1e-3
# Step budget: at least MIN_STEPS (or MIN_EPOCHS epochs on larger sets), at most MAX_STEPS.
MIN_STEPS, MIN_EPOCHS, MAX_STEPS = 300, 3, 3000
MAX_EVAL_EVERY = 200  # optimizer steps between two validations on large sets
AUTO_PATIENCE = 3  # validations without a better macro-F1 before an auto-length run stops
RETRY_LR_FACTOR = 4.0  # a collapsed stage 1 is retried at max(this x its rate, the auto rate)
COLLAPSE_MARGIN = 0.01  # macro-F1 within this of the always-majority answer counts as collapsed


@dataclass(frozen=True)
class Stage1Plan:
    """Resolved stage-1 schedule: what `train_encoder` runs, and where each value came from."""

    learning_rate: float
    max_steps: int
    eval_every: int
    patience: int
    steps_per_epoch: int
    learning_rate_source: str  # "auto" | "user"
    length_source: str  # "auto" | "user"

    def with_learning_rate(self, lr: float, source: str) -> Stage1Plan:
        return Stage1Plan(**{**asdict(self), "learning_rate": float(lr), "learning_rate_source": source})


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def auto_learning_rate(n_params: int) -> float:
    """A learning rate by encoder size: smaller encoders take larger steps."""
    lr = REFERENCE_LR * math.sqrt(REFERENCE_PARAMS / max(1, n_params))
    return float(min(MAX_AUTO_LR, max(MIN_AUTO_LR, lr)))


def plan_stage1(ml: dict[str, Any], model: Any, n_train: int) -> Stage1Plan:
    """The schedule for `n_train` texts: values the user set are used as given, "auto" ones are chosen."""
    spe = max(1, -(-n_train // ml["batch_size"]))
    lr_auto = ml["learning_rate"] == "auto"
    lr = auto_learning_rate(count_parameters(model)) if lr_auto else float(ml["learning_rate"])
    if ml["num_epochs"] == "auto":
        steps = min(MAX_STEPS, max(MIN_STEPS, MIN_EPOCHS * spe))
        return Stage1Plan(lr, steps, min(spe, MAX_EVAL_EVERY), max(AUTO_PATIENCE, ml["early_stopping_patience"]),
                          spe, "auto" if lr_auto else "user", "auto")
    return Stage1Plan(lr, int(ml["num_epochs"]) * spe, spe, ml["early_stopping_patience"], spe,
                      "auto" if lr_auto else "user", "user")


def majority_macro_f1(train_targets: np.ndarray, val_targets: np.ndarray, multi_label: bool) -> float:
    """Validation macro-F1 of always answering what is most common in training (per label for multi-label)."""
    from textclassify.runtime.metrics import classification_metrics

    n_labels = train_targets.shape[1] if multi_label else int(max(train_targets.max(), val_targets.max()) + 1)
    if multi_label:
        pred = np.tile((train_targets.mean(axis=0) > 0.5).astype(np.int64), (len(val_targets), 1))
    else:
        pred = np.full(len(val_targets), np.bincount(train_targets, minlength=n_labels).argmax())
    return float(classification_metrics(val_targets, pred, [str(i) for i in range(n_labels)],
                                        multi_label)["macro_f1"])


def fit_stage1(model: Any, tokenizer: Any, train_texts: list[str], train_targets: np.ndarray, val_texts: list[str],
               val_targets: np.ndarray, *, multi_label: bool, ml: dict[str, Any], max_length: int, seed: int,
               progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Plan, train, check for collapse, retry once at a larger rate; returns (history, what happened)."""
    from textclassify.train.encoder import train_encoder

    plan = plan_stage1(ml, model, len(train_texts))
    initial = copy.deepcopy(model.state_dict())
    history = train_encoder(model, tokenizer, train_texts, train_targets, val_texts, val_targets,
                            multi_label=multi_label, ml=ml, max_length=max_length, seed=seed, progress=progress,
                            plan=plan)
    baseline = majority_macro_f1(train_targets, val_targets, multi_label)
    best = _best_f1(history)
    report: dict[str, Any] = {
        "plan": asdict(plan), "steps_run": history.steps_run, "val_macro_f1": best,
        "majority_val_macro_f1": baseline, "collapsed": best <= baseline + COLLAPSE_MARGIN, "retried": False,
    }
    if report["collapsed"]:
        retry_lr = max(RETRY_LR_FACTOR * plan.learning_rate, auto_learning_rate(count_parameters(model)))
        log.warning("stage 1 collapsed (validation macro-F1 %.3f, always-majority %.3f) at lr %.2g; retrying once "
                    "at lr %.2g.", best, baseline, plan.learning_rate, retry_lr)
        model.load_state_dict(initial)
        retry_plan = plan.with_learning_rate(retry_lr, "retry after collapse")
        first = history
        history = train_encoder(model, tokenizer, train_texts, train_targets, val_texts, val_targets,
                                multi_label=multi_label, ml=ml, max_length=max_length, seed=seed, progress=progress,
                                plan=retry_plan)
        best = _best_f1(history)
        report.update(retried=True, retry_learning_rate=retry_lr, first_val_macro_f1=report["val_macro_f1"],
                      first_steps_run=first.steps_run, steps_run=history.steps_run, val_macro_f1=best,
                      collapsed_after_retry=best <= baseline + COLLAPSE_MARGIN)
        if report["collapsed_after_retry"]:
            log.warning("stage 1 is still no better than always-majority after the retry (macro-F1 %.3f); the "
                        "combiner choice will weigh it accordingly.", best)
    return history, report


def _best_f1(history: Any) -> float:
    if history.best_epoch < 0 or not history.val_macro_f1:
        return 0.0
    return float(history.val_macro_f1[history.best_epoch])


def describe_stage1(report: dict[str, Any]) -> str:
    """One line for the summary and the report."""
    plan = report["plan"]
    line = (f"stage 1: lr {plan['learning_rate']:.2g} ({plan['learning_rate_source']}), {report['steps_run']} of "
            f"{plan['max_steps']} steps ({plan['length_source']} length), validation macro-F1 "
            f"{report['val_macro_f1']:.3f} (always-majority {report['majority_val_macro_f1']:.3f})")
    if report.get("retried"):
        outcome = "still collapsed" if report.get("collapsed_after_retry") else "learned"
        line += (f"; collapsed at first (macro-F1 {report['first_val_macro_f1']:.3f}), retried at lr "
                 f"{report['retry_learning_rate']:.2g}: {outcome}")
    return line
