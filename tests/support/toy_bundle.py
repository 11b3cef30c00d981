"""Hand-built format-2 bundles for runtime tests: tiny ONNX graphs whose outputs numpy can recompute exactly.

encoder.onnx: ml_logits = masked mean of E[input_ids] (E: [V, C]). fusion.onnx: with
s = llm_scores * llm_present + neutral * (1 - llm_present), fused_logits = ml_logits * a + s @ W + b +
llm_present * d. calibrator.onnx: log(clip(x, eps, 1)) / T. All are built with `onnx.helper`, so
runtime tests need neither the exporter nor torch; `toy_reference` gives the expected outputs.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

from textclassify.export import constants as EK
from textclassify.runtime import constants as K
from textclassify.runtime.manifest import sha256_file, standard_pipeline


@dataclass(frozen=True)
class ToyWeights:
    """The toy graph's parameters, for recomputing its outputs in numpy."""

    embedding: np.ndarray  # [V, C]
    scale: float
    llm_weight: np.ndarray  # [C, C]
    bias: np.ndarray  # [C]
    temperature: float
    neutral: np.ndarray  # [C]: what a row without LLM scores sees instead
    present_shift: np.ndarray  # [C]: added where llm_present = 1


def toy_weights(vocab_size: int, n_labels: int, seed: int = 0) -> ToyWeights:
    """Random but fixed parameters (float32)."""
    rng = np.random.default_rng(seed)
    return ToyWeights(
        embedding=rng.normal(0, 1, (vocab_size, n_labels)).astype(np.float32), scale=0.7,
        llm_weight=rng.normal(0, 1, (n_labels, n_labels)).astype(np.float32),
        bias=rng.normal(0, 0.1, n_labels).astype(np.float32), temperature=1.5,
        neutral=rng.normal(-1.0, 0.2, n_labels).astype(np.float32),
        present_shift=rng.normal(0, 0.3, n_labels).astype(np.float32),
    )


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", EK.ONNX_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_encoder(w: ToyWeights) -> onnx.ModelProto:
    """encoder.onnx: inputs input_ids, attention_mask [B, T] int64; output ml_logits [B, C]."""
    c = w.embedding.shape[1]
    inits = [
        numpy_helper.from_array(w.embedding, "E"), numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"], axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["denom"]),
        helper.make_node("Div", ["summed", "denom"], ["ml_logits"]),
    ]
    return _finish(helper.make_graph(
        nodes, "toy_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("ml_logits", TensorProto.FLOAT, ["batch", c])], inits,
    ))


def build_fusion(w: ToyWeights) -> onnx.ModelProto:
    """fusion.onnx: ml_logits, llm_scores [B, C], llm_present [B, 1] -> fused_logits [B, C]."""
    c = w.embedding.shape[1]
    inits = [
        numpy_helper.from_array(np.array(w.scale, np.float32), "a"), numpy_helper.from_array(w.llm_weight, "W"),
        numpy_helper.from_array(w.bias, "b"), numpy_helper.from_array(w.neutral, "neutral"),
        numpy_helper.from_array(w.present_shift, "d"), numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Mul", ["llm_scores", "llm_present"], ["kept"]),
        helper.make_node("Sub", ["one", "llm_present"], ["absent"]),
        helper.make_node("Mul", ["neutral", "absent"], ["filled"]),
        helper.make_node("Add", ["kept", "filled"], ["s"]),
        helper.make_node("Mul", ["ml_logits", "a"], ["scaled"]),
        helper.make_node("MatMul", ["s", "W"], ["llm_part"]),
        helper.make_node("Add", ["scaled", "llm_part"], ["pre"]),
        helper.make_node("Add", ["pre", "b"], ["pre_b"]),
        helper.make_node("Mul", ["llm_present", "d"], ["shift"]),
        helper.make_node("Add", ["pre_b", "shift"], ["fused_logits"]),
    ]
    return _finish(helper.make_graph(
        nodes, "toy_fusion",
        [helper.make_tensor_value_info("ml_logits", TensorProto.FLOAT, ["batch", c]),
         helper.make_tensor_value_info("llm_scores", TensorProto.FLOAT, ["batch", c]),
         helper.make_tensor_value_info("llm_present", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("fused_logits", TensorProto.FLOAT, ["batch", c])], inits,
    ))


def build_calibrator(n_labels: int, temperature: float) -> onnx.ModelProto:
    """calibrator.onnx: llm_scores = log(clip(llm_scores_raw, eps, 1)) / T."""
    inits = [numpy_helper.from_array(np.array(K.SCORE_EPS, np.float32), "lo"),
             numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
             numpy_helper.from_array(np.array(temperature, np.float32), "T")]
    nodes = [helper.make_node("Clip", [K.CALIBRATOR_INPUT, "lo", "hi"], ["clipped"]),
             helper.make_node("Log", ["clipped"], ["logs"]),
             helper.make_node("Div", ["logs", "T"], [K.CALIBRATOR_OUTPUT])]
    graph = helper.make_graph(
        nodes, "toy_calibrator",
        [helper.make_tensor_value_info(K.CALIBRATOR_INPUT, TensorProto.FLOAT, ["batch", n_labels])],
        [helper.make_tensor_value_info(K.CALIBRATOR_OUTPUT, TensorProto.FLOAT, ["batch", n_labels])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", EK.ONNX_OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def toy_reference(w: ToyWeights, input_ids: np.ndarray, attention_mask: np.ndarray,
                  raw_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ml_logits and fused_logits (with the LLM) exactly as the toy graphs compute them (float32 numpy)."""
    ml = toy_ml_logits(w, input_ids, attention_mask)
    calibrated = np.log(np.clip(raw_scores.astype(np.float32), K.SCORE_EPS, 1.0)) / np.float32(w.temperature)
    return ml, toy_fuse(w, ml, calibrated, np.ones(len(ml), np.float32))


def toy_ml_logits(w: ToyWeights, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    mask = attention_mask.astype(np.float32)
    summed = (w.embedding[input_ids] * mask[:, :, None]).sum(axis=1)
    return summed / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)


def toy_fuse(w: ToyWeights, ml: np.ndarray, calibrated: np.ndarray, present: np.ndarray) -> np.ndarray:
    """fusion.onnx in numpy; `present` [n] of 0/1."""
    p = np.asarray(present, np.float32)[:, None]
    s = calibrated * p + w.neutral * (np.float32(1.0) - p)
    return ml * np.float32(w.scale) + s @ w.llm_weight + w.bias + p * w.present_shift


def toy_no_llm(w: ToyWeights, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """fused_logits without the LLM (llm_present = 0): what the gate reads and ml_only serves."""
    ml = toy_ml_logits(w, input_ids, attention_mask)
    return toy_fuse(w, ml, np.zeros_like(ml), np.zeros(len(ml), np.float32))


def write_toy_bundle(out_dir: str | Path, tokenizer_json: str | Path, *, labels: list[str], multi_label: bool,
                     llm: dict[str, Any], max_length: int = 64, thresholds: list[float] | None = None,
                     extra_variants: tuple[str, ...] = (), seed: int = 0,
                     gate_threshold: float | None = None) -> ToyWeights:
    """Write a complete, verifiable bundle to `out_dir`; returns the weights for `toy_reference`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    weights = toy_weights(vocab_size, len(labels), seed)
    shutil.copyfile(tokenizer_json, out / K.TOKENIZER_FILE)
    onnx.save(build_encoder(weights), str(out / K.ENCODER_FILE))
    onnx.save(build_fusion(weights), str(out / K.FUSION_FILE))
    onnx.save(build_calibrator(len(labels), weights.temperature), str(out / K.CALIBRATOR_FILE))
    variants = {"fp32": K.ENCODER_FILE}
    for name in extra_variants:  # same graph under another name: enough to test variant selection
        variants[name] = {"int8": K.ENCODER_INT8_FILE, "fp16": K.ENCODER_FP16_FILE}[name]
        shutil.copyfile(out / K.ENCODER_FILE, out / variants[name])
    pad_id = tokenizer.token_to_id("<pad>")
    c = len(labels)
    manifest = {
        "format": "textclassify-bundle", "format_version": K.BUNDLE_FORMAT_VERSION,
        "task": "multi_label" if multi_label else "multi_class", "labels": labels, "thresholds": thresholds,
        "max_length": max_length,
        "tokenizer": {"file": K.TOKENIZER_FILE, "pad_token": "<pad>", "pad_token_id": pad_id,
                      "truncation": True, "padding": "longest"},
        "pipeline": standard_pipeline(c),
        "gate": {"rule": "label_distance" if multi_label else "top_probability", "threshold": gate_threshold},
        "calibrator": {"kind": "temperature"},
        "variants": variants, "llm": llm, "metrics": {}, "parity": {}, "versions": {"opset": EK.ONNX_OPSET},
        "created_at": "2026-01-01T00:00:00Z",
    }
    write_manifest(out, manifest)
    return weights


def write_manifest(bundle_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json with a fresh 'files' entry (sha256 and size) for every other file in the dir."""
    out = Path(bundle_dir)
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(out.iterdir()) if p.name != K.MANIFEST_FILE and p.is_file()}
    (out / K.MANIFEST_FILE).write_text(json.dumps({**manifest, "files": files}, indent=2), encoding="utf-8")


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """manifest.json as a dict (for tests that alter it)."""
    return json.loads((Path(bundle_dir) / K.MANIFEST_FILE).read_text(encoding="utf-8"))
