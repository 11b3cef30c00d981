"""One early-stopping rule (train.early_stopping.EarlyStopping) for stage 1, the warm-up and joint training."""
from __future__ import annotations

import torch

from textclassify.train.early_stopping import EarlyStopping


def test_keeps_the_best_state_and_stops_after_patience():
    """The state at the best score comes back; `patience` checks without a better one stop it."""
    layer = torch.nn.Linear(1, 1)
    stopper = EarlyStopping(2, min_delta=1e-7, best=float("-inf"))
    for value, loss in [(1.0, 0.9), (2.0, 0.5), (3.0, 0.6), (4.0, 0.5 - 1e-9)]:
        layer.weight.data.fill_(value)
        stopper.update(-loss, layer)
    assert stopper.stop and stopper.best == -0.5  # 0.5 - 1e-9 is within min_delta: not better
    stopper.restore(layer)
    assert layer.weight.item() == 2.0


def test_tuple_scores_break_ties_in_order():
    """(macro-F1, -loss): a higher F1 wins, and at equal F1 the lower loss does; the first check always counts."""
    layer = torch.nn.Linear(1, 1)
    stopper = EarlyStopping(5)
    assert stopper.update((0.0, -2.0), layer)
    assert stopper.update((0.5, -3.0), layer)
    assert not stopper.update((0.5, -3.5), layer)
    assert stopper.update((0.5, -1.0), layer)
    assert stopper.best == (0.5, -1.0) and not stopper.stop


def test_restore_without_a_kept_state_is_a_no_op():
    """Before any check (and with no initial state) restore leaves the module alone."""
    layer = torch.nn.Linear(1, 1)
    layer.weight.data.fill_(7.0)
    EarlyStopping(1).restore(layer)
    assert layer.weight.item() == 7.0
