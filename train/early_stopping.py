"""Early stopping: the one rule for keeping the best state and stopping after `patience` checks without a better one.

Scores are "higher is better": a number (pass -loss for a loss) or a tuple compared in order, such as
(macro_f1, -loss). A number must beat the best by more than `min_delta`.
"""
from __future__ import annotations

import copy
from typing import Any


def snapshot(module: Any) -> dict[str, Any]:
    """A copy of the module's state: tensors cloned (detached, same device), anything else deep-copied.

    The same values as copy.deepcopy(module.state_dict()) for a fraction of its cost: a small fusion head that
    keeps improving takes a copy at nearly every epoch of its 200-epoch warm-up."""
    import torch

    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in module.state_dict().items()}


class EarlyStopping:
    """Tracks the best score and a copy of the module's state at that score."""

    def __init__(self, patience: int, *, min_delta: float = 0.0, best: Any = None,
                 best_state: dict[str, Any] | None = None) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = best  # None: the first check is always the best so far
        self.best_state = best_state
        self.bad = 0

    def update(self, score: Any, module: Any) -> bool:
        """Record one check; True when `score` is the new best (the module's state is copied)."""
        better = self.best is None or (score > self.best + self.min_delta if isinstance(score, (int, float))
                                       else score > self.best)
        if better:
            self.best, self.best_state, self.bad = score, snapshot(module), 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        """`patience` checks in a row brought no better score."""
        return self.bad >= self.patience

    def restore(self, module: Any) -> None:
        """Load the best state into `module` (nothing to do before any state was kept)."""
        if self.best_state is not None:
            module.load_state_dict(self.best_state)
