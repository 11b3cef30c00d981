"""model_onnx: the graph specs and the traced encoder and fusion head (dynamic batch and sequence)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.support.data import LABELS, make_tickets
from textclassify.export.model_onnx import (
    as_feeds,
    eager_attention,
    encoder_spec,
    export_encoder_onnx,
    export_fusion_onnx,
    fusion_feeds,
    fusion_spec,
)
from textclassify.runtime.errors import ExportError
from textclassify.train.encoder import load_encoder
from textclassify.train.fusion_model import FusionMLP, FusionWrapper


@pytest.fixture(scope="module")
def wrapper_and_tokenizer(tiny_roberta_dir):
    torch.manual_seed(0)
    encoder, tokenizer = load_encoder(tiny_roberta_dir, LABELS, False)
    mlp = FusionMLP(6, 3, hidden_dims=[8])
    mlp.set_feature_scaling(torch.randn(20, 6))  # a non-zero neutral score for rows without the LLM
    return FusionWrapper(encoder, mlp).eval(), tokenizer


def test_specs_name_inputs_outputs_and_axes():
    """The specs are the single source of names, dtypes and dynamic axes of both graphs."""
    enc, fus = encoder_spec(), fusion_spec()
    assert enc.dynamic_axes() == {"input_ids": {0: "batch", 1: "sequence"},
                                  "attention_mask": {0: "batch", 1: "sequence"}, "ml_logits": {0: "batch"}}
    assert fus.input_names == ("ml_logits", "llm_scores", "llm_present") and fus.output_names == ("fused_logits",)
    assert fusion_spec(lexical=True).input_names == ("ml_logits", "lexical_logits", "llm_scores", "llm_present")
    assert fus.ort_types()["llm_present"] == "tensor(float)"
    assert (enc.opset, enc.fp32_tolerance) == (17, 1e-4)


def test_traced_graphs_compose_to_the_wrapper_with_and_without_the_llm(wrapper_and_tokenizer, tmp_path):
    """encoder.onnx then fusion.onnx reproduce the wrapper (llm_present 1 and 0) at untraced sizes."""
    torch.set_num_threads(1)
    wrapper, tok = wrapper_and_tokenizer
    texts = [t for t, _ in make_tickets(9, seed=4)]
    facts = export_encoder_onnx(wrapper, tok, tmp_path / "e.onnx", texts=texts[:2], max_length=64)
    export_fusion_onnx(wrapper.mlp, tmp_path / "f.onnx", n_labels=3)
    assert facts["attention"] == "eager" and facts["opset"] == 17
    assert wrapper.encoder.config._attn_implementation == "sdpa"  # restored after tracing
    enc_graph, fus_graph = onnx.load(str(tmp_path / "e.onnx")), onnx.load(str(tmp_path / "f.onnx"))
    assert [i.name for i in enc_graph.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in enc_graph.graph.output] == ["ml_logits"]
    assert [i.name for i in fus_graph.graph.input] == ["ml_logits", "llm_scores", "llm_present"]
    encoder = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    fusion = ort.InferenceSession(str(tmp_path / "f.onnx"), providers=["CPUExecutionProvider"])
    for batch in (texts[:1], texts[2:9]):
        enc = tok(batch, truncation=True, max_length=64, padding=True, return_tensors="pt")
        scores = torch.rand(len(batch), 3)
        present = torch.tensor([[float(i % 2)] for i in range(len(batch))])
        with torch.no_grad():
            want = wrapper(enc["input_ids"], enc["attention_mask"], scores, present)
        (ml,) = encoder.run(None, as_feeds(enc["input_ids"].numpy(), enc["attention_mask"].numpy()))
        (fused,) = fusion.run(None, fusion_feeds(ml, scores.numpy(), present.numpy()[:, 0]))
        assert np.abs(ml - want.ml_logits.numpy()).max() < 1e-5
        assert np.abs(fused - want.fused_logits.numpy()).max() < 1e-5
        # llm_present = 0 ignores the scores given
        (absent,) = fusion.run(None, fusion_feeds(ml, np.zeros_like(scores.numpy()), np.zeros(len(batch))))
        (other,) = fusion.run(None, fusion_feeds(ml, scores.numpy(), np.zeros(len(batch))))
        np.testing.assert_allclose(absent, other, atol=1e-6)


def test_eager_attention_is_a_no_op_for_modules_without_a_switch():
    """Modules that cannot switch attention are traced as they are."""
    with eager_attention(torch.nn.Linear(2, 2)) as used:
        assert used == "None"


def test_no_texts_is_a_clear_error(wrapper_and_tokenizer, tmp_path):
    """Tracing needs at least one example text."""
    wrapper, tok = wrapper_and_tokenizer
    with pytest.raises(ExportError) as info:
        export_encoder_onnx(wrapper, tok, tmp_path / "m.onnx", texts=[], max_length=64)
    assert str(info.value) == "No texts to trace the model with; give at least one text."
