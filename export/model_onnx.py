"""encoder.onnx and fusion.onnx: the FusionWrapper's encoder and its fusion head, traced as two ONNX graphs.

Each graph's contract is data (`GraphSpec`): the names, dtypes and dynamic axes that the exporter,
the parity check, the manifest and the runtime all read. encoder.onnx maps input_ids and
attention_mask to ml_logits; fusion.onnx maps the component logits, the calibrated LLM scores and
llm_present to fused_logits. The legacy TorchScript exporter (`dynamo=False`) is used on purpose:
measured here it reproduces PyTorch to < 1e-7 and its graph ran faster in ONNX Runtime than the
dynamo exporter's. The encoder is traced with eager attention where it supports switching, because
ONNX Runtime's transformer optimizer fuses that pattern into its `Attention` op (it does not
recognise the SDPA graph); the numbers are the same to ~1e-7 and the parity gate checks them
against the model exactly as trained.
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

from textclassify.export import constants as EK
from textclassify.runtime import constants as K
from textclassify.runtime.errors import ExportError

_ORT_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)", "string": "tensor(string)"}


@dataclass(frozen=True)
class GraphSpec:
    """Names and dtypes of one graph's inputs and outputs (all [batch, ...]), plus the opset and fp32 tolerance."""

    inputs: tuple[tuple[str, str], ...] = tuple((name, "int64") for name in K.ENCODER_INPUTS)
    output_names: tuple[str, ...] = (K.ENCODER_OUTPUT,)
    opset: int = EK.ONNX_OPSET
    fp32_tolerance: float = field(default_factory=lambda: EK.FP32_PARITY_TOL)  # read at use, not at import

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.inputs)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Batch is dynamic everywhere; sequence on the token inputs."""
        axes: dict[str, dict[int, str]] = {}
        for name, _ in self.inputs:
            axes[name] = {0: "batch", 1: "sequence"} if name in K.ENCODER_INPUTS else {0: "batch"}
        axes.update({name: {0: "batch"} for name in self.output_names})
        return axes

    def input_dtypes(self) -> dict[str, str]:
        """numpy dtype name of each input."""
        return dict(self.inputs)

    def ort_types(self) -> dict[str, str]:
        """ONNX Runtime's type string of every input and output (for the names/dtypes check)."""
        types = {name: _ORT_TYPES[dtype] for name, dtype in self.inputs}
        types.update({name: "tensor(float)" for name in self.output_names})
        return types


def encoder_spec(opset: int = EK.ONNX_OPSET) -> GraphSpec:
    """encoder.onnx: input_ids, attention_mask (int64 [B, T]) -> ml_logits [B, C]."""
    return GraphSpec(opset=opset)


def fusion_spec(opset: int = EK.ONNX_OPSET, lexical: bool = False) -> GraphSpec:
    """fusion.onnx: ml_logits [, lexical_logits], llm_scores [B, C], llm_present [B, 1] -> fused_logits [B, C]."""
    names = [K.ENCODER_OUTPUT] + ([K.LEXICAL_OUTPUT] if lexical else []) + [K.CALIBRATOR_OUTPUT, K.LLM_PRESENT]
    return GraphSpec(inputs=tuple((n, "float32") for n in names), output_names=(K.FUSED_OUTPUT,), opset=opset)


class EncoderGraph(nn.Module):
    """The module traced into encoder.onnx: the encoder's classification logits."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).logits


class FusionHeadGraph(nn.Module):
    """The module traced into fusion.onnx: the fusion head on component logits, scores and llm_present."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, ml_logits: torch.Tensor, llm_scores: torch.Tensor, llm_present: torch.Tensor,
                lexical_logits: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(ml_logits, lexical_logits, llm_scores, llm_present)


class _FusionHeadWithLexical(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, ml_logits: torch.Tensor, lexical_logits: torch.Tensor, llm_scores: torch.Tensor,
                llm_present: torch.Tensor) -> torch.Tensor:
        return self.head(ml_logits, lexical_logits, llm_scores, llm_present)


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


def sample_inputs(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tracing inputs: the shortest and the longest text, so the traced batch carries padding."""
    if not texts:
        raise ExportError("No texts to trace the model with; give at least one text.")
    by_length = sorted(texts, key=len)
    pair = [by_length[0], by_length[-1]]
    enc = tokenizer(pair, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


def _trace(module: nn.Module, args: tuple[Any, ...], path: str | Path, spec: GraphSpec, what: str) -> onnx.ModelProto:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter about the legacy exporter
        try:
            torch.onnx.export(
                module.eval(), args, str(path), dynamo=False, opset_version=spec.opset,
                input_names=list(spec.input_names), output_names=list(spec.output_names),
                dynamic_axes=spec.dynamic_axes(), do_constant_folding=True,
            )
        except Exception as e:  # noqa: BLE001 -- torch.onnx raises many unrelated types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"torch.onnx.export failed to trace the {what}: {first}") from e
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{Path(path).name} failed onnx.checker: {str(e).splitlines()[0]}") from e
    return model


def export_encoder_onnx(wrapper: nn.Module, tokenizer: Any, path: str | Path, *, texts: Sequence[str],
                        max_length: int, spec: GraphSpec | None = None) -> dict[str, Any]:
    """Trace `wrapper.encoder` to `path` (one self-contained file); returns facts for the manifest."""
    spec = spec or encoder_spec()
    args = sample_inputs(tokenizer, texts, max_length)
    with on_cpu(wrapper), eval_mode(wrapper), eager_attention(wrapper.encoder) as attention:
        model = _trace(EncoderGraph(wrapper.encoder), args, path, spec, "encoder")
    return {"exporter": "torch.onnx.export(dynamo=False)", "opset": spec.opset, "attention": attention,
            "nodes": len(model.graph.node)}


def export_fusion_onnx(head: nn.Module, path: str | Path, *, n_labels: int,
                       spec: GraphSpec | None = None) -> dict[str, Any]:
    """Trace the fusion head to `path`; its inputs in the spec's order (ml_logits [, lexical], scores, present)."""
    lexical = bool(getattr(head, "has_lexical", False))
    spec = spec or fusion_spec(lexical=lexical)
    rows = 2
    logits = torch.zeros(rows, n_labels)
    scores = torch.full((rows, n_labels), 1.0 / n_labels)
    present = torch.tensor([[1.0], [0.0]])
    with on_cpu(head), eval_mode(head):
        if lexical:
            model = _trace(_FusionHeadWithLexical(head), (logits, logits.clone(), scores, present), path, spec,
                           "fusion head")
        else:
            model = _trace(FusionHeadGraph(head), (logits, scores, present), path, spec, "fusion head")
    model = _declare_unused_inputs(model, spec, n_labels)
    onnx.save(model, str(path))
    return {"exporter": "torch.onnx.export(dynamo=False)", "opset": spec.opset, "nodes": len(model.graph.node),
            "components": list(getattr(head, "components", ("ml",)))}


def _declare_unused_inputs(model: onnx.ModelProto, spec: GraphSpec, n_labels: int) -> onnx.ModelProto:
    """The tracer drops inputs a head ignores (a combiner that serves one component alone reads no LLM
    scores); every fusion graph keeps the same inputs, in the spec's order, so the runtime feeds them all."""
    have = {i.name: i for i in model.graph.input}
    if list(have) == list(spec.input_names):
        return model
    ordered = []
    for name in spec.input_names:
        if name in have:
            ordered.append(have[name])
        else:
            width = 1 if name == K.LLM_PRESENT else n_labels
            ordered.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", width]))
    del model.graph.input[:]
    model.graph.input.extend(ordered)
    onnx.checker.check_model(model)
    return model


def as_feeds(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The feed dict of encoder.onnx, with the dtypes the graph declares."""
    ids, mask = K.ENCODER_INPUTS
    return {ids: np.ascontiguousarray(input_ids, dtype=np.int64),
            mask: np.ascontiguousarray(attention_mask, dtype=np.int64)}


def fusion_feeds(ml_logits: np.ndarray, calibrated: np.ndarray, present: np.ndarray,
                 lexical_logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The feed dict of fusion.onnx; `present` [n] of 0/1."""
    feeds = {K.ENCODER_OUTPUT: np.ascontiguousarray(ml_logits, dtype=np.float32),
             K.CALIBRATOR_OUTPUT: np.ascontiguousarray(calibrated, dtype=np.float32),
             K.LLM_PRESENT: np.ascontiguousarray(np.asarray(present, np.float32).reshape(-1, 1))}
    if lexical_logits is not None:
        feeds[K.LEXICAL_OUTPUT] = np.ascontiguousarray(lexical_logits, dtype=np.float32)
    return feeds
