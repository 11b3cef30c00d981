"""model.onnx: the whole FusionWrapper (encoder + FusionMLP) traced into one ONNX graph.

The graph's contract is data (`GraphSpec`): the names, dtypes and dynamic axes that the exporter,
the parity check, the manifest and the runtime all read. The legacy TorchScript exporter
(`dynamo=False`) is used on purpose: measured here it reproduces PyTorch to < 1e-7 and its graph
ran faster in ONNX Runtime than the dynamo exporter's. The encoder is traced with eager attention
where it supports switching, because ONNX Runtime's transformer optimizer fuses that pattern into
its `Attention` op (it does not recognise the SDPA graph); the numbers are the same to ~1e-7 and
the parity gate checks them against the model exactly as trained.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from textclassify.runtime import constants as K
from textclassify.runtime.errors import ExportError


@dataclass(frozen=True)
class GraphSpec:
    """Names, dtypes and dynamic axes of model.onnx, plus the opset and the fp32 parity tolerance."""

    input_names: tuple[str, ...] = K.INPUT_NAMES
    output_names: tuple[str, ...] = K.OUTPUT_NAMES
    opset: int = K.ONNX_OPSET
    fp32_tolerance: float = field(default_factory=lambda: K.FP32_PARITY_TOL)  # read at use, not at import

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Batch is dynamic everywhere; sequence on the token inputs."""
        ids, mask, scores = self.input_names
        axes: dict[str, dict[int, str]] = {ids: {0: "batch", 1: "sequence"}, mask: {0: "batch", 1: "sequence"},
                                           scores: {0: "batch"}}
        axes.update({name: {0: "batch"} for name in self.output_names})
        return axes

    def input_dtypes(self) -> dict[str, str]:
        """numpy dtype name of each input."""
        ids, mask, scores = self.input_names
        return {ids: "int64", mask: "int64", scores: "float32"}

    def manifest_io(self, n_labels: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The manifest's "inputs" and "outputs" blocks."""
        ids, mask, scores = self.input_names
        inputs = {ids: {"dtype": "int64", "shape": ["batch", "sequence"]},
                  mask: {"dtype": "int64", "shape": ["batch", "sequence"]},
                  scores: {"dtype": "float32", "shape": ["batch", n_labels]}}
        outputs = {name: {"dtype": "float32", "shape": ["batch", n_labels]} for name in self.output_names}
        return inputs, outputs

    def ort_types(self) -> dict[str, str]:
        """ONNX Runtime's type string of every input and output (for the names/dtypes check)."""
        names = {"int64": "tensor(int64)", "float32": "tensor(float)"}
        types = {name: names[dtype] for name, dtype in self.input_dtypes().items()}
        types.update({name: "tensor(float)" for name in self.output_names})
        return types


class FusionGraph(nn.Module):
    """The module that is traced: FusionWrapper's forward, returning (ml_logits, fused_logits) only."""

    def __init__(self, wrapper: nn.Module) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                llm_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.wrapper(input_ids, attention_mask, llm_scores)
        return out.ml_logits, out.fused_logits


@contextlib.contextmanager
def eager_attention(encoder: nn.Module) -> Iterator[str]:
    """Switch a transformers encoder to eager attention for tracing; restore its own afterwards."""
    config = getattr(encoder, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = getattr(encoder, "set_attn_implementation", None)
    if before in (None, "eager") or switch is None:
        yield str(before)
        return
    try:
        switch("eager")
    except (ValueError, ImportError, AttributeError):  # the model cannot run eager attention: trace as it is
        yield str(before)
        return
    try:
        yield "eager"
    finally:
        switch(before)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put a module in eval mode and restore its training flag afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@contextlib.contextmanager
def on_cpu(module: nn.Module) -> Iterator[nn.Module]:
    """Run a module on the CPU (export and parity are CPU work) and move it back afterwards."""
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if device.type != "cpu":
        module.to("cpu")
    try:
        yield module
    finally:
        if device.type != "cpu":
            module.to(device)


def sample_inputs(tokenizer: Any, texts: Sequence[str], max_length: int,
                  n_labels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tracing inputs: the shortest and the longest text, so the traced batch carries padding."""
    if not texts:
        raise ExportError("No texts to trace the model with; give at least one text.")
    by_length = sorted(texts, key=len)
    pair = [by_length[0], by_length[-1]]
    enc = tokenizer(pair, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    scores = torch.full((len(pair), n_labels), 1.0 / n_labels, dtype=torch.float32)
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64), scores


def export_model_onnx(wrapper: nn.Module, tokenizer: Any, path: str | Path, *, texts: Sequence[str],
                      max_length: int, n_labels: int, spec: GraphSpec = GraphSpec()) -> dict[str, Any]:
    """Trace `wrapper` to `path` (one self-contained file); returns facts for the manifest."""
    args = sample_inputs(tokenizer, texts, max_length, n_labels)
    with on_cpu(wrapper), eval_mode(wrapper), eager_attention(wrapper.encoder) as attention, torch.no_grad(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter about the legacy exporter
        try:
            torch.onnx.export(
                FusionGraph(wrapper).eval(), args, str(path), dynamo=False, opset_version=spec.opset,
                input_names=list(spec.input_names), output_names=list(spec.output_names),
                dynamic_axes=spec.dynamic_axes(), do_constant_folding=True,
            )
        except Exception as e:  # noqa: BLE001 -- torch.onnx raises many unrelated types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"torch.onnx.export failed to trace the model: {first}") from e
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"model.onnx failed onnx.checker: {str(e).splitlines()[0]}") from e
    return {"exporter": "torch.onnx.export(dynamo=False)", "opset": spec.opset, "attention": attention,
            "nodes": len(model.graph.node)}


def as_feeds(input_ids: np.ndarray, attention_mask: np.ndarray, llm_scores: np.ndarray,
             spec: GraphSpec = GraphSpec()) -> dict[str, np.ndarray]:
    """The feed dict of model.onnx, with the dtypes the graph declares."""
    ids, mask, scores = spec.input_names
    return {ids: np.ascontiguousarray(input_ids, dtype=np.int64),
            mask: np.ascontiguousarray(attention_mask, dtype=np.int64),
            scores: np.ascontiguousarray(llm_scores, dtype=np.float32)}
