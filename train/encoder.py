"""Stage 1: load any Hugging Face encoder and fine-tune it (CE or BCE), with early stopping."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from textclassify.runtime.errors import ConfigError
from textclassify.train.early_stopping import EarlyStopping

log = logging.getLogger(__name__)

# Model types whose position ids start after the padding index (max_length must leave 2 positions).
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "bart", "mpnet"}


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_encoder(ml_model: str, labels: Sequence[str], multi_label: bool) -> tuple[nn.Module, Any]:
    """AutoModelForSequenceClassification + AutoTokenizer from a hub name or local path, sized to `labels`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = os.path.expanduser(ml_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the fresh classification head is expected, not news
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=len(labels), ignore_mismatched_sizes=True,
                problem_type="multi_label_classification" if multi_label else "single_label_classification",
                id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"ml_model: cannot load {ml_model!r} (neither a local model folder nor reachable on the hub): "
            f"{str(e).splitlines()[0]}"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"ml_model: {ml_model!r} has no fast tokenizer (tokenizer.json); the bundle needs one.")
    return model, tokenizer


def position_limit(model: nn.Module) -> int | None:
    """The longest input the encoder's position embeddings allow (RoBERTa-like models reserve two)."""
    cfg = getattr(model, "config", None)
    limit = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    return limit - 2 if getattr(cfg, "model_type", None) in _OFFSET_POSITION_MODELS else limit


def effective_max_length(model: nn.Module, tokenizer: Any, requested: int) -> int:
    """The requested max_length, capped at what the encoder's position embeddings allow."""
    cfg = model.config
    limit = position_limit(model)
    if limit is None:
        return requested
    if requested > limit:
        log.warning("ml.max_length=%d exceeds what %s supports (%d); using %d.", requested, cfg.model_type,
                    limit, limit)
        return int(limit)
    return requested


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Encoder inputs exactly as training and export expect them (truncate, pad to the longest)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def shuffled_batches(tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int,
                     generator: torch.Generator, device: torch.device) -> Iterator[tuple[list[int], dict]]:
    """One epoch of (row indices, encoder inputs on `device`) in a seeded random order."""
    order = torch.randperm(len(texts), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenize(tokenizer, [texts[i] for i in idx], max_length)
        yield idx, {k: v.to(device) for k, v in batch.items()}


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: Any) -> None:
    """Backward pass, gradient clipping at norm 1, one optimizer step.

    foreach: one call over all the gradients instead of one a tensor; on CPU the same per-tensor kernels run (the
    result is bit for bit the same) for less Python overhead, which is most of a small fusion head's step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    optimizer.step()


def loss_function(multi_label: bool) -> nn.Module:
    return nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()


def targets_tensor(targets: np.ndarray, multi_label: bool) -> torch.Tensor:
    return torch.as_tensor(targets, dtype=torch.float32 if multi_label else torch.long)


@torch.no_grad()
def encoder_logits(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int,
                   batch_size: int = 32, device: torch.device | None = None) -> np.ndarray:
    """Logits [n, C] of the encoder alone, in eval mode, batched."""
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = {k: v.to(device) for k, v in tokenize(tokenizer, texts[start:start + batch_size], max_length).items()}
        out.append(model(**batch).logits.float().cpu().numpy())
    n_labels = model.config.num_labels
    return np.concatenate(out) if out else np.zeros((0, n_labels), dtype=np.float32)


@dataclass
class StageHistory:
    """Losses and validation macro-F1 per evaluation (every `eval_every` optimizer steps); the kept evaluation."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_macro_f1: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    best_epoch: int = -1  # index of the kept evaluation (one per epoch when eval_every is an epoch)
    steps_run: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def macro_f1_of_logits(logits: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """Macro-F1 of the encoder's decisions (argmax, or sigmoid >= 0.5 per label) against targets."""
    from textclassify.runtime.metrics import classification_metrics

    n_labels = logits.shape[1]
    pred = (logits >= 0).astype(np.int64) if multi_label else logits.argmax(axis=1)
    return float(classification_metrics(targets, pred, [str(i) for i in range(n_labels)], multi_label)["macro_f1"])


def train_encoder(model: nn.Module, tokenizer: Any, train_texts: Sequence[str], train_targets: np.ndarray,
                  val_texts: Sequence[str], val_targets: np.ndarray, *, multi_label: bool, ml: dict[str, Any],
                  max_length: int, seed: int, progress: bool = True, plan: Any = None) -> StageHistory:
    """Fine-tune in place with AdamW + linear warm-up/decay over the plan's step budget.

    Evaluates every `plan.eval_every` steps and keeps the state with the best validation macro-F1
    (ties: lower loss); stops after `plan.patience` evaluations without a better one. `plan` defaults to
    `train.schedule.plan_stage1` on `ml` ("auto" values chosen from the encoder and the data).
    """
    from transformers import get_linear_schedule_with_warmup

    if plan is None:
        from textclassify.train.schedule import plan_stage1

        plan = plan_stage1(ml, model, len(train_texts))
    device = pick_device()
    model.to(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = loss_function(multi_label)
    y_train = targets_tensor(train_targets, multi_label)
    batch_size, steps = ml["batch_size"], plan.max_steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate, weight_decay=ml["weight_decay"],
                                  foreach=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(ml["warmup_ratio"] * steps), steps)
    history, stopper = StageHistory(), EarlyStopping(plan.patience)  # best by (macro-F1, -loss)
    bar = tqdm(total=steps, desc="stage 1: encoder", disable=not progress, unit="step", leave=False)
    total, seen, step, stop = 0.0, 0, 0, False
    while step < steps and not stop:
        model.train()
        for idx, batch in shuffled_batches(tokenizer, train_texts, batch_size, max_length, gen, device):
            with _autocast(device):
                logits = model(**batch).logits
            loss = loss_fn(logits.float(), y_train[idx].to(device))
            optimizer_step(optimizer, loss, model.parameters())
            scheduler.step()
            step += 1
            total, seen = total + loss.item() * len(idx), seen + len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % plan.eval_every and step < steps:
                continue
            val_logits = encoder_logits(model, tokenizer, val_texts, max_length, max(batch_size, 32))
            val_loss = float(loss_fn(torch.as_tensor(val_logits), targets_tensor(val_targets, multi_label)))
            f1 = macro_f1_of_logits(val_logits, val_targets, multi_label) if len(val_texts) else 0.0
            history.train_loss.append(total / max(1, seen))
            history.val_loss.append(val_loss)
            history.val_macro_f1.append(f1)
            history.eval_steps.append(step)
            total, seen = 0.0, 0
            model.train()
            if stopper.update((f1, -val_loss), model):
                history.best_epoch = len(history.val_loss) - 1
            stop = stopper.stop
            if stop or step >= steps:
                break
    history.steps_run = step
    bar.close()
    stopper.restore(model)
    model.eval()
    return history


@torch.no_grad()
def evaluate_loss(model: nn.Module, tokenizer: Any, texts: Sequence[str], targets: np.ndarray,
                  multi_label: bool, max_length: int, batch_size: int) -> float:
    """Mean loss of the encoder alone on a labelled slice."""
    if len(texts) == 0:
        return float("nan")
    logits = torch.as_tensor(encoder_logits(model, tokenizer, texts, max_length, batch_size))
    return float(loss_function(multi_label)(logits, targets_tensor(targets, multi_label)))
