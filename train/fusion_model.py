"""FusionMLP and FusionWrapper: the encoder and the MLP that fuses its logits with calibrated LLM scores."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from textclassify.runtime.constants import FEATURE_SCALE_FLOOR


class FusionOutput(NamedTuple):
    """What FusionWrapper returns; `llm_scores` is the (detached) calibrated input, passed through."""

    ml_logits: torch.Tensor
    llm_scores: torch.Tensor
    fused_logits: torch.Tensor


class FusionMLP(nn.Module):
    """MLP over concat(ml_logits, calibrated_llm_scores) -> fused logits (ReLU, Dropout between layers)."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dims: Sequence[int] = (64, 32),
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.hidden_dims, self.dropout = [int(h) for h in hidden_dims], float(dropout)
        layers: list[nn.Module] = []
        prev = self.input_dim
        for width in self.hidden_dims:
            layers += [nn.Linear(prev, width), nn.ReLU(), nn.Dropout(self.dropout)]
            prev = width
        layers.append(nn.Linear(prev, self.output_dim))
        self.net = nn.Sequential(*layers)
        # Logits and probabilities live on different scales; standardising them (statistics of the
        # fusion-train features, saved with the weights and exported in the graph) lets one learning rate fit both.
        self.register_buffer("feature_mean", torch.zeros(self.input_dim))
        self.register_buffer("feature_scale", torch.ones(self.input_dim))

    def set_feature_scaling(self, features: torch.Tensor) -> None:
        """Store the mean and spread of training features, used to standardise every input."""
        self.feature_mean.copy_(features.mean(dim=0))
        spread = features.std(dim=0) if len(features) > 1 else torch.ones_like(self.feature_scale)
        self.feature_scale.copy_(spread.clamp_min(FEATURE_SCALE_FLOOR))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.feature_mean) / self.feature_scale)

    def spec(self) -> dict:
        """Constructor arguments, for saving next to the weights."""
        return {"input_dim": self.input_dim, "output_dim": self.output_dim,
                "hidden_dims": self.hidden_dims, "dropout": self.dropout}


class FusionWrapper(nn.Module):
    """Encoder + FusionMLP as one module: the graph that export turns into model.onnx."""

    def __init__(self, encoder: nn.Module, mlp: FusionMLP) -> None:
        super().__init__()
        self.encoder = encoder
        self.mlp = mlp

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                llm_scores: torch.Tensor) -> FusionOutput:
        ml_logits = self.encoder(input_ids=input_ids, attention_mask=attention_mask).logits
        llm_scores = llm_scores.detach().to(ml_logits.dtype)
        fused = self.mlp(torch.cat([ml_logits, llm_scores], dim=-1))
        return FusionOutput(ml_logits, llm_scores, fused)
