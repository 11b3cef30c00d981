"""Stage 1's automatic schedule, the user's values taking precedence, and collapse detection with one retry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.support.data import LABELS, make_tickets
from textclassify.train.config import validate_config
from textclassify.train.schedule import (
    MAX_STEPS,
    auto_learning_rate,
    fit_stage1,
    majority_macro_f1,
    plan_stage1,
)


class _Sized(nn.Module):
    """A module with `n` parameters on the meta device: a stand-in for an encoder of that size."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, device="meta"))


def test_small_set_gets_a_longer_run_and_a_larger_rate_than_the_old_defaults():
    """MiniLM-sized encoder, 432 texts: more steps than 3 epochs and a rate above 2e-5."""
    ml = validate_config({})["ml"]
    plan = plan_stage1(ml, _Sized(22_700_000), 432)
    old_steps = 3 * plan.steps_per_epoch
    assert plan.steps_per_epoch == 27
    assert plan.max_steps >= 3 * old_steps and plan.learning_rate >= 4 * 2e-5
    assert (plan.learning_rate_source, plan.length_source) == ("auto", "auto")


def test_auto_rate_shrinks_with_encoder_size_and_budget_is_capped():
    """Larger encoders get smaller rates; a large set is capped at the step budget, not run for epochs."""
    rates = [auto_learning_rate(n) for n in (300_000, 22_700_000, 125_000_000, 355_000_000)]
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]
    plan = plan_stage1(validate_config({})["ml"], _Sized(125_000_000), 1_000_000)
    assert plan.max_steps == MAX_STEPS and plan.eval_every < plan.steps_per_epoch


def test_values_the_user_sets_are_used_as_given():
    """num_epochs and learning_rate given: exactly those epochs' steps and that rate."""
    ml = validate_config({"ml": {"num_epochs": 2, "learning_rate": 3e-4, "batch_size": 8}})["ml"]
    plan = plan_stage1(ml, _Sized(22_700_000), 100)
    assert (plan.learning_rate, plan.max_steps, plan.eval_every) == (3e-4, 2 * 13, 13)
    assert (plan.learning_rate_source, plan.length_source) == ("user", "user")
    only_lr = plan_stage1(validate_config({"ml": {"learning_rate": 3e-4}})["ml"], _Sized(22_700_000), 100)
    assert only_lr.learning_rate == 3e-4 and only_lr.length_source == "auto"


def test_majority_baseline_macro_f1():
    """Always answering class 0 on [0, 0, 1, 2]: F1 2/3 for class 0, 0 for the others."""
    train = np.array([0, 0, 0, 1, 2])
    assert majority_macro_f1(train, np.array([0, 0, 1, 2]), False) == pytest.approx((2 / 3) / 3)


def _ticket_data(n: int, seed: int):
    rows = make_tickets(n, seed=seed)
    return [t for t, _ in rows], np.array([LABELS.index(ls[0]) for _, ls in rows])


def test_collapse_at_learning_rate_zero_is_detected_and_retried(tiny_roberta_dir, one_torch_thread):
    """lr 0 cannot learn: the report says collapsed, the retry runs at a larger rate and learns."""
    from textclassify.train.encoder import load_encoder

    torch.manual_seed(0)
    model, tok = load_encoder(tiny_roberta_dir, LABELS, False)
    x_tr, y_tr = _ticket_data(240, seed=11)
    x_va, y_va = _ticket_data(60, seed=12)
    ml = {**validate_config({"ml": {"batch_size": 16}})["ml"], "learning_rate": 0.0}
    history, report = fit_stage1(model, tok, x_tr, y_tr, x_va, y_va, multi_label=False, ml=ml, max_length=24,
                                 seed=0, progress=False)
    assert report["collapsed"] and report["retried"]
    assert report["first_val_macro_f1"] <= report["majority_val_macro_f1"] + 0.01
    assert report["retry_learning_rate"] == auto_learning_rate(sum(p.numel() for p in model.parameters()))
    assert not report["collapsed_after_retry"] and report["val_macro_f1"] > 0.6
    assert history.steps_run == report["steps_run"] > 0


def test_a_learning_stage1_is_not_retried(tiny_roberta_dir, one_torch_thread):
    """The automatic schedule learns the tickets; no collapse, no retry, steps within the budget."""
    from textclassify.train.encoder import load_encoder

    torch.manual_seed(0)
    model, tok = load_encoder(tiny_roberta_dir, LABELS, False)
    x_tr, y_tr = _ticket_data(240, seed=11)
    x_va, y_va = _ticket_data(60, seed=12)
    ml = validate_config({"ml": {"batch_size": 16}})["ml"]
    history, report = fit_stage1(model, tok, x_tr, y_tr, x_va, y_va, multi_label=False, ml=ml, max_length=24,
                                 seed=0, progress=False)
    assert not report["collapsed"] and not report["retried"]
    assert report["val_macro_f1"] > 0.6 and history.steps_run <= report["plan"]["max_steps"]
    assert len(history.val_macro_f1) == len(history.eval_steps) >= 1
