"""A real, small fitted-model object for export tests, built in a second without running `fit`.

It carries every attribute export reads from a fitted AutoFusionClassifier (see the bundle
contract): the tiny RoBERTa with a fresh head, a FusionMLP trained for a few hundred steps on the
encoder's logits and calibrated keyword scores (so its decisions have real margins, as a trained
head does), a calibrator fitted by `train.calibration.fit_calibrator`, and validation texts.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tests.support.data import keyword_scores, make_tickets
from textclassify.runtime.decoding import encode_targets
from textclassify.runtime.llm.settings import LLMSettings
from textclassify.train.calibration import fit_calibrator
from textclassify.train.encoder import load_encoder
from textclassify.train.fusion_model import FusionMLP, FusionWrapper

MAX_LENGTH = 64


@dataclass
class FittedModel:
    """The attributes of a fitted AutoFusionClassifier that export reads."""

    model_: FusionWrapper
    tokenizer_: Any
    calibrator_: Any
    labels_: list[str]
    multi_label_: bool
    thresholds_: list[float] | None
    max_length_: int
    llm_settings_: LLMSettings
    metrics_: dict[str, Any]
    validation_: dict[str, Any]
    config_: dict[str, Any] = field(default_factory=dict)


def raw_scores(texts: Sequence[str], labels: Sequence[str], multi_label: bool) -> np.ndarray:
    """The fake LLM's raw scores [n, C] in `labels` order."""
    rows = [keyword_scores(t, list(labels), multi_label) for t in texts]
    return np.array([[row[lab] for lab in labels] for row in rows], dtype=np.float32)


def _train_mlp(wrapper: FusionWrapper, tokenizer: Any, texts: list[str], calibrated: np.ndarray,
               targets: np.ndarray, multi_label: bool, steps: int = 300) -> None:
    """Fit the MLP on frozen encoder logits (the recipe's warm-up, in miniature)."""
    with torch.no_grad():
        enc = tokenizer(texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        ml = wrapper.encoder(**enc).logits
    scores = torch.from_numpy(calibrated)
    # Unit feature scale as before (the random tiny encoder's logits barely vary: standardising them would
    # magnify float noise past the parity tolerance); the no-LLM rows see the mean calibrated score.
    wrapper.mlp.llm_neutral.copy_(scores.mean(dim=0))
    y = torch.from_numpy(targets).float() if multi_label else torch.from_numpy(targets)
    loss_fn = torch.nn.BCEWithLogitsLoss() if multi_label else torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(wrapper.mlp.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    wrapper.mlp.train()
    for _ in range(steps):  # with LLM dropout, as stage 2 trains it: a quarter of the rows see no scores
        present = (torch.rand(len(ml), 1, generator=gen) >= 0.25).float()
        opt.zero_grad()
        loss_fn(wrapper.mlp(ml, None, scores, present), y).backward()
        opt.step()
    wrapper.eval()


def make_fitted_model(tiny_roberta_dir: str, labels: Sequence[str], multi_label: bool,
                      n_validation: int = 40, seed: int = 0) -> FittedModel:
    """Build a fitted-model object from the tiny RoBERTa fixture (no LLM, no `fit`)."""
    labels = list(labels)
    torch.manual_seed(seed)
    encoder, tokenizer = load_encoder(tiny_roberta_dir, labels, multi_label)
    wrapper = FusionWrapper(encoder, FusionMLP(2 * len(labels), len(labels), hidden_dims=[16, 8])).eval()

    train = make_tickets(120, seed=seed + 11, multi_label=multi_label)
    train_texts = [t for t, _ in train]
    targets = encode_targets([y if multi_label else y[0] for _, y in train], labels, multi_label)
    train_raw = raw_scores(train_texts, labels, multi_label)
    calibrator = fit_calibrator(train_raw, targets, multi_label)
    _train_mlp(wrapper, tokenizer, train_texts, calibrator.transform(train_raw), targets, multi_label)

    held = [t for t, _ in make_tickets(n_validation, seed=seed + 23, multi_label=multi_label)]
    settings = LLMSettings(provider="openai-compatible", model="fake", base_url="http://127.0.0.1:9/v1",
                           score_method="json")
    return FittedModel(
        model_=wrapper, tokenizer_=tokenizer, calibrator_=calibrator, labels_=labels, multi_label_=multi_label,
        thresholds_=[0.5] * len(labels) if multi_label else None, max_length_=MAX_LENGTH,
        llm_settings_=settings, metrics_={"fused": {"accuracy": 0.9}, "note": float("nan")},
        validation_={"texts": held, "raw_llm_scores": raw_scores(held, labels, multi_label).tolist()},
    )
