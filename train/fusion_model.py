"""The fusion head and FusionWrapper: the encoder and a head that fuses component logits with calibrated LLM scores.

Every combiner shares one forward signature,
`head(ml_logits, lexical_logits, llm_scores, llm_present) -> fused_logits`: `lexical_logits` is None
when the model has no lexical component, and `llm_present` ([B, 1] float, 1 or 0) says per row whether
the LLM answered. A row with llm_present = 0 sees neutral scores (the training mean of the calibrated
scores, which standardises to 0) instead of `llm_scores`, and llm_present is an input feature too, so
one head answers with and without the LLM (it is trained with LLM dropout, see fusion_training).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from textclassify.train.constants import FEATURE_SCALE_FLOOR

COMPONENTS = ("ml", "lexical")  # component logits the head can read, in this order


class FusionOutput(NamedTuple):
    """What FusionWrapper returns; `llm_scores` is the (detached) calibrated input, passed through."""

    ml_logits: torch.Tensor
    llm_scores: torch.Tensor
    fused_logits: torch.Tensor


def present_column(n: int, value: float, like: torch.Tensor) -> torch.Tensor:
    """An llm_present column [n, 1] filled with `value`, on the device and dtype of `like`."""
    return torch.full((n, 1), float(value), dtype=like.dtype, device=like.device)


class StandardisedInputs:
    """Input standardisation shared by the fusion heads (FusionMLP, LinearStacker): its buffers, saved with the
    weights and exported in the graph, and their fit. Logits and probabilities live on different scales;
    standardising them lets one learning rate (or one regularisation strength) fit both."""

    input_dim: int
    output_dim: int
    components: tuple[str, ...]

    def _register_scaling(self) -> None:
        self.register_buffer("feature_mean", torch.zeros(self.input_dim))
        self.register_buffer("feature_scale", torch.ones(self.input_dim))
        # What a row without an LLM answer sees instead of scores: the training mean (standardised: 0).
        self.register_buffer("llm_neutral", torch.zeros(self.output_dim))

    @property
    def has_lexical(self) -> bool:
        return "lexical" in self.components

    def set_feature_scaling(self, features: torch.Tensor) -> None:
        """Store the mean and spread of training features (component logits then scores, all rows with an LLM)."""
        self.feature_mean.copy_(features.mean(dim=0))
        spread = features.std(dim=0) if len(features) > 1 else torch.ones_like(self.feature_scale)
        self.feature_scale.copy_(spread.clamp_min(FEATURE_SCALE_FLOOR))
        self.llm_neutral.copy_(self.feature_mean[-self.output_dim:])


class FusionMLP(StandardisedInputs, nn.Module):
    """MLP over standardised concat(component logits, calibrated LLM scores or neutral ones) and llm_present.

    `input_dim` counts the component and score columns ((number of components + 1) * n_labels); the
    llm_present column comes on top. `components` names the component logits read, ("ml",) by default.
    """

    def __init__(self, input_dim: int, output_dim: int, hidden_dims: Sequence[int] = (64, 32),
                 dropout: float = 0.1, components: Sequence[str] = ("ml",)) -> None:
        super().__init__()
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.hidden_dims, self.dropout = [int(h) for h in hidden_dims], float(dropout)
        self.components = tuple(components)
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown or not self.components or self.components[0] != "ml" or len(set(self.components)) != len(
                self.components):
            raise ValueError(f"components must start with 'ml' and be some of {list(COMPONENTS)} (got "
                             f"{list(self.components)})")
        if self.input_dim != (len(self.components) + 1) * self.output_dim:
            raise ValueError(f"input_dim {self.input_dim} must be (components + 1) * n_labels = "
                             f"{(len(self.components) + 1) * self.output_dim}")
        layers: list[nn.Module] = []
        prev = self.input_dim + 1  # + llm_present
        for width in self.hidden_dims:
            layers += [nn.Linear(prev, width), nn.ReLU(), nn.Dropout(self.dropout)]
            prev = width
        layers.append(nn.Linear(prev, self.output_dim))
        self.net = nn.Sequential(*layers)
        self._register_scaling()

    def forward(self, ml_logits: torch.Tensor, lexical_logits: torch.Tensor | None = None,
                llm_scores: torch.Tensor | None = None, llm_present: torch.Tensor | None = None) -> torch.Tensor:
        parts = [ml_logits]
        if self.has_lexical:
            if lexical_logits is None:
                raise ValueError("this fusion head reads lexical_logits; none were given")
            parts.append(lexical_logits.to(ml_logits.dtype))
        n = ml_logits.shape[0]
        if llm_scores is None:
            llm_scores = self.llm_neutral.to(ml_logits.dtype).expand(n, self.output_dim)
            llm_present = present_column(n, 0.0, ml_logits)
        elif llm_present is None:
            llm_present = present_column(n, 1.0, ml_logits)
        present = llm_present.to(ml_logits.dtype)
        scores = llm_scores.to(ml_logits.dtype) * present + self.llm_neutral.to(ml_logits.dtype) * (1.0 - present)
        x = (torch.cat(parts + [scores], dim=-1) - self.feature_mean) / self.feature_scale
        return self.net(torch.cat([x, present], dim=-1))

    def spec(self) -> dict:
        """Constructor arguments, for saving next to the weights."""
        return {"input_dim": self.input_dim, "output_dim": self.output_dim,
                "hidden_dims": self.hidden_dims, "dropout": self.dropout, "components": list(self.components)}


class FusionWrapper(nn.Module):
    """Encoder + fusion head as one module (export splits it into encoder.onnx and fusion.onnx)."""

    def __init__(self, encoder: nn.Module, mlp: FusionMLP) -> None:
        super().__init__()
        self.encoder = encoder
        self.mlp = mlp

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, llm_scores: torch.Tensor,
                llm_present: torch.Tensor | None = None,
                lexical_logits: torch.Tensor | None = None) -> FusionOutput:
        ml_logits = self.encoder(input_ids=input_ids, attention_mask=attention_mask).logits
        llm_scores = llm_scores.detach().to(ml_logits.dtype)
        if llm_present is None:
            llm_present = present_column(len(ml_logits), 1.0, ml_logits)
        fused = self.mlp(ml_logits, lexical_logits, llm_scores, llm_present.to(ml_logits.dtype))
        return FusionOutput(ml_logits, llm_scores, fused)
