"""ONNX Runtime's transformer optimizer on encoder.onnx (attention, LayerNorm and GELU fusions).

Only the offline, provider-neutral part runs here (`opt_level=0`: the Python fusion passes);
ONNX Runtime applies its own graph optimisations again when the runtime opens the session. The
caller keeps the optimised graph only when the parity gate still passes on it.
SkipLayerNormalization is not fused: its CPU kernel is slower than the Add + LayerNormalization it
replaces (see runtime.sessions.CPU_DISABLED_OPTIMIZERS); CUDA sessions fuse it themselves at load.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Fusions turned off, by FusionOptions attribute: SkipLayerNormalization is slow on CPU (module docstring).
DISABLED_FUSIONS = ("enable_skip_layer_norm", "enable_bias_skip_layer_norm")

# Encoder families whose graphs the optimizer's "bert" profile understands.
BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet",
                       "deberta", "deberta-v2", "albert"})


@dataclass
class OptimizeResult:
    """What the optimizer did: `applied` is False with a `reason` when it was skipped or failed."""

    applied: bool
    model_type: str | None = None
    reason: str | None = None
    fused_operators: dict[str, int] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        """JSON-safe summary (the caller adds whether the graph was kept)."""
        out: dict[str, Any] = {"tool": "onnxruntime.transformers.optimizer", "applied": self.applied}
        if self.applied:
            out["disabled_fusions"] = list(DISABLED_FUSIONS)
        if self.model_type:
            out["model_type"] = self.model_type
        if self.fused_operators:
            out["fused_operators"] = dict(self.fused_operators)
        if self.reason:
            out["reason"] = self.reason
        return out


def optimizer_settings(encoder_config: Any) -> tuple[str, int, int] | str:
    """(ort_model_type, num_heads, hidden_size) from a Hugging Face config, or why the optimizer is skipped."""
    model_type = getattr(encoder_config, "model_type", None)
    if model_type not in BERT_LIKE:
        return f"no ONNX Runtime optimizer profile for encoder model_type {model_type!r}"
    heads = getattr(encoder_config, "num_attention_heads", None) or getattr(encoder_config, "n_heads", None)
    hidden = getattr(encoder_config, "hidden_size", None) or getattr(encoder_config, "dim", None)
    if not isinstance(heads, int) or not isinstance(hidden, int):
        return f"the encoder config has no num_attention_heads/hidden_size (got {heads!r}, {hidden!r})"
    return "bert", heads, hidden


def optimize_onnx(src: str | Path, dst: str | Path, encoder_config: Any) -> OptimizeResult:
    """Write the optimised graph of `src` to `dst` when the encoder is BERT-like; never raises on a failed pass."""
    settings = optimizer_settings(encoder_config)
    if isinstance(settings, str):
        return OptimizeResult(applied=False, reason=settings)
    model_type, num_heads, hidden_size = settings
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    options = FusionOptions(model_type)
    for name in DISABLED_FUSIONS:
        setattr(options, name, False)
    try:
        optimized = optimize_model(str(src), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                   opt_level=0, use_gpu=False, optimization_options=options)
        optimized.save_model_to_file(str(dst), use_external_data_format=False)
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    except Exception as e:  # noqa: BLE001 -- a failed optimisation falls back to the plain graph, recorded
        text = str(e).strip()
        return OptimizeResult(applied=False, model_type=model_type,
                              reason=f"optimizer failed: {text.splitlines()[0] if text else type(e).__name__}")
    finally:
        quiet.setLevel(level)
    if not stats:
        return OptimizeResult(applied=False, model_type=model_type, reason="the optimizer fused nothing")
    return OptimizeResult(applied=True, model_type=model_type, fused_operators=stats)
