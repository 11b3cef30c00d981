"""Combiners besides the fusion MLP, in the fusion head's one signature, so any choice exports as fusion.onnx.

`head(ml_logits, lexical_logits, llm_scores, llm_present) -> fused_logits`. A row with llm_present = 0
sees neutral scores (the training mean) instead of llm_scores, as in FusionMLP:
- LinearStacker: logistic regression over standardised [component logits, scores, llm_present], stored
  as one nn.Linear; fitted with LLM dropout (each row once with its scores, once without, weighted).
  `fit_tied` fits the same layer with one weight per component, shared by every class (a weighted
  log-linear pool: class c's logit is b_c + sum_k w_k * component_k[c], plus a per-class shift for rows
  without the LLM): a handful of parameters, for the small fusion splits a full stacker overfits.
- ComponentSelector: one component alone, its logits times a fitted temperature. The LLM alone answers
  from the encoder (temperature-scaled) where llm_present = 0, so `ml_only` still has an answer.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from textclassify.train.fusion_model import StandardisedInputs

SCORE_FLOOR = 1e-6  # calibrated scores are clipped here before their log (LLM alone)
TIED_L2 = 1e-4  # ridge on the tied stacker's few parameters: keeps them finite when a class is missing


def _neutral_scores(head: nn.Module, scores: torch.Tensor | None, present: torch.Tensor | None,
                    like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = like.shape[0]
    neutral = head.llm_neutral.to(like.dtype).expand(n, head.output_dim)
    if scores is None:
        return neutral, torch.zeros((n, 1), dtype=like.dtype, device=like.device)
    if present is None:
        present = torch.ones((n, 1), dtype=like.dtype, device=like.device)
    present = present.to(like.dtype)
    return scores.to(like.dtype) * present + neutral * (1.0 - present), present


class LinearStacker(StandardisedInputs, nn.Module):
    """Logistic regression over standardised [component logits, scores] and llm_present, as one nn.Linear."""

    def __init__(self, n_labels: int, components: Sequence[str] = ("ml",)) -> None:
        super().__init__()
        self.output_dim, self.components = int(n_labels), tuple(components)
        self.input_dim = (len(self.components) + 1) * self.output_dim
        self.linear = nn.Linear(self.input_dim + 1, self.output_dim)
        self._register_scaling()

    def forward(self, ml_logits: torch.Tensor, lexical_logits: torch.Tensor | None = None,
                llm_scores: torch.Tensor | None = None, llm_present: torch.Tensor | None = None) -> torch.Tensor:
        parts = [ml_logits] + ([lexical_logits.to(ml_logits.dtype)] if self.has_lexical else [])
        scores, present = _neutral_scores(self, llm_scores, llm_present, ml_logits)
        x = (torch.cat(parts + [scores], dim=-1) - self.feature_mean) / self.feature_scale
        return self.linear(torch.cat([x, present], dim=-1))

    def spec(self) -> dict[str, Any]:
        return {"kind": "stacker", "n_labels": self.output_dim, "components": list(self.components)}

    def fit(self, features: np.ndarray, targets: np.ndarray, *, multi_label: bool, llm_dropout: float,
            seed: int, c: float = 1.0) -> LinearStacker:
        """Fit on [component logits, calibrated scores] columns; rows are used with and without their scores."""
        from sklearn.linear_model import LogisticRegression

        f = torch.as_tensor(features, dtype=torch.float32)
        self.set_feature_scaling(f)
        x = ((f - self.feature_mean) / self.feature_scale).numpy()
        without = x.copy()
        without[:, -self.output_dim:] = 0.0  # neutral scores standardise to 0
        p = float(llm_dropout)
        xs = np.vstack([np.hstack([x, np.ones((len(x), 1))]), np.hstack([without, np.zeros((len(x), 1))])])
        ys = np.concatenate([targets, targets])
        w = np.concatenate([np.full(len(x), 1.0 - p), np.full(len(x), p)])
        if p <= 0:
            xs, ys, w = xs[: len(x)], ys[: len(x)], w[: len(x)]
        weight = np.zeros((self.output_dim, xs.shape[1]))
        bias = np.zeros(self.output_dim)
        if multi_label:
            for j in range(self.output_dim):
                yj = ys[:, j]
                if yj.min() == yj.max():
                    rate = np.clip(yj.mean(), 0.01, 0.99)
                    bias[j] = np.log(rate / (1 - rate))
                    continue
                lr = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(xs, yj, sample_weight=w)
                weight[j], bias[j] = lr.coef_[0], lr.intercept_[0]
        else:
            lr = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(xs, ys, sample_weight=w)
            if len(lr.classes_) == 2:
                weight[lr.classes_[1]], bias[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
            else:
                weight[lr.classes_], bias[lr.classes_] = lr.coef_, lr.intercept_
            absent = np.setdiff1d(np.arange(self.output_dim), lr.classes_)
            bias[absent] = bias[lr.classes_].min() - 10.0
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return self.eval()


    def fit_tied(self, features: np.ndarray, targets: np.ndarray, *, multi_label: bool, llm_dropout: float,
                 seed: int, l2: float = TIED_L2) -> LinearStacker:
        """Fit one weight per component (shared across classes), a bias per class and a per-class shift for
        rows without the LLM, by L-BFGS on the log-loss; stored in the full layer, so it serves as a stacker."""
        torch.manual_seed(seed)
        f = torch.as_tensor(features, dtype=torch.float64)
        self.set_feature_scaling(f.float())
        n, c = f.shape[0], self.output_dim
        k = len(self.components) + 1  # component blocks, then the scores
        blocks = f.reshape(n, k, c)
        mean = blocks.mean(dim=0)
        without = blocks.clone()
        without[:, -1, :] = mean[-1]  # rows without the LLM see neutral (mean) scores
        y = torch.as_tensor(np.asarray(targets), dtype=torch.float64 if multi_label else torch.long)
        p = float(llm_dropout)
        w = torch.ones(k, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
        shift = torch.zeros(c, dtype=torch.float64, requires_grad=True)
        loss_of = (nn.functional.binary_cross_entropy_with_logits if multi_label
                   else nn.functional.cross_entropy)
        optimizer = torch.optim.LBFGS([w, b, shift], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            with_llm = b + (blocks * w[None, :, None]).sum(dim=1)
            loss = (1.0 - p) * loss_of(with_llm, y) if p < 1 else torch.zeros((), dtype=torch.float64)
            if p > 0:
                loss = loss + p * loss_of(b + shift + (without * w[None, :, None]).sum(dim=1), y)
            loss = loss + l2 * (w.pow(2).sum() + b.pow(2).sum() + shift.pow(2).sum())
            loss.backward()
            return loss

        optimizer.step(closure)
        scale = self.feature_scale.double().reshape(k, c)
        weight = torch.zeros(c, self.input_dim + 1, dtype=torch.float64)
        for j in range(k):
            weight[torch.arange(c), j * c + torch.arange(c)] = w[j].detach() * scale[j]
        bias = b.detach() + (w.detach()[:, None] * self.feature_mean.double().reshape(k, c)).sum(dim=0)
        # in the layer, "without" rows get the scores' standardised 0 (their mean) and llm_present 0
        weight[:, -1] = -shift.detach()
        bias = bias + shift.detach()
        with torch.no_grad():
            self.linear.weight.copy_(weight.float())
            self.linear.bias.copy_(bias.float())
        return self.eval()


class ComponentSelector(nn.Module):
    """One component alone ("ml", "lexical" or "llm"), its logits times a fitted temperature."""

    def __init__(self, n_labels: int, component: str, multi_label: bool, components: Sequence[str] = ("ml",)) -> None:
        super().__init__()
        if component not in ("ml", "lexical", "llm"):
            raise ValueError(f"component must be 'ml', 'lexical' or 'llm' (got {component!r})")
        self.output_dim, self.component, self.multi_label = int(n_labels), component, bool(multi_label)
        self.components = tuple(components)
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("fallback_scale", torch.ones(1))  # the encoder's, for rows without the LLM
        self.register_buffer("llm_neutral", torch.full((self.output_dim,), 1.0 / self.output_dim))

    @property
    def has_lexical(self) -> bool:
        return "lexical" in self.components

    def _llm_logits(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores.clamp(SCORE_FLOOR, 1.0 - SCORE_FLOOR) if self.multi_label else scores.clamp_min(SCORE_FLOOR)
        return torch.log(s) - torch.log1p(-s) if self.multi_label else torch.log(s)

    def forward(self, ml_logits: torch.Tensor, lexical_logits: torch.Tensor | None = None,
                llm_scores: torch.Tensor | None = None, llm_present: torch.Tensor | None = None) -> torch.Tensor:
        if self.component == "ml":
            return ml_logits * self.scale
        if self.component == "lexical":
            return lexical_logits.to(ml_logits.dtype) * self.scale
        scores, present = _neutral_scores(self, llm_scores, llm_present, ml_logits)
        return present * (self._llm_logits(scores) * self.scale) + (1.0 - present) * (ml_logits * self.fallback_scale)

    def spec(self) -> dict[str, Any]:
        return {"kind": "select", "n_labels": self.output_dim, "component": self.component,
                "multi_label": self.multi_label, "components": list(self.components)}

    def fit(self, component_logits: np.ndarray, targets: np.ndarray, ml_logits: np.ndarray | None = None
            ) -> ComponentSelector:
        """Temperatures by 1-D log-loss minimisation: of this component, and of the encoder (LLM's fallback)."""
        raw = component_logits
        if self.component == "llm":
            raw = self._llm_logits(torch.as_tensor(component_logits, dtype=torch.float32)).numpy()
        self.scale.fill_(fit_temperature(raw, targets, self.multi_label))
        if self.component == "llm" and ml_logits is not None:
            self.fallback_scale.fill_(fit_temperature(ml_logits, targets, self.multi_label))
        return self.eval()


def fit_temperature(logits: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """The scale in [0.05, 20] minimising the log-loss of scale * logits."""
    from scipy.optimize import minimize_scalar

    from textclassify.train.crossfit import log_loss_of_logits

    z = np.asarray(logits, dtype=np.float64)
    res = minimize_scalar(lambda t: log_loss_of_logits(np.exp(t) * z, targets, multi_label),
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def combiner_from_spec(spec: dict[str, Any]) -> nn.Module:
    """An unfitted module of the kind `spec` describes (load its state dict next)."""
    kind = spec.get("kind", "mlp")
    if kind == "stacker":
        return LinearStacker(spec["n_labels"], spec["components"])
    if kind == "select":
        return ComponentSelector(spec["n_labels"], spec["component"], spec["multi_label"], spec["components"])
    from textclassify.train.fusion_model import FusionMLP

    return FusionMLP(**{k: v for k, v in spec.items() if k != "kind"})


def combiner_spec(head: nn.Module) -> dict[str, Any]:
    spec = dict(head.spec())
    spec.setdefault("kind", "mlp")
    return spec


@torch.no_grad()
def head_logits(head: nn.Module, ml: np.ndarray, lexical: np.ndarray | None, scores: np.ndarray | None,
                present: float = 1.0) -> np.ndarray:
    """The head's fused logits [n, C] on numpy inputs; scores None or present 0: the no-LLM answer."""
    head.eval()
    dev = next(iter(head.buffers())).device
    t = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float32), device=dev)  # noqa: E731
    ml_t = t(ml)
    if scores is None:
        scores = np.zeros_like(ml)
        present = 0.0
    pres = torch.full((len(ml), 1), float(present), device=dev)
    return head(ml_t, t(lexical), t(scores), pres).float().cpu().numpy()
