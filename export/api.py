"""export_bundle: a fitted AutoFusionClassifier (or its saved folder) -> a verified, self-contained bundle.

Steps: tokenizer.json; PyTorch reference outputs on the parity texts; calibrator.onnx; fusion.onnx
(the fusion head); encoder.onnx (traced, then ONNX Runtime's transformer optimizer, kept only when
parity holds on it); optional int8 / fp16 variants of the encoder; the parity gate over the composed
pipeline (tokenizer -> encoder -> calibrator -> fusion, with and without the LLM) for each of them;
manifest.json (format 2, with the pipeline and the gate chosen at training); one rename into place.
Any mismatch raises ExportError listing every mismatch, and nothing is written.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from textclassify.export import constants as EK
from textclassify.runtime import constants as K
from textclassify.runtime.errors import ExportError, first_line
from textclassify.runtime.validation import is_int

REQUIRED_ATTRIBUTES = ("model_", "tokenizer_", "calibrator_", "labels_", "multi_label_", "thresholds_",
                       "max_length_", "llm_settings_", "metrics_", "validation_")
MIN_OPSET = 14  # scaled_dot_product_attention and the optimizer's fused ops need 14 or newer
PIPELINE_NAME = f"{K.ENCODER_FILE} + {K.FUSION_FILE}"  # how parity findings name the composed pipeline


def export_bundle(model: Any, output_dir: str | os.PathLike[str], *, int8: bool = False, fp16: bool = False,
                  opset: int = EK.ONNX_OPSET, max_length: int | None = None, texts: Sequence[str] | None = None,
                  raw_llm_scores: np.ndarray | None = None, progress: bool = True, force: bool = False) -> Path:
    """Export `model` (fitted classifier or saved-model folder) to `output_dir`; returns the bundle path."""
    say = _reporter(progress)
    _check_options(int8, fp16, opset, max_length)
    target = _check_target(output_dir, force)
    fitted = _resolve_model(model, say)
    n_labels = len(fitted.labels_)
    length = _bundle_max_length(fitted, max_length)
    texts, raw_llm_scores = _parity_inputs(fitted, texts, raw_llm_scores)

    from textclassify.export import parity
    from textclassify.export.bundle_writer import BundleStage

    data = parity.parity_data(texts, raw_llm_scores, n_labels, fitted.tokenizer_, length)
    with BundleStage(target) as stage:
        steps = _ExportRun(fitted, stage, data, length, opset, say)
        steps.run(int8=int8, fp16=fp16)
        say(f"writing {K.MANIFEST_FILE} and moving the bundle into {target}")
        stage.commit(build_manifest(fitted, steps, length, opset))
    say("done")
    return target


def build_manifest(fitted: Any, steps: Any, max_length: int, opset: int) -> dict[str, Any]:
    """manifest.json's content (the writer adds "files")."""
    from textclassify.runtime.manifest import GATE_RULES, standard_pipeline

    n_labels = len(fitted.labels_)
    task = "multi_label" if fitted.multi_label_ else "multi_class"
    gate = dict(getattr(fitted, "gate_", None) or {})
    gate = {**gate, "rule": GATE_RULES[task], "threshold": gate.get("threshold")}
    thresholds = None
    if fitted.multi_label_:
        thresholds = [float(t) for t in (fitted.thresholds_ or [K.DEFAULT_THRESHOLD] * n_labels)]
    settings = fitted.llm_settings_.to_dict()
    return {
        "format": "textclassify-bundle",
        "format_version": K.BUNDLE_FORMAT_VERSION,
        "task": task,
        "labels": [str(label) for label in fitted.labels_],
        "thresholds": thresholds,
        "max_length": int(max_length),
        "tokenizer": steps.tokenizer_entry,
        "pipeline": standard_pipeline(n_labels, lexical=steps.lexical),
        "gate": gate,
        # The combiner that serves, chosen by cross-fitting (train.crossfit), and the table it was chosen from.
        "combiner": {"chosen": getattr(fitted, "combiner_", "mlp"), "cv_table": list(getattr(fitted, "cv_table_", []))},
        "calibrator": {"kind": fitted.calibrator_.to_dict()["kind"]},
        "variants": steps.variants,  # of the encoder graph
        "llm": settings,  # every LLMSettings field (it holds no key), so serving asks exactly as training did
        "metrics": getattr(fitted, "metrics_", {}) or {},
        "parity": steps.parity,
        "graph": steps.graph,
        "versions": library_versions(opset),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def library_versions(opset: int) -> dict[str, Any]:
    """Versions of the libraries that built the bundle."""
    out: dict[str, Any] = {}
    for name in ("textclassify", "torch", "transformers", "onnx", "onnxruntime", "skl2onnx", "tokenizers"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["opset"] = int(opset)
    return out


def _reporter(enabled: bool) -> Callable[[str], None]:
    """Progress lines on stderr ("fusion-export [  2.1s] message"), or nothing."""
    start = time.perf_counter()

    def say(message: str) -> None:
        if enabled:
            print(f"fusion-export [{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def _check_options(int8: Any, fp16: Any, opset: Any, max_length: Any) -> None:
    for name, value in (("int8", int8), ("fp16", fp16)):
        if not isinstance(value, bool):
            raise ExportError(f"'{name}' must be a bool (got {value!r}, a {type(value).__name__}).")
    if not is_int(opset) or opset < MIN_OPSET:
        raise ExportError(f"'opset' must be an int >= {MIN_OPSET} (got {opset!r}).")
    if max_length is not None and (not is_int(max_length) or max_length < 2):
        raise ExportError(f"'max_length' must be an int >= 2 or None (got {max_length!r}).")


def _check_target(output_dir: Any, force: bool = False) -> Path:
    if not isinstance(output_dir, str | os.PathLike) or not str(output_dir):
        raise ExportError(f"'output_dir' must be a path (got {output_dir!r}).")
    from textclassify.export.bundle_writer import check_target

    return check_target(output_dir, force=force)


def _resolve_model(model: Any, say: Callable[[str], None]) -> Any:
    """A fitted classifier as given, or loaded from a saved-model folder."""
    if isinstance(model, str | os.PathLike):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise ExportError(f"Saved model directory {str(folder)!r} does not exist or is not a directory.")
        say(f"loading the saved model from {folder}")
        from textclassify.train.auto import AutoFusionClassifier

        model = AutoFusionClassifier.load(folder)
    check = getattr(model, "_check_fitted", None)
    if callable(check):
        check()
    missing = [name for name in REQUIRED_ATTRIBUTES if not hasattr(model, name)]
    if missing:
        raise ExportError(f"export needs a fitted AutoFusionClassifier or a saved-model folder; the "
                          f"{type(model).__name__} given lacks {missing}.")
    return model


def _bundle_max_length(fitted: Any, requested: int | None) -> int:
    length = int(fitted.max_length_) if requested is None else requested
    from textclassify.train.encoder import position_limit

    limit = position_limit(fitted.model_.encoder)
    if limit is not None and length > limit:
        raise ExportError(f"'max_length' {length} is more than the encoder allows ({limit} tokens, from "
                          f"max_position_embeddings); choose {limit} or less.")
    return length


def _parity_inputs(fitted: Any, texts: Any, raw: Any) -> tuple[Any, Any]:
    if (texts is None) != (raw is None):
        raise ExportError("Pass 'texts' and 'raw_llm_scores' together (the raw LLM scores of those texts), "
                          "or neither to use the model's validation texts.")
    if texts is not None:
        return texts, raw
    validation = fitted.validation_ or {}
    if not validation.get("texts"):
        raise ExportError("The model holds no validation texts for the parity check; pass texts= and "
                          "raw_llm_scores= (their raw LLM scores).")
    return validation["texts"], validation.get("raw_llm_scores")


class _ExportRun:
    """The export's steps in order; gathers parity figures, graph facts and variants for the manifest."""

    def __init__(self, fitted: Any, stage: Any, data: Any, max_length: int, opset: int,
                 say: Callable[[str], None]) -> None:
        from textclassify.export.model_onnx import encoder_spec, fusion_spec
        from textclassify.export.parity import Findings

        self.fitted, self.stage, self.data, self.max_length, self.say = fitted, stage, data, max_length, say
        self.spec = encoder_spec(opset)
        self.lexical = bool(getattr(fitted.model_.mlp, "has_lexical", False))  # the head reads lexical logits
        self.lexical_logits: np.ndarray | None = None  # lexical.onnx's output on the parity texts
        self.fusion_spec = fusion_spec(opset, lexical=self.lexical)
        self.n_labels = len(fitted.labels_)
        self.found = Findings()
        self.parity: dict[str, Any] = {}
        self.graph: dict[str, Any] = {}
        self.variants: dict[str, str] = {}
        self.tokenizer_entry: dict[str, Any] = {}

    def run(self, *, int8: bool, fp16: bool) -> None:
        """Every step; raises ExportError listing all mismatches before any variant or after them."""
        from textclassify.export.model_onnx import on_cpu

        with on_cpu(self.fitted.model_):
            self._steps(int8=int8, fp16=fp16)

    def _steps(self, *, int8: bool, fp16: bool) -> None:
        from textclassify.export import parity

        self._tokenizer()
        self.say(f"running the PyTorch reference on {len(self.data.texts)} texts "
                 f"(batch sizes {', '.join(map(str, parity.PARITY_BATCH_SIZES))})")
        self.reference = parity.torch_reference(self.fitted, self.data, self.max_length)
        self.found.extend(parity.check_tokenizer(self.tokenizer, self.data, self.reference))
        self._calibrator()
        self._lexical()
        self._fusion()
        self._model()
        self._raise_on_mismatch()
        if int8:
            self._int8()
        if fp16:
            self._fp16()
        self._raise_on_mismatch()

    def _raise_on_mismatch(self) -> None:
        problems = self.found.problems()
        if problems:
            raise ExportError(f"Export refused, nothing written to {str(self.stage.target)!r}: the ONNX bundle does "
                              f"not match PyTorch ({len(problems)} mismatch(es)): " + "; ".join(problems))

    def _tokenizer(self) -> None:
        from tokenizers import Tokenizer

        from textclassify.export.bundle_writer import bundle_tokenizer
        from textclassify.runtime.tokenization import BundleTokenizer

        self.say(f"writing {K.TOKENIZER_FILE} (truncation to {self.max_length} tokens, padding to the longest)")
        text, self.tokenizer_entry = bundle_tokenizer(self.fitted.tokenizer_, self.max_length)
        self.stage.path(K.TOKENIZER_FILE).write_text(text, encoding="utf-8")
        self.tokenizer = BundleTokenizer(Tokenizer.from_str(text), self.max_length,
                                         self.tokenizer_entry["pad_token_id"])

    def _calibrator(self) -> None:
        import onnx

        from textclassify.export.calibrator_onnx import calibrator_to_onnx
        from textclassify.export.parity import check_calibrator

        self.say(f"converting the calibrator to {K.CALIBRATOR_FILE}")
        path = self.stage.path(K.CALIBRATOR_FILE)
        onnx.save(calibrator_to_onnx(self.fitted.calibrator_, self.n_labels, self.spec.opset), str(path))
        found, figures, calibrated = check_calibrator(path, self.fitted, self.data, self.reference,
                                                      self.spec.fp32_tolerance)
        self.found.extend(found)
        self.parity["calibrator"] = figures
        self.calibrated = self.reference.calibrated if calibrated is None else calibrated

    def _lexical(self) -> None:
        """lexical.onnx when the fusion head reads lexical logits, checked against scikit-learn on the parity texts."""
        if not self.lexical:
            return
        from textclassify.export.lexical_onnx import export_lexical_onnx, run_lexical_onnx

        model = getattr(self.fitted, "lexical_", None)
        if model is None:
            raise ExportError("The fusion head reads lexical logits but the model holds no lexical component "
                              "(lexical_ is missing); fit it again.")
        self.say(f"converting the lexical component to {K.LEXICAL_FILE}")
        path = self.stage.path(K.LEXICAL_FILE)
        try:
            self.graph_lexical = export_lexical_onnx(model, path, parity_texts=list(self.data.texts))
        except ValueError as e:
            self.found.values.append(str(e))
            self._raise_on_mismatch()
        self.parity["lexical"] = self.graph_lexical.get("parity", {})
        self.lexical_logits = np.asarray(run_lexical_onnx(path, list(self.data.texts)), dtype=np.float32)

    def _fusion(self) -> None:
        from textclassify.export.model_onnx import export_fusion_onnx

        self.say(f"tracing {K.FUSION_FILE} (the fusion head: component logits, calibrated scores, llm_present)")
        path = self.stage.path(K.FUSION_FILE)
        self.fusion_facts = export_fusion_onnx(self.fitted.model_.mlp, path, n_labels=self.n_labels,
                                               spec=self.fusion_spec)
        self.fusion_session, found = self._session(path, K.FUSION_FILE, ["CPUExecutionProvider"], self.fusion_spec)
        self.found.extend(found)
        if self.fusion_session is None or found.names:
            self._raise_on_mismatch()

    def _fp32_findings(self, path: Path, name: str) -> tuple[Any, dict[str, Any]]:
        from textclassify.export import parity

        session, found = self._session(path, name, ["CPUExecutionProvider"])
        if session is None or found.names:
            return found, {}
        got = parity.run_graph(session, self.fusion_session, self.tokenizer, self.data, self.calibrated,
                               parity.PARITY_BATCH_SIZES, self.lexical_logits)
        values, figures = parity.compare_fp32(name, self.reference, got, self.spec.fp32_tolerance)
        found.extend(values)
        return found, figures

    def _session(self, path: Path, name: str, providers: list[str], spec: Any = None) -> tuple[Any, Any]:
        from textclassify.export import parity

        try:
            session = parity.open_session(path, providers)
        except Exception as e:  # noqa: BLE001 -- ORT raises its own types for graphs it cannot load
            found = parity.Findings(names=[f"{name}: ONNX Runtime could not load it ({first_line(e)})"])
            return None, found
        return session, parity.check_signature(session, name, spec or self.spec)

    def _model(self) -> None:
        from textclassify.export import parity
        from textclassify.export.model_onnx import export_encoder_onnx
        from textclassify.export.optimize import optimize_onnx

        self.say(f"tracing {K.ENCODER_FILE} (the encoder, opset {self.spec.opset})")
        plain = self.stage.work("encoder.plain.onnx")
        facts = export_encoder_onnx(self.fitted.model_, self.fitted.tokenizer_, plain, texts=self.data.texts,
                                    max_length=self.max_length, spec=self.spec)
        self.say(f"checking the pipeline with {K.ENCODER_FILE} against PyTorch")
        found, figures = self._fp32_findings(plain, PIPELINE_NAME)
        chosen, optimization = plain, {"applied": False, "reason": "the plain graph failed parity"}
        if not found.problems():
            self.say("running ONNX Runtime's transformer optimizer")
            optimized = self.stage.work("encoder.optimized.onnx")
            result = optimize_onnx(plain, optimized, self.fitted.model_.encoder.config)
            optimization = result.to_manifest()
            if result.applied:
                opt_found, opt_figures = self._fp32_findings(optimized, f"{PIPELINE_NAME} (optimised encoder)")
                if opt_found.problems():
                    optimization["rejected"] = "parity failed on the optimised graph: " + \
                        "; ".join(opt_found.problems())
                else:
                    chosen, found, figures = optimized, opt_found, opt_figures
            optimization["kept"] = chosen == optimized if result.applied else False
        os.replace(chosen, self.stage.path(K.ENCODER_FILE))
        # The int8 variant is quantised from the plain trace: unfused, its MatMuls all become int8 kernels,
        # which run faster on CPU than the optimiser's fused Attention quantised (figures: benchmarks/README.md).
        self.int8_source = plain if chosen != plain else self.stage.path(K.ENCODER_FILE)
        self.found.extend(found)
        self.graph = {**facts, "optimization": optimization, "fusion": self.fusion_facts}
        if self.lexical:
            self.graph["lexical"] = {k: v for k, v in self.graph_lexical.items() if k != "parity"}
        self.parity["fp32"] = {**figures, "n_texts": len(self.data.texts),
                               "batch_sizes": list(parity.PARITY_BATCH_SIZES),
                               "truncated_texts": self.data.truncated, "provider": "CPUExecutionProvider",
                               "graph": "optimized" if optimization.get("kept") else "plain"}
        self.variants["fp32"] = K.ENCODER_FILE

    def _reduced(self, path: Path, name: str, providers: list[str],
                 recheck_safety: float | None = None) -> tuple[Any, dict[str, Any], str | None]:
        """Findings and figures for a reduced-precision graph; a reason instead when it cannot run here."""
        from textclassify.export import parity

        session, found = self._session(path, name, providers)
        if session is None:
            return parity.Findings(), {}, found.names[0]
        if found.names:
            return found, {}, None
        try:
            got = parity.run_graph(session, self.fusion_session, self.tokenizer, self.data, self.calibrated,
                                   parity.PARITY_BATCH_SIZES, self.lexical_logits)
        except Exception as e:  # noqa: BLE001 -- a kernel missing on this provider surfaces at run time
            return parity.Findings(), {}, f"ONNX Runtime could not run {name} ({first_line(e)})"
        values, figures = parity.compare_reduced(name, self.reference, got, self.fitted.multi_label_,
                                                 self.fitted.thresholds_, EK.REDUCED_PRECISION_MIN_AGREEMENT,
                                                 recheck_safety)
        figures["provider"] = session.get_providers()[0]
        return values, figures, None

    def _int8(self) -> None:
        from textclassify.export import parity
        from textclassify.export.smoothing import activation_ranges, load_model, smoothing_groups
        from textclassify.runtime.recheck import RECHECK_SAFETY

        self.say(f"quantising {K.ENCODER_INT8_FILE} (dynamic, int8 weights per channel; SmoothQuant strength chosen "
                 f"on the {len(self.data.texts)} parity texts)")
        size = max(parity.PARITY_BATCH_SIZES)
        source = load_model(self.int8_source)  # loaded and shape-inferred once for all the candidates
        groups = smoothing_groups(source)
        ranges = activation_ranges(source, parity.graph_feeds(self.tokenizer, self.data, size), groups)
        chosen, info, tried = self._best_int8(source, groups, ranges, size)
        path = self.stage.path(K.ENCODER_INT8_FILE)
        os.replace(chosen, path)
        self.graph["int8"] = {**info, "source_graph": "plain", "smoothquant_tried": tried}
        found, figures, reason = self._reduced(path, K.ENCODER_INT8_FILE, ["CPUExecutionProvider"], RECHECK_SAFETY)
        if reason is not None:
            found.values.append(reason)
        elif "max_margin_change_fused" in figures:  # runtime.recheck: rows closer to a flip than this go to fp32
            figures["recheck_margin"] = RECHECK_SAFETY * figures["max_margin_change_fused"]
            figures["recheck_margin_ml"] = RECHECK_SAFETY * figures["max_margin_change_ml"]  # no-LLM answers
            figures["recheck_safety"] = RECHECK_SAFETY
        self.found.extend(found)
        self.parity["int8"] = figures
        self.variants["int8"] = K.ENCODER_INT8_FILE

    def _best_int8(self, source: Any, groups: Any, ranges: Any,
                   size: int) -> tuple[Path, dict[str, Any], dict[str, Any]]:
        """Quantise once per SmoothQuant strength; keep the graph with the least mean |fused diff| to PyTorch."""
        from textclassify.export import parity
        from textclassify.export.variants import INT8_SMOOTHING_ALPHAS, quantize_int8

        best: tuple[float, Path, dict[str, Any]] | None = None
        first: tuple[Path, dict[str, Any]] | None = None  # INT8_SMOOTHING_ALPHAS starts with None: unsmoothed
        tried: dict[str, Any] = {}
        for alpha in INT8_SMOOTHING_ALPHAS:
            label = "none" if alpha is None else str(alpha)
            path = self.stage.work(f"encoder.int8.alpha-{label}.onnx")
            info = quantize_int8(source, path, ranges=ranges, alpha=alpha, groups=groups)
            first = first or (path, info)
            try:
                got = parity.run_graph(parity.open_session(path), self.fusion_session, self.tokenizer, self.data,
                                       self.calibrated, (size,), self.lexical_logits)
            except Exception as e:  # noqa: BLE001 -- a candidate ORT cannot run is skipped, and the reason kept
                tried[label] = f"could not run: {first_line(e)}"
                continue
            error = float(np.abs(got.fused[size] - self.reference.fused[size]).mean()) if len(self.data.texts) else 0.0
            tried[label] = {"mean_abs_diff_fused": error}
            if best is None or error < best[0]:
                best = (error, path, info)
        if best is None:  # every candidate failed to run: the gate reports it on the unsmoothed graph
            assert first is not None
            return first[0], first[1], tried
        return best[1], best[2], tried

    def _fp16(self) -> None:
        from textclassify.export import fp16

        self.say(f"converting {K.ENCODER_FP16_FILE} (float16 encoder; inputs, outputs and the per-row head float32)")
        work = self.stage.work(K.ENCODER_FP16_FILE)  # enters the bundle only once its check has passed
        self.graph["fp16"] = fp16.convert_fp16(self.stage.path(K.ENCODER_FILE), work)
        providers = fp16.check_providers()
        found, figures, reason = self._reduced(work, K.ENCODER_FP16_FILE, providers)
        if reason is not None:  # an fp16 graph that could not be checked is never written
            found.values.append(f"{reason}; export without fp16, or on a CUDA machine")
        self.found.extend(found)
        if found.problems():
            return
        # validated only when the session really ran on CUDA (export.fp16: a CPU pass proves little)
        self.parity["fp16"] = fp16.parity_entry(figures, figures.get("provider", providers[0]))
        if not self.parity["fp16"]["validated"]:
            self.say(f"note: {K.ENCODER_FP16_FILE} {fp16.CPU_NOTE}; load_bundle's variant='auto' will not serve it")
        os.replace(work, self.stage.path(K.ENCODER_FP16_FILE))
        self.variants["fp16"] = K.ENCODER_FP16_FILE
