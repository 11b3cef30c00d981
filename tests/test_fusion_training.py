"""Stage 2: FusionWrapper outputs, the two learning rates, warm-up and best-state selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.data import LABELS, keyword_scores, make_tickets
from textclassify.train.encoder import encoder_logits, load_encoder
from textclassify.train.fusion_model import FusionMLP, FusionWrapper
from textclassify.train.fusion_training import build_joint_optimizer, predict_fused_logits, train_fusion, wrapper_loss

FUSION = {"hidden_dims": [16, 8], "dropout": 0.0, "ml_lr": 1e-5, "fusion_lr": 1e-3, "num_epochs": 2,
          "batch_size": 16, "warmup_epochs": 200, "val_split": 0.25, "early_stopping_patience": 3}


def test_wrapper_outputs_and_detached_scores(tiny_roberta_dir):
    """forward returns ml_logits, detached llm_scores and fused_logits of shape [B, C]."""
    encoder, tok = load_encoder(tiny_roberta_dir, LABELS, False)
    wrapper = FusionWrapper(encoder, FusionMLP(6, 3, [8]))
    enc = tok(["ticket 1: refund please", "ticket 2: crash"], padding=True, return_tensors="pt")
    scores = torch.rand(2, 3, requires_grad=True)
    out = wrapper(enc["input_ids"], enc["attention_mask"], scores)
    assert out.ml_logits.shape == out.fused_logits.shape == (2, 3)
    assert not out.llm_scores.requires_grad
    out.fused_logits.sum().backward()
    assert scores.grad is None


def test_joint_optimizer_has_two_learning_rates(tiny_roberta_dir):
    """The encoder's parameters train at ml_lr and the MLP's at fusion_lr, and together cover the wrapper."""
    encoder, _ = load_encoder(tiny_roberta_dir, LABELS, False)
    wrapper = FusionWrapper(encoder, FusionMLP(6, 3, [8]))
    opt = build_joint_optimizer(wrapper, ml_lr=1e-5, fusion_lr=1e-3)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["encoder"]["lr"] == 1e-5 and groups["fusion_mlp"]["lr"] == 1e-3
    enc_ids = {id(p) for p in groups["encoder"]["params"]}
    mlp_ids = {id(p) for p in groups["fusion_mlp"]["params"]}
    assert enc_ids == {id(p) for p in wrapper.encoder.parameters()}
    assert mlp_ids == {id(p) for p in wrapper.mlp.parameters()}
    assert not enc_ids & mlp_ids


def test_train_fusion_learns_from_llm_scores(tiny_roberta_dir):
    """With an untrained encoder the fused model still learns the LLM's signal."""
    torch.set_num_threads(1)
    rows = make_tickets(160, seed=3)
    texts = [t for t, _ in rows]
    y = np.array([LABELS.index(ls[0]) for _, ls in rows])
    scores = np.array([[keyword_scores(t)[lab] for lab in LABELS] for t in texts], dtype=np.float32)
    encoder, tok = load_encoder(tiny_roberta_dir, LABELS, False)
    logits = encoder_logits(encoder, tok, texts, 32)
    tr, va = slice(0, 120), slice(120, 160)
    wrapper, hist = train_fusion(
        encoder, tok, train_texts=texts[tr], train_scores=scores[tr], train_targets=y[tr], train_logits=logits[tr],
        val_texts=texts[va], val_scores=scores[va], val_targets=y[va], val_logits=logits[va], multi_label=False,
        fusion=FUSION, max_length=32, seed=0, progress=False)
    assert 1 <= len(hist.warmup.val) <= 200 and 1 <= len(hist.joint.val) <= 2
    # the wrapper returned is the state with the lowest fusion-val loss among warm-up and joint epochs
    kept_loss = wrapper_loss(wrapper, tok, texts[va], scores[va], y[va], multi_label=False, max_length=32,
                             batch_size=32)
    assert kept_loss == pytest.approx(min(hist.warmup.val + hist.joint.val), abs=1e-4)
    llm_acc = (scores[va].argmax(1) == y[va]).mean()
    fused = predict_fused_logits(wrapper, tok, texts[va], scores[va], max_length=32)[1].argmax(1)
    assert (fused == y[va]).mean() >= llm_acc - 0.1
