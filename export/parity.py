"""The parity gate: PyTorch against ONNX Runtime on real texts, before anything is written.

The ONNX side follows the runtime's path exactly, the composed pipeline: the bundle's tokenizer.json
through the runtime's own `BundleTokenizer`, encoder.onnx, raw LLM scores through calibrator.onnx,
then fusion.onnx with llm_present = 1 (fused_logits) and with llm_present = 0 (the no-LLM answer the
gate and ml_only serve), with the runtime's session options. The PyTorch side is the fitted model as
trained: its Hugging Face tokenizer, `calibrator_.transform`, the encoder, then the fusion head both
ways. Both run at batch sizes 1 and 7 over texts of mixed lengths (plus one text longer than
max_length, so truncation is covered too).
Mismatches are gathered per kind -- names, then shapes, then values -- with their max difference.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textclassify.export.model_onnx import GraphSpec, as_feeds, eval_mode, fusion_feeds
from textclassify.runtime import constants as K
from textclassify.runtime.decoding import logits_to_probabilities
from textclassify.runtime.errors import ExportError
from textclassify.runtime.recheck import decision_margins, margin_change
from textclassify.runtime.tokenization import BundleTokenizer

PARITY_BATCH_SIZES = (1, 7)


@dataclass
class ParityData:
    """Texts and their raw LLM scores (float32 [n, C]) that the gate runs."""

    texts: list[str]
    raw_scores: np.ndarray
    truncated: int = 0


@dataclass
class Outputs:
    """ml_logits, fused_logits and the no-LLM fused_logits [n, C] per batch size, rows in text order."""

    ml: dict[int, np.ndarray] = field(default_factory=dict)
    fused: dict[int, np.ndarray] = field(default_factory=dict)
    nollm: dict[int, np.ndarray] = field(default_factory=dict)

    def named(self) -> dict[str, dict[int, np.ndarray]]:
        """The outputs compared, by the name a mismatch message gives them."""
        out = {"ml_logits": self.ml, "fused_logits": self.fused}
        if self.nollm:
            out["fused_logits (llm_present=0)"] = self.nollm
        return out


@dataclass
class Reference(Outputs):
    """PyTorch's outputs, its calibrated scores, lexical logits (scikit-learn) and the encoder inputs per batch."""

    calibrated: np.ndarray | None = None
    lexical: np.ndarray | None = None
    batches: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)


@dataclass
class Findings:
    """Mismatches by kind and the measured figures that go into the manifest."""

    names: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.names += other.names
        self.shapes += other.shapes
        self.values += other.values

    def problems(self) -> list[str]:
        """Every mismatch: names first, then shapes, then values."""
        return self.names + self.shapes + self.values


def parity_data(texts: Sequence[str], raw_scores: Any, n_labels: int, tokenizer: Any,
                max_length: int) -> ParityData:
    """Check the parity texts and scores; add one text longer than max_length (scores of text 0)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ExportError("The parity check needs at least one text (got none); pass texts= and raw_llm_scores= "
                          "or export a model whose validation_ holds texts.")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str) or not text.strip():
            raise ExportError(f"Parity texts[{i}] must be a non-empty string (got {text!r}).")
    raw = np.asarray(raw_scores, dtype=np.float32)
    if raw.shape != (len(items), n_labels):
        raise ExportError(f"raw_llm_scores must have shape ({len(items)}, {n_labels}), one row per text and one "
                          f"column per label (got {raw.shape}).")
    if not np.isfinite(raw).all():
        row = int(np.argwhere(~np.isfinite(raw))[0][0])
        raise ExportError(f"raw_llm_scores row {row} is not finite ({raw[row].tolist()}).")
    lengths = [len(ids) for ids in tokenizer(items, truncation=False, verbose=False)["input_ids"]]
    truncated = sum(n > max_length for n in lengths)
    if not truncated:
        long_text = " ".join(items)
        while len(tokenizer(long_text, truncation=False, verbose=False)["input_ids"]) <= max_length:
            long_text = f"{long_text} {long_text}"
        items.append(long_text)
        raw = np.concatenate([raw, raw[:1]], axis=0)
        truncated = 1
    return ParityData(items, raw, truncated)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def torch_reference(model: Any, data: ParityData, max_length: int,
                    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES) -> Reference:
    """The fitted model's own outputs: HF tokenizer, `calibrator_.transform`, then `model_` in eval mode.

    fused: the head with llm_present = 1 on the calibrated scores; nollm: with llm_present = 0.
    """
    calibrated = np.asarray(model.calibrator_.transform(data.raw_scores), dtype=np.float32)
    wrapper = model.model_
    lexical = None
    if getattr(wrapper.mlp, "has_lexical", False):
        lexical = np.asarray(model.lexical_.logits(data.texts), dtype=np.float32)
    ref = Reference(calibrated=calibrated, lexical=lexical)
    with eval_mode(wrapper), torch.no_grad():
        for size in batch_sizes:
            ml, fused, nollm, batches = [], [], [], []
            for part in _chunks(len(data.texts), size):
                enc = model.tokenizer_(data.texts[part], truncation=True, max_length=max_length, padding=True,
                                       return_tensors="pt")
                n = enc["input_ids"].shape[0]
                lex = None if lexical is None else torch.from_numpy(lexical[part])
                out = wrapper(enc["input_ids"], enc["attention_mask"], torch.from_numpy(calibrated[part]),
                              torch.ones(n, 1), lex)
                absent = wrapper.mlp(out.ml_logits, lex, torch.zeros_like(out.llm_scores), torch.zeros(n, 1))
                ml.append(out.ml_logits.float().numpy())
                fused.append(out.fused_logits.float().numpy())
                nollm.append(absent.float().numpy())
                batches.append((enc["input_ids"].numpy().astype(np.int64),
                                enc["attention_mask"].numpy().astype(np.int64)))
            ref.ml[size], ref.fused[size] = np.concatenate(ml), np.concatenate(fused)
            ref.nollm[size] = np.concatenate(nollm)
            ref.batches[size] = batches
    return ref


def open_session(path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """An InferenceSession opened as the runtime opens one (same options, same disabled fusions; on CUDA the
    runtime's provider options, TF32 off)."""
    from textclassify.runtime.sessions import ProviderPlan, inference_session

    plan = ProviderPlan(tuple(providers))
    return inference_session(str(path), plan.providers, plan.session_options(), plan.provider_options())


def check_calibrator(path: str | Path, model: Any, data: ParityData, reference: Reference,
                     tolerance: float) -> tuple[Findings, dict[str, Any], np.ndarray | None]:
    """calibrator.onnx against `calibrator_.transform`; returns findings, figures and its output."""
    found, name = Findings(), Path(path).name
    session = open_session(path)
    ins, outs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if ins != [K.CALIBRATOR_INPUT] or outs != [K.CALIBRATOR_OUTPUT]:
        found.names.append(f"{name}: inputs {ins} / outputs {outs}, expected [{K.CALIBRATOR_INPUT!r}] / "
                           f"[{K.CALIBRATOR_OUTPUT!r}]")
        return found, {}, None
    got = session.run([K.CALIBRATOR_OUTPUT], {K.CALIBRATOR_INPUT: data.raw_scores})[0]
    if got.shape != reference.calibrated.shape:
        found.shapes.append(f"{name}: output shape {got.shape}, expected {reference.calibrated.shape}")
        return found, {}, None
    diff = float(np.abs(got - reference.calibrated).max(initial=0.0))
    if not diff <= tolerance:
        found.values.append(f"{name} {K.CALIBRATOR_OUTPUT}: max |diff| {diff:.3g} > {tolerance:g} "
                            "against calibrator_.transform")
    return found, {"max_abs_diff": diff, "n_texts": len(data.texts)}, got


def check_tokenizer(tokenizer: BundleTokenizer, data: ParityData, reference: Reference) -> Findings:
    """tokenizer.json (through the runtime's tokenizer) must give the HF tokenizer's ids and mask."""
    found = Findings()
    for size, batches in reference.batches.items():
        for part, (ids, mask) in zip(_chunks(len(data.texts), size), batches):
            got_ids, got_mask = tokenizer(data.texts[part])
            if got_ids.shape != ids.shape or not (np.array_equal(got_ids, ids) and np.array_equal(got_mask, mask)):
                found.values.append(f"{K.TOKENIZER_FILE}: input_ids/attention_mask {got_ids.shape} differ from the "
                                    f"Hugging Face tokenizer's {ids.shape} for texts {part.start}..{part.stop - 1} "
                                    f"(batch size {size})")
                return found
    return found


def graph_feeds(tokenizer: BundleTokenizer, data: ParityData, size: int) -> Iterator[dict[str, np.ndarray]]:
    """encoder.onnx's feeds for the parity texts in batches of `size`: the runtime's tokens."""
    for part in _chunks(len(data.texts), size):
        ids, mask = tokenizer(data.texts[part])
        yield as_feeds(ids, mask)


def run_graph(encoder: Any, fusion: Any, tokenizer: BundleTokenizer, data: ParityData, calibrated: np.ndarray,
              batch_sizes: Sequence[int], lexical: np.ndarray | None = None) -> Outputs:
    """The composed pipeline: encoder.onnx (or a variant) on the runtime's tokens, then fusion.onnx both ways
    (with lexical.onnx's logits of the texts where the head reads them)."""
    out = Outputs()
    n_labels = calibrated.shape[1]
    lex = (lambda part: None) if lexical is None else (lambda part: lexical[part])  # noqa: E731
    for size in batch_sizes:
        ml = np.concatenate([encoder.run([K.ENCODER_OUTPUT], feeds)[0]
                             for feeds in graph_feeds(tokenizer, data, size)])
        n = len(ml)
        fused = np.concatenate([fusion.run([K.FUSED_OUTPUT], fusion_feeds(ml[part], calibrated[part],
                                                                           np.ones(len(ml[part])), lex(part)))[0]
                                for part in _chunks(n, size)])
        nollm = np.concatenate([fusion.run([K.FUSED_OUTPUT],
                                           fusion_feeds(ml[part], np.zeros((len(ml[part]), n_labels), np.float32),
                                                        np.zeros(len(ml[part])), lex(part)))[0]
                                for part in _chunks(n, size)])
        out.ml[size], out.fused[size], out.nollm[size] = ml, fused, nollm
    return out


def check_signature(session: Any, name: str, spec: GraphSpec) -> Findings:
    """Input/output names and dtypes of a graph against the spec."""
    found, want = Findings(), spec.ort_types()
    have_in = {i.name: i.type for i in session.get_inputs()}
    have_out = {o.name: o.type for o in session.get_outputs()}
    for kind, expected, have in (("inputs", spec.input_names, have_in), ("outputs", spec.output_names, have_out)):
        if sorted(have) != sorted(expected):
            found.names.append(f"{name}: {kind} {sorted(have)}, expected {sorted(expected)}")
            continue
        for key in expected:
            if have[key] != want[key]:
                found.names.append(f"{name}: {kind[:-1]} {key!r} has type {have[key]}, expected {want[key]}")
    return found


def compare_fp32(name: str, ref: Reference, got: Outputs, tolerance: float) -> tuple[Findings, dict[str, Any]]:
    """Shapes, then max |diff| of ml_logits and fused_logits per batch size against `tolerance`."""
    found = _shape_findings(name, ref, got)
    if found.shapes:
        return found, {}
    worst = dict.fromkeys(ref.named(), 0.0)
    for size in ref.fused:
        for output, values in ref.named().items():
            want, have = values[size], got.named()[output][size]
            diff = np.abs(have - want).max(axis=1)
            worst[output] = max(worst[output], float(diff.max(initial=0.0)))
            if not diff.max(initial=0.0) <= tolerance:
                row = int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff)))
                found.values.append(f"{name} {output}: max |diff| {float(diff[row]):.3g} > {tolerance:g} "
                                    f"(batch size {size}, text {row})")
    figures = {"max_abs_diff_fused": worst["fused_logits"], "max_abs_diff_ml": worst["ml_logits"],
               "tolerance": tolerance}
    if "fused_logits (llm_present=0)" in worst:
        figures["max_abs_diff_no_llm"] = worst["fused_logits (llm_present=0)"]
    return found, figures


def decisions(fused_logits: np.ndarray, multi_label: bool, thresholds: Sequence[float] | None) -> np.ndarray:
    """Per-row decision: argmax index (multi-class) or the 0/1 row of labels reaching their threshold."""
    probs = logits_to_probabilities(fused_logits, multi_label)
    if not multi_label:
        return probs.argmax(axis=1)[:, None]
    thr = np.full(probs.shape[1], K.DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds)
    return (probs >= thr).astype(np.int8)


def compare_reduced(name: str, ref: Reference, got: Outputs, multi_label: bool,
                    thresholds: Sequence[float] | None, min_agreement: float,
                    recheck_safety: float | None = None) -> tuple[Findings, dict[str, Any]]:
    """Prediction agreement with PyTorch: a text agrees when its whole decision matches at every batch size.

    With `recheck_safety` (int8), the gate judges the variant as the runtime serves it: rows within the
    recheck margin take fp32's answer (see served_agreement); the raw agreement is reported beside it.
    """
    found = _shape_findings(name, ref, got)
    if found.shapes:
        return found, {}
    sizes = list(ref.fused)
    same = np.ones(len(ref.fused[sizes[0]]), dtype=bool)
    for size in sizes:
        want = decisions(ref.fused[size], multi_label, thresholds)
        have = decisions(got.fused[size], multi_label, thresholds)
        same &= (want == have).all(axis=1)
    agreement = float(same.mean()) if len(same) else 1.0
    fused_diff = max(float(np.abs(got.fused[s] - ref.fused[s]).max(initial=0.0)) for s in sizes)
    ml_diff = max(float(np.abs(got.ml[s] - ref.ml[s]).max(initial=0.0)) for s in sizes)
    # the no-LLM answer too: the gate and on_llm_error="ml_only" decide rows without an LLM score by it.
    no_llm_ref, no_llm_got = (ref.nollm, got.nollm) if ref.nollm and got.nollm else (ref.ml, got.ml)
    moved_fused = max(margin_change(ref.fused[s], got.fused[s], multi_label) for s in sizes)
    moved_ml = max(margin_change(no_llm_ref[s], no_llm_got[s], multi_label) for s in sizes)
    figures = {"agreement": agreement, "min_agreement": min_agreement, "max_abs_diff_fused": fused_diff,
               "max_abs_diff_ml": ml_diff, "max_margin_change_fused": moved_fused,
               "max_margin_change_ml": moved_ml, "n_texts": int(len(same)), "batch_sizes": sizes}
    judged, detail = agreement, f"{int((~same).sum())} of {len(same)} texts differ; max |fused diff| {fused_diff:.3g}"
    if recheck_safety is not None:
        judged = figures["agreement_with_recheck"] = served_agreement(ref, got, multi_label, thresholds,
                                                                      recheck_safety)
        detail = f"with the fp32 recheck of close calls; int8 alone {agreement:.2%}: {detail}"
    if not judged >= min_agreement:
        found.values.append(f"{name}: prediction agreement with PyTorch {judged:.2%} < {min_agreement:.0%} "
                            f"({detail})")
    return found, figures


def served_agreement(ref: Reference, got: Outputs, multi_label: bool, thresholds: Sequence[float] | None,
                     safety: float) -> float:
    """Agreement with PyTorch when rows within the recheck margin take fp32's (= PyTorch's) decision.

    The margin that judges each half of the texts (alternate rows) is measured on the other half, so it
    is never fitted to the rows it is judged on; with a single text there is nothing to measure on and
    nothing is rechecked.
    """
    sizes = list(ref.fused)
    n = len(ref.fused[sizes[0]])
    fold = np.arange(n) % 2
    same = np.ones(n, dtype=bool)
    for part in (0, 1):
        rows, other = np.flatnonzero(fold == part), np.flatnonzero(fold != part)
        margin = safety * max(margin_change(ref.fused[s][other], got.fused[s][other], multi_label) for s in sizes)
        for size in sizes:
            want = decisions(ref.fused[size][rows], multi_label, thresholds)
            have = decisions(got.fused[size][rows], multi_label, thresholds)
            rechecked = decision_margins(got.fused[size][rows], multi_label, thresholds) < margin
            have[rechecked] = want[rechecked]
            same[rows] &= (want == have).all(axis=1)
    return float(same.mean()) if n else 1.0


def _shape_findings(name: str, ref: Reference, got: Outputs) -> Findings:
    found = Findings()
    for size in ref.fused:
        for output, values in ref.named().items():
            want, have = values[size], got.named().get(output, {}).get(size)
            if have is None or have.shape != want.shape:
                shape = None if have is None else have.shape
                found.shapes.append(f"{name} {output}: shape {shape}, expected {want.shape} (batch size {size})")
    return found
