"""Stage 2: warm up the FusionMLP on frozen out-of-sample logits, then fine-tune encoder + MLP jointly.

The state kept is the best on fusion-val among the warm-up result and every joint epoch: joint
training makes the encoder's logits in-sample, which can teach the MLP to over-trust them.
LLM dropout: in every training batch each row loses its LLM scores with probability
`fusion.llm_dropout` (llm_present = 0, neutral scores), so the same head also answers without the
LLM (the gate's no-LLM answer and on_llm_error="ml_only"). The fusion-val loss that chooses the kept
state weighs the two ways as training does: (1 - p) * loss with the LLM + p * loss without it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from textclassify.train.early_stopping import EarlyStopping, snapshot
from textclassify.train.encoder import (
    loss_function,
    optimizer_step,
    pick_device,
    shuffled_batches,
    targets_tensor,
    tokenize,
)
from textclassify.train.fusion_model import FusionMLP, FusionWrapper, present_column

LOSS_MIN_DELTA = 1e-7  # a validation loss must drop by more than this to count as better


@dataclass
class LossCurve:
    """Mean training loss and validation loss, one pair per epoch of a phase."""

    train: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)


@dataclass
class FusionHistory:
    """The loss curve of each phase (the MLP warm-up, joint fine-tuning) and where the kept state came from."""

    warmup: LossCurve = field(default_factory=LossCurve)
    joint: LossCurve = field(default_factory=LossCurve)
    kept: str = "warmup"
    param_group_lrs: dict[str, float] = field(default_factory=dict)


def build_joint_optimizer(wrapper: FusionWrapper, ml_lr: float, fusion_lr: float,
                          weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW with two parameter groups: the encoder at `ml_lr`, the fusion MLP at `fusion_lr`."""
    return torch.optim.AdamW([
        {"params": list(wrapper.encoder.parameters()), "lr": ml_lr, "name": "encoder"},
        {"params": list(wrapper.mlp.parameters()), "lr": fusion_lr, "name": "fusion_mlp"},
    ], weight_decay=weight_decay, foreach=True)


def head_on_features(mlp: FusionMLP, features: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """The head on concat(component logits, calibrated scores) columns; `present` [n, 1] (default: all 1)."""
    c = mlp.output_dim
    ml = features[:, :c]
    lexical = features[:, c:2 * c] if mlp.has_lexical else None
    scores = features[:, -c:]
    if present is None:
        present = present_column(len(features), 1.0, features)
    return mlp(ml, lexical, scores, present)


def dropout_mask(n: int, p: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """llm_present [n, 1]: 0 with probability p per row (LLM dropout), else 1."""
    if p <= 0:
        return present_column(n, 1.0, like)
    keep = (torch.rand(n, 1, generator=generator) >= p).to(dtype=like.dtype)
    return keep.to(like.device)


def _mlp_loss(mlp: FusionMLP, features: torch.Tensor, targets: torch.Tensor, multi_label: bool,
              llm_dropout: float = 0.0) -> float:
    """(1 - p) * loss with the LLM + p * loss without it (p = llm_dropout), eval mode."""
    mlp.eval()
    loss_fn = loss_function(multi_label)
    with torch.no_grad():
        with_llm = float(loss_fn(head_on_features(mlp, features), targets))
        if llm_dropout <= 0:
            return with_llm
        absent = present_column(len(features), 0.0, features)
        without = float(loss_fn(head_on_features(mlp, features, absent), targets))
    return (1.0 - llm_dropout) * with_llm + llm_dropout * without


def warm_up_mlp(mlp: FusionMLP, train_features: np.ndarray, train_targets: np.ndarray,
                val_features: np.ndarray, val_targets: np.ndarray, *, multi_label: bool, lr: float,
                epochs: int, batch_size: int, seed: int, history: FusionHistory, patience: int = 20,
                llm_dropout: float = 0.0) -> float:
    """Train the MLP alone on concat(stage-1 logits, calibrated scores) with LLM dropout; keeps its best val state."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_tr = torch.as_tensor(train_features, dtype=torch.float32)
    x_va = torch.as_tensor(val_features, dtype=torch.float32)
    y_tr, y_va = targets_tensor(train_targets, multi_label), targets_tensor(val_targets, multi_label)
    loss_fn = loss_function(multi_label)
    mlp.set_feature_scaling(x_tr)
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=0.01, foreach=True)  # see optimizer_step
    stopper = EarlyStopping(patience, min_delta=LOSS_MIN_DELTA, best=float("-inf"),
                            best_state=snapshot(mlp))  # scores are -loss
    for _ in range(epochs):
        mlp.train()
        order = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            present = dropout_mask(len(idx), llm_dropout, gen, x_tr)
            loss = loss_fn(head_on_features(mlp, x_tr[idx], present), y_tr[idx])
            optimizer_step(optimizer, loss, mlp.parameters())  # clipped like every other training step
            total += loss.item() * len(idx)
        history.warmup.train.append(total / max(1, len(order)))
        val = _mlp_loss(mlp, x_va, y_va, multi_label, llm_dropout)
        history.warmup.val.append(val)
        stopper.update(-val, mlp)
        if stopper.stop:
            break
    stopper.restore(mlp)
    mlp.eval()
    return -stopper.best


@torch.no_grad()
def wrapper_loss(wrapper: FusionWrapper, tokenizer: Any, texts: Sequence[str], scores: np.ndarray,
                 targets: np.ndarray, *, multi_label: bool, max_length: int, batch_size: int,
                 llm_dropout: float = 0.0) -> float:
    """(1 - p) * fused loss with the LLM + p * without it, of the whole wrapper on a labelled slice (eval mode)."""
    ml, fused = predict_fused_logits(wrapper, tokenizer, texts, scores, max_length=max_length, batch_size=batch_size)
    loss_fn, y = loss_function(multi_label), targets_tensor(targets, multi_label)
    with_llm = float(loss_fn(torch.as_tensor(fused), y))
    if llm_dropout <= 0:
        return with_llm
    without = float(loss_fn(torch.as_tensor(no_llm_logits(wrapper, ml)), y))
    return (1.0 - llm_dropout) * with_llm + llm_dropout * without


@torch.no_grad()
def no_llm_logits(wrapper: FusionWrapper, ml_logits: np.ndarray,
                  lexical_logits: np.ndarray | None = None) -> np.ndarray:
    """The head's answer without the LLM (llm_present = 0) for given component logits [n, C]."""
    wrapper.eval()
    device = next(wrapper.parameters()).device
    ml = torch.as_tensor(np.asarray(ml_logits, dtype=np.float32), device=device)
    lexical = None if lexical_logits is None else torch.as_tensor(np.asarray(lexical_logits, np.float32),
                                                                  device=device)
    out = wrapper.mlp(ml, lexical, None, None)
    return out.float().cpu().numpy()


@torch.no_grad()
def head_logits(wrapper: FusionWrapper, ml_logits: np.ndarray, calibrated: np.ndarray,
                present: np.ndarray) -> np.ndarray:
    """The fusion head on given encoder logits and calibrated scores [n, C], llm_present [n] of 0/1."""
    wrapper.eval()
    device = next(wrapper.parameters()).device
    ml = torch.as_tensor(np.asarray(ml_logits, dtype=np.float32), device=device)
    scores = torch.as_tensor(np.asarray(calibrated, dtype=np.float32), device=device)
    p = torch.as_tensor(np.asarray(present, dtype=np.float32).reshape(-1, 1), device=device)
    return wrapper.mlp(ml, None, scores, p).float().cpu().numpy()


@torch.no_grad()
def predict_fused_logits(wrapper: FusionWrapper, tokenizer: Any, texts: Sequence[str], scores: np.ndarray, *,
                         max_length: int, batch_size: int = 32,
                         llm_present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ml_logits, fused_logits) [n, C] for texts and their calibrated LLM scores (llm_present [n] or all 1)."""
    wrapper.eval()
    device = next(wrapper.parameters()).device
    ml, fused = [], []
    for start in range(0, len(texts), batch_size):
        batch = {k: v.to(device) for k, v in tokenize(tokenizer, texts[start:start + batch_size], max_length).items()}
        s = torch.as_tensor(scores[start:start + batch_size], dtype=torch.float32, device=device)
        present = None
        if llm_present is not None:
            present = torch.as_tensor(np.asarray(llm_present[start:start + batch_size], np.float32).reshape(-1, 1),
                                      device=device)
        out = wrapper(batch["input_ids"], batch["attention_mask"], s, present)
        ml.append(out.ml_logits.float().cpu().numpy())
        fused.append(out.fused_logits.float().cpu().numpy())
    c = wrapper.mlp.output_dim
    empty = np.zeros((0, c), dtype=np.float32)
    return (np.concatenate(ml) if ml else empty), (np.concatenate(fused) if fused else empty)


def train_fusion(encoder: torch.nn.Module, tokenizer: Any, *, train_texts: Sequence[str], train_scores: np.ndarray,
                 train_targets: np.ndarray, train_logits: np.ndarray, val_texts: Sequence[str],
                 val_scores: np.ndarray, val_targets: np.ndarray, val_logits: np.ndarray, multi_label: bool,
                 fusion: dict[str, Any], max_length: int, seed: int,
                 progress: bool = True) -> tuple[FusionWrapper, FusionHistory]:
    """The whole stage 2: warm-up on frozen logits, then joint dual-LR training, best state on fusion-val."""
    n_labels = train_scores.shape[1]
    p_drop = float(fusion.get("llm_dropout", 0.0))
    torch.manual_seed(seed)
    mlp = FusionMLP(2 * n_labels, n_labels, fusion["hidden_dims"], fusion["dropout"])
    history = FusionHistory()
    best = warm_up_mlp(
        mlp, np.hstack([train_logits, train_scores]), train_targets, np.hstack([val_logits, val_scores]),
        val_targets, multi_label=multi_label, lr=fusion["fusion_lr"], epochs=fusion["warmup_epochs"],
        batch_size=fusion["batch_size"], seed=seed, history=history, llm_dropout=p_drop,
    )
    wrapper = FusionWrapper(encoder, mlp).to(pick_device())
    stopper = EarlyStopping(fusion["early_stopping_patience"], min_delta=LOSS_MIN_DELTA, best=-best,
                            best_state=snapshot(wrapper))  # the warm-up result to beat
    optimizer = build_joint_optimizer(wrapper, fusion["ml_lr"], fusion["fusion_lr"])
    history.param_group_lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    loss_fn = loss_function(multi_label)
    y_train = targets_tensor(train_targets, multi_label)
    gen = torch.Generator().manual_seed(seed + 1)
    drop_gen = torch.Generator().manual_seed(seed + 2)
    device = pick_device()
    bs = fusion["batch_size"]
    bar = tqdm(total=fusion["num_epochs"], desc="stage 2: joint", disable=not progress, unit="epoch", leave=False)
    for epoch in range(fusion["num_epochs"]):
        wrapper.train()
        total = 0.0
        for idx, batch in shuffled_batches(tokenizer, train_texts, bs, max_length, gen, device):
            s = torch.as_tensor(train_scores[idx], dtype=torch.float32, device=device)
            present = dropout_mask(len(idx), p_drop, drop_gen, s)
            out = wrapper(batch["input_ids"], batch["attention_mask"], s, present)
            loss = loss_fn(out.fused_logits.float(), y_train[idx].to(device))
            optimizer_step(optimizer, loss, wrapper.parameters())
            total += loss.item() * len(idx)
        history.joint.train.append(total / max(1, len(train_texts)))
        val = wrapper_loss(wrapper, tokenizer, val_texts, val_scores, val_targets, multi_label=multi_label,
                           max_length=max_length, batch_size=max(bs, 32), llm_dropout=p_drop)
        history.joint.val.append(val)
        bar.update(1)
        bar.set_postfix(val_loss=f"{val:.3f}")
        if stopper.update(-val, wrapper):
            history.kept = f"joint epoch {epoch + 1}"
        elif stopper.stop:
            break
    bar.close()
    stopper.restore(wrapper)
    wrapper.eval()
    return wrapper, history
