"""optimize: which encoders get ONNX Runtime's transformer optimizer, and what is recorded when skipped."""
from __future__ import annotations

from types import SimpleNamespace

from textclassify.export.optimize import OptimizeResult, optimize_onnx, optimizer_settings


def test_bert_like_config_gives_the_bert_profile():
    """RoBERTa uses the optimizer's "bert" profile with heads and width from its config."""
    config = SimpleNamespace(model_type="roberta", num_attention_heads=12, hidden_size=768)
    assert optimizer_settings(config) == ("bert", 12, 768)


def test_unknown_encoder_is_skipped_with_a_reason(tmp_path):
    """An encoder family the optimizer does not know is left alone, and the manifest says why."""
    config = SimpleNamespace(model_type="gpt2", num_attention_heads=12, hidden_size=768)
    result = optimize_onnx(tmp_path / "in.onnx", tmp_path / "out.onnx", config)
    assert result == OptimizeResult(applied=False, reason="no ONNX Runtime optimizer profile for encoder "
                                                          "model_type 'gpt2'")
    assert result.to_manifest() == {"tool": "onnxruntime.transformers.optimizer", "applied": False,
                                    "reason": "no ONNX Runtime optimizer profile for encoder model_type 'gpt2'"}
    assert not (tmp_path / "out.onnx").exists()


def test_missing_sizes_are_a_reason_not_a_crash():
    """A config without head count or width cannot be optimised."""
    config = SimpleNamespace(model_type="bert", hidden_size=64)
    assert optimizer_settings(config) == ("the encoder config has no num_attention_heads/hidden_size "
                                          "(got None, 64)")


def test_optimizer_failure_is_recorded(tmp_path):
    """A graph the optimizer cannot read gives applied=False with the optimizer's message."""
    (tmp_path / "in.onnx").write_bytes(b"not a graph")
    config = SimpleNamespace(model_type="bert", num_attention_heads=2, hidden_size=64)
    result = optimize_onnx(tmp_path / "in.onnx", tmp_path / "out.onnx", config)
    assert result.applied is False and result.model_type == "bert"
    assert result.reason.startswith("optimizer failed: ")
