"""model_onnx: the graph spec and the traced FusionWrapper (one graph, dynamic batch and sequence)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.support.data import LABELS, make_tickets
from textclassify.export.model_onnx import GraphSpec, as_feeds, eager_attention, export_model_onnx
from textclassify.runtime.errors import ExportError
from textclassify.train.encoder import load_encoder
from textclassify.train.fusion_model import FusionMLP, FusionWrapper


@pytest.fixture(scope="module")
def wrapper_and_tokenizer(tiny_roberta_dir):
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(tiny_roberta_dir, LABELS, False)
    return FusionWrapper(encoder, FusionMLP(6, 3, hidden_dims=[8])).eval(), tokenizer


def test_spec_names_axes_and_manifest_blocks():
    """The spec is the single source of names, dtypes and dynamic axes."""
    spec = GraphSpec()
    assert spec.dynamic_axes() == {"input_ids": {0: "batch", 1: "sequence"},
                                   "attention_mask": {0: "batch", 1: "sequence"}, "llm_scores": {0: "batch"},
                                   "ml_logits": {0: "batch"}, "fused_logits": {0: "batch"}}
    inputs, outputs = spec.manifest_io(4)
    assert inputs["llm_scores"] == {"dtype": "float32", "shape": ["batch", 4]}
    assert outputs == {"ml_logits": {"dtype": "float32", "shape": ["batch", 4]},
                       "fused_logits": {"dtype": "float32", "shape": ["batch", 4]}}
    assert (spec.opset, spec.fp32_tolerance) == (17, 1e-4)


def test_traced_graph_is_one_graph_with_dynamic_batch_and_sequence(wrapper_and_tokenizer, tmp_path):
    """model.onnx reproduces the wrapper at batch sizes and lengths other than the traced ones."""
    torch.set_num_threads(1)
    wrapper, tok = wrapper_and_tokenizer
    texts = [t for t, _ in make_tickets(9, seed=4)]
    facts = export_model_onnx(wrapper, tok, tmp_path / "m.onnx", texts=texts[:2], max_length=64, n_labels=3)
    assert facts["attention"] == "eager" and facts["opset"] == 17
    assert wrapper.encoder.config._attn_implementation == "sdpa"  # restored after tracing
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "llm_scores"]
    assert [o.name for o in model.graph.output] == ["ml_logits", "fused_logits"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (texts[:1], texts[2:9]):
        enc = tok(batch, truncation=True, max_length=64, padding=True, return_tensors="pt")
        scores = torch.rand(len(batch), 3)
        with torch.no_grad():
            want = wrapper(enc["input_ids"], enc["attention_mask"], scores)
        got = session.run(None, as_feeds(enc["input_ids"].numpy(), enc["attention_mask"].numpy(), scores.numpy()))
        assert np.abs(got[0] - want.ml_logits.numpy()).max() < 1e-5
        assert np.abs(got[1] - want.fused_logits.numpy()).max() < 1e-5


def test_eager_attention_is_a_no_op_for_modules_without_a_switch():
    """Modules that cannot switch attention are traced as they are."""
    with eager_attention(torch.nn.Linear(2, 2)) as used:
        assert used == "None"


def test_no_texts_is_a_clear_error(wrapper_and_tokenizer, tmp_path):
    """Tracing needs at least one example text."""
    wrapper, tok = wrapper_and_tokenizer
    with pytest.raises(ExportError) as info:
        export_model_onnx(wrapper, tok, tmp_path / "m.onnx", texts=[], max_length=64, n_labels=3)
    assert str(info.value) == "No texts to trace the model with; give at least one text."
