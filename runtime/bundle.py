"""load_bundle and Bundle: serve a verified bundle with ONNX Runtime and the cached LLM client (no torch).

Per call the pipeline runs in the manifest's order: the component graphs (encoder, and lexical where the
bundle has one), the fusion graph with llm_present = 0 (the no-LLM answer), the gate on that answer per
row, the LLM for the rows the gate lets through only, the calibrator, and the fusion graph again for
those rows. Feed and output names all come from the manifest's pipeline.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from textclassify.runtime import constants as K
from textclassify.runtime.decoding import (
    decode_predictions,
    encode_targets,
    encode_true_labels,
    logits_to_probabilities,
)
from textclassify.runtime.errors import BundleError, ConfigError, LLMError
from textclassify.runtime.gate import GATE_CHOICES, confidence, skips_llm
from textclassify.runtime.graph_errors import is_onnxruntime_error, load_error, run_checked
from textclassify.runtime.llm import LLMScorer, LLMSettings
from textclassify.runtime.llm.usage import usage_delta
from textclassify.runtime.manifest import BundleManifest, load_manifest, opened_verified
from textclassify.runtime.metrics import classification_metrics
from textclassify.runtime.recheck import rows_near_gate, rows_to_recheck
from textclassify.runtime.sessions import (
    CUDA_PAD_MULTIPLE,
    OnnxModel,
    ProviderPlan,
    open_with_fallback,
    plan_providers,
    warm_up_rows,
)
from textclassify.runtime.tokenization import BundleTokenizer
from textclassify.runtime.types import ClassificationResult
from textclassify.runtime.validation import (
    DEFAULT_MAX_TEXT_CHARS,
    check_finite_probabilities,
    mark_nonfinite_rows,
    validate_texts,
)
from textclassify.runtime.variants import VARIANT_CHOICES, choose_variant, fp16_parity_entry

FUSION_CHUNK = 4096  # rows per fusion.onnx run: a [B, C] MLP, so only memory bounds it
ON_LLM_ERROR_CHOICES = ("raise", "ml_only")
_LLM_FIELDS = {f.name for f in dataclasses.fields(LLMSettings)}


def load_bundle(
    path: str | os.PathLike[str],
    *,
    providers: str | Sequence[str] = "auto",
    variant: str = "auto",
    llm_api_key: str | None = None,
    llm_base_url: str | None = None,
    on_llm_error: str = "raise",
    cache_dir: str | os.PathLike[str] | None = K.DEFAULT_CACHE_DIR,
    batch_size: int = K.DEFAULT_BATCH_SIZE,
    intra_op_num_threads: int | None = None,
    int8_recheck: bool = True,
    llm_gate: str | float = "manifest",
    device_id: int = 0,
    use_tf32: bool = False,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    long_texts: str = "truncate",
    llm_max_concurrency: int | None = None,
) -> Bundle:
    """Verify a bundle (manifest, names, sizes, sha256, graph inputs/outputs), open its ONNX sessions, warm them up.

    With variant="int8" and `int8_recheck`, encoder.onnx is opened too and answers again the rows whose int8
    decision is within the manifest's recheck margin of flipping (see runtime.recheck).
    `llm_gate`: "manifest" uses the gate threshold the export stored (none: every row asks the LLM), "off"
    sends every row to the LLM, a number in [0, 1] is the threshold to use instead.
    CUDA: `device_id` picks the GPU (sessions and IO binding); `use_tf32` lets fp32 MatMuls use TF32
    (faster on Ampere or newer, but outside the export's 1e-4 fp32 parity, hence off by default). When
    CUDA cannot be used or its first run fails, providers="auto" warns once and reopens every session on
    the CPU; providers="cuda" raises ConfigError. `variant="auto"` serves fp16 only on CUDA and only when
    the export validated it there; `Bundle.variant_reason` says why a variant was chosen.
    `llm_max_concurrency` caps this bundle's LLM requests in flight (default: the training-time llm.max_concurrency);
    Ray workers each take their share of a cluster-wide cap through it.
    """
    _check_arguments(variant, on_llm_error, batch_size, intra_op_num_threads, llm_api_key, llm_base_url)
    if not isinstance(int8_recheck, bool):
        raise ConfigError(f"'int8_recheck' must be True or False (got {int8_recheck!r}).")
    _check_gate_argument(llm_gate)
    manifest = load_manifest(path)  # every check on the files happens here, before ONNX Runtime sees any
    settings = _llm_settings(manifest, llm_base_url, llm_max_concurrency)
    gate = None if llm_gate == "off" else manifest.gate_threshold if llm_gate == "manifest" else float(llm_gate)
    plan = plan_providers(providers, device_id=device_id, use_tf32=use_tf32, intra_op_num_threads=intra_op_num_threads)

    def build(plan: ProviderPlan) -> Bundle:
        """Every session under `plan` (runtime.sessions.open_with_fallback calls it again CPU-only on a fallback)."""
        choice = choose_variant(variant, manifest.variants, on_cuda=plan.on_cuda, cuda_explicit=plan.strict,
                                fp16_parity=fp16_parity_entry(manifest.raw))
        encoder_plan = plan.cpu() if choice.cpu_only else plan  # int8 never runs on CUDA
        chosen = choice.variant
        wants_recheck = chosen == "int8" and int8_recheck and manifest.int8_recheck_margin is not None
        # int8 and its fp32 recheck take turns on the same cores: no threads spinning in one while the other
        # runs (cold-start figures: benchmarks/README.md).
        spinning = not wants_recheck
        # The graphs' sessions are built on worker threads (ONNX Runtime releases the GIL while it parses and
        # initialises) while this thread builds the tokenizer and the calibrator, so they overlap.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="textclassify-load") as pool:
            pending_model = pool.submit(_open_model, manifest, chosen, encoder_plan, spinning)
            pending_recheck = pool.submit(_open_model, manifest, "fp32", encoder_plan, spinning) \
                if wants_recheck else None
            tokenizer = BundleTokenizer.from_manifest(manifest, max_text_chars=max_text_chars, long_texts=long_texts)
            # The calibrator, the fusion head and any other component (lexical) are small graphs: on CPU even with
            # CUDA (for a [B, C] graph that costs less than two device copies per call), one thread each, so no
            # intra-op pool spins beside the encoder's.
            small = {step["name"]: _open_step(manifest, step, step["file"], plan.cpu(), threads=1)
                     for step in manifest.pipeline if step["name"] != "encoder"}
            model = pending_model.result()
            recheck = None
            if pending_recheck is not None:
                fused, ml = manifest.int8_recheck_margin, manifest.int8_recheck_margin_ml
                recheck = (pending_recheck.result(), fused, fused if ml is None else ml)
        scorer = LLMScorer(settings, manifest.labels, manifest.multi_label,
                           cache_dir=None if cache_dir is None else os.fspath(cache_dir), api_key=llm_api_key)
        reason = choice.reason if plan.fallback is None else f"{choice.reason} ({plan.fallback})"
        return Bundle(manifest=manifest, tokenizer=tokenizer, graphs={**small, "encoder": model}, scorer=scorer,
                      variant=chosen, on_llm_error=on_llm_error, batch_size=batch_size, recheck=recheck,
                      gate_threshold=gate, variant_reason=reason)

    try:
        bundle, _ = open_with_fallback(plan, build, sessions=Bundle._sessions, warm_up=Bundle._warm_up,
                                       discard=Bundle.close)
    except Exception as e:  # noqa: BLE001 -- ONNX Runtime's own error types become a BundleError naming the files
        if not is_onnxruntime_error(e):
            raise
        raise load_error(manifest, e) from None
    return bundle


class Bundle:
    """A loaded bundle: `predict` / `predict_proba` on lists of texts; safe to call from many threads."""

    def __init__(self, *, manifest: BundleManifest, tokenizer: BundleTokenizer, graphs: dict[str, OnnxModel],
                 scorer: Any, variant: str, on_llm_error: str, batch_size: int,
                 recheck: tuple[OnnxModel, float, float] | None = None,
                 gate_threshold: float | None = None, variant_reason: str = "") -> None:
        self._manifest = manifest
        self._tokenizer = tokenizer
        self._graphs = graphs  # one session per pipeline step name; "encoder" is the chosen variant
        self._model = graphs["encoder"]
        # the fp32 encoder and the recheck margins for rows answered with and without LLM scores
        self._recheck_model, self._recheck_margin, self._recheck_margin_ml = recheck or (None, None, None)
        self._scorer = scorer
        self.variant = variant
        self.variant_reason = variant_reason  # why this variant (runtime.variants.choose_variant)
        self.on_llm_error = on_llm_error
        self.batch_size = batch_size
        self.gate_threshold = gate_threshold
        self._components = manifest.components
        self._calibrator_step = manifest.step("calibrator")
        self._fusion_step = manifest.step("fusion")
        self._cal_in = next(iter(self._calibrator_step["inputs"]))
        self._cal_out = next(iter(self._calibrator_step["outputs"]))
        # LLMScorer starts its event-loop thread lazily on the first call and that start is not
        # thread-safe; the first call goes under this lock, later ones run concurrently.
        self._llm_lock = threading.Lock()
        self._llm_started = False
        self._rows_lock = threading.Lock()
        self._rows = {"rows": 0, "llm_skipped_rows": 0}  # served since load, for `usage`

    @property
    def labels(self) -> list[str]:
        return list(self._manifest.labels)

    @property
    def multi_label(self) -> bool:
        return self._manifest.multi_label

    @property
    def thresholds(self) -> list[float] | None:
        return None if self._manifest.thresholds is None else list(self._manifest.thresholds)

    @property
    def providers(self) -> list[str]:
        """Execution providers ONNX Runtime actually uses for encoder.onnx (not merely those requested)."""
        return list(self._model.providers)

    @property
    def int8_recheck_margin(self) -> float | None:
        """Decision margin below which int8 rows are answered again by model.onnx; None when nothing is rechecked."""
        return self._recheck_margin

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(self._manifest.raw)

    @property
    def llm_usage(self) -> dict[str, Any]:
        """LLM requests, cache hits, failures, tokens and cost since the bundle was loaded."""
        return dict(self._scorer.usage)

    @property
    def usage(self) -> dict[str, Any]:
        """The serving stage's cost since load: rows served, rows the gate answered without the LLM, LLM
        requests, cache hits, tokens (the server's own counts) and USD (price table or llm.price_per_million)."""
        from textclassify.runtime.cost import stage_cost

        with self._rows_lock:
            rows = dict(self._rows)
        serving = stage_cost(self._scorer.usage, self._scorer.model, self._scorer.settings.price_per_million)
        return {"serving": {**rows, **serving, "gate_threshold": self.gate_threshold}}

    @property
    def path(self) -> Path:
        return self._manifest.directory

    def __repr__(self) -> str:
        return (f"Bundle(path={str(self.path)!r}, labels={self.labels}, multi_label={self.multi_label}, "
                f"variant={self.variant!r}, providers={self.providers})")

    def predict(self, texts: Sequence[str], labels: Sequence[Any] | None = None) -> ClassificationResult:
        """Labels and probabilities for `texts`; metrics in metadata when true `labels` are given.

        metadata["llm_skipped"] lists the rows the gate answered without the LLM; metadata["degraded"] the
        rows whose LLM call failed and that the no-LLM head answered (on_llm_error="ml_only").
        metadata["timings_s"] holds the seconds this call spent per stage that ran: "tokenize" (encoding and
        padding), one entry per component graph ("encoder", "lexical"), "fusion", "gate", "llm", "calibrator",
        "recheck" (the int8 rows answered again in fp32) and "total" (the whole pipeline).
        """
        texts = validate_texts(texts)
        targets = None
        if labels is not None:
            targets = encode_true_labels(labels, len(texts), self.labels, self.multi_label)
        out = run_checked(self, texts)
        probs = out.probabilities
        predictions = decode_predictions(probs, self.labels, self.multi_label, self._manifest.thresholds)
        predictions = mark_nonfinite_rows(probs, predictions, out.degraded, out.reasons, self.on_llm_error)
        metadata: dict[str, Any] = {
            "degraded": out.degraded, "degraded_reasons": out.reasons, "llm_usage": out.usage,
            "llm_skipped": out.skipped, "gate_threshold": self.gate_threshold,
            "providers": self.providers, "variant": self.variant, "rechecked": out.rechecked,
            "timings_s": out.timings,
        }
        if targets is not None:
            pred_idx = encode_targets(predictions, self.labels, self.multi_label)
            metadata["metrics"] = classification_metrics(targets, pred_idx, self.labels, self.multi_label)
        return ClassificationResult(predictions=predictions, probabilities=probs, labels=self.labels,
                                    metadata=metadata)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities [n, C] in `labels` order (softmax for multi-class, sigmoids for multi-label)."""
        return check_finite_probabilities(run_checked(self, validate_texts(texts)).probabilities, self.on_llm_error)

    def close(self) -> None:
        """Release the LLM client (its HTTP connections and cache handle)."""
        self._scorer.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, texts: list[str]) -> _Answer:
        """The pipeline on validated texts: components, no-LLM answer, gate, LLM for the rest, fusion."""
        n, n_labels = len(texts), len(self._manifest.labels)
        if not texts:
            return _Answer(np.zeros((0, n_labels), np.float32))
        clock = _StageClock()
        with clock.stage("tokenize"):
            ids = self._tokenizer.encode(texts)  # before any LLM request: a tokenizer error costs nothing
        parts = self._run_components(self._model, texts, ids, np.arange(n), clock)
        with clock.stage("fusion"):
            no_llm = self._fuse(parts, np.zeros((n, n_labels), np.float32), np.zeros(n, np.float32))
        rechecked: set[int] = set()
        if self._recheck_model is not None and self.gate_threshold is not None:
            # int8 rows too close to a flip, of their answer or of the gate, are settled before the gate reads them
            with clock.stage("recheck"):
                rows = np.union1d(
                    rows_to_recheck(no_llm, self._recheck_margin_ml, self.multi_label, self._manifest.thresholds),
                    rows_near_gate(no_llm, self.gate_threshold, self._recheck_margin_ml, self.multi_label,
                                   self._manifest.thresholds))
                no_llm[rows] = self._refuse(rows, texts, ids, parts, rechecked, None)
        with clock.stage("gate"):
            probs_no_llm = logits_to_probabilities(no_llm, self.multi_label)
            skipped = skips_llm(confidence(probs_no_llm, self.multi_label, self._manifest.thresholds),
                                self.gate_threshold)
        logits = no_llm.copy()
        ask = np.flatnonzero(~skipped)
        failed: dict[int, LLMError] = {}
        usage: dict[str, Any] = {}
        calibrated = np.zeros((n, n_labels), np.float32)
        ok = np.zeros(n, dtype=bool)
        if len(ask):  # an all-gated batch sends no LLM request at all
            before = self._scorer.usage
            with clock.stage("llm"):
                raw, failed_local = self._llm_scores([texts[i] for i in ask])
            usage = usage_delta(self._scorer.usage, before)
            failed = {int(ask[i]): err for i, err in failed_local.items()}
            ok[ask] = True
            ok[list(failed)] = False
            raw = np.where(ok[ask][:, None], raw, np.float32(1.0 / n_labels)).astype(np.float32)  # placeholders
            with clock.stage("calibrator"):
                calibrated[ask] = self._calibrate(raw)
            rows = np.flatnonzero(ok)
            if len(rows):
                with clock.stage("fusion"):
                    logits[rows] = self._fuse({k: v[rows] for k, v in parts.items()}, calibrated[rows],
                                              np.ones(len(rows), np.float32))
        if self._recheck_model is not None:  # the answers served: with the LLM (fused margin) or without it
            with clock.stage("recheck"):
                margin = np.where(ok, self._recheck_margin, self._recheck_margin_ml)
                close = rows_to_recheck(logits, margin, self.multi_label, self._manifest.thresholds)
                close = np.array([r for r in close if int(r) not in rechecked], dtype=np.int64)
                logits[close] = self._refuse(close, texts, ids, parts, rechecked, (calibrated, ok))
        probs = logits_to_probabilities(logits, self.multi_label)
        with self._rows_lock:
            self._rows["rows"] += n
            self._rows["llm_skipped_rows"] += int(skipped.sum())
        return _Answer(probs, degraded=sorted(failed), reasons={i: str(e) for i, e in sorted(failed.items())},
                       usage=usage, rechecked=sorted(rechecked), skipped=[int(i) for i in np.flatnonzero(skipped)],
                       timings=clock.total())

    def _refuse(self, rows: np.ndarray, texts: list[str], ids: list[list[int]], parts: dict[str, np.ndarray],
                done: set[int], llm: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """Recheck `rows` with the fp32 encoder, then fuse them again: with their LLM scores where `llm`
        (calibrated, ok) says they have some, else without."""
        n_labels = len(self._manifest.labels)
        if not len(rows):
            return np.zeros((0, n_labels), np.float32)
        self._recheck_rows(rows, texts, ids, parts, done)
        sub = {k: v[rows] for k, v in parts.items()}
        if llm is None:
            return self._fuse(sub, np.zeros((len(rows), n_labels), np.float32), np.zeros(len(rows), np.float32))
        calibrated, ok = llm
        return self._fuse(sub, calibrated[rows], ok[rows].astype(np.float32))

    def _recheck_rows(self, rows: np.ndarray, texts: list[str], ids: list[list[int]], parts: dict[str, np.ndarray],
                      done: set[int]) -> None:
        """Rerun the fp32 encoder on `rows` and overwrite their encoder logits in `parts`."""
        if not len(rows):
            return
        encoder = next(s for s in self._components if s["name"] == "encoder")
        key = f"encoder.{next(iter(encoder['outputs']))}"
        fresh = self._run_component(self._recheck_model, encoder, texts, ids, np.asarray(rows))
        parts[key][rows] = fresh
        done.update(int(r) for r in rows)

    def _run_components(self, encoder: OnnxModel, texts: list[str], ids: list[list[int]],
                        rows: np.ndarray, clock: _StageClock | None = None) -> dict[str, np.ndarray]:
        """Each component's output [len(rows), C], keyed "step.output" as the fusion graph's inputs name them."""
        out: dict[str, np.ndarray] = {}
        for step in self._components:
            model = encoder if step["name"] == "encoder" else self._graphs[step["name"]]
            out[f"{step['name']}.{next(iter(step['outputs']))}"] = self._run_component(model, step, texts, ids, rows,
                                                                                        clock)
        return out

    def _run_component(self, model: OnnxModel, step: dict[str, Any], texts: list[str], ids: list[list[int]],
                       rows: np.ndarray, clock: _StageClock | None = None) -> np.ndarray:
        """One component on `rows`: batches sorted by token length (padded per batch), results in `rows` order.
        Padding counts as "tokenize" on `clock` and the graph's runs under the step's name (no clock: not kept)."""
        clock = clock or _StageClock()
        n, n_labels = len(rows), len(self._manifest.labels)
        output = next(iter(step["outputs"]))
        order = np.argsort(np.fromiter((len(ids[i]) for i in rows), dtype=np.int64, count=n), kind="stable")
        result = np.empty((n, n_labels), np.float32)
        for start in range(0, n, self.batch_size):
            local = order[start:start + self.batch_size]
            batch = rows[local]
            padded: tuple[np.ndarray, np.ndarray] | None = None
            feeds: dict[str, np.ndarray] = {}
            for name, spec in step["inputs"].items():
                source = spec["from"]
                if source == "texts":
                    feeds[name] = np.array([texts[i] for i in batch], dtype=object)
                else:
                    if padded is None:  # on CUDA widths rounded up to a multiple of 8 (fewer shapes, tensor cores)
                        with clock.stage("tokenize"):
                            padded = self._tokenizer.pad([ids[i] for i in batch],
                                                         multiple_of=CUDA_PAD_MULTIPLE if model.uses_cuda else 1)
                    feeds[name] = padded[0] if source == "tokenizer.input_ids" else padded[1]
            with clock.stage(step["name"]):
                (got,) = model.run(feeds, [output])
            result[local] = got
        return result

    def _fuse(self, parts: dict[str, np.ndarray], calibrated: np.ndarray, present: np.ndarray) -> np.ndarray:
        """fusion.onnx on component outputs, calibrated scores and llm_present, in chunks of FUSION_CHUNK rows."""
        step = self._fusion_step
        output = next(iter(step["outputs"]))
        cal_source = f"{self._calibrator_step['name']}.{self._cal_out}"
        n = len(present)
        result = np.empty((n, len(self._manifest.labels)), np.float32)
        for start in range(0, n, FUSION_CHUNK):
            part = slice(start, start + FUSION_CHUNK)
            feeds: dict[str, np.ndarray] = {}
            for name, spec in step["inputs"].items():
                source = spec["from"]
                if source == "llm.present":
                    feeds[name] = np.ascontiguousarray(present[part, None], dtype=np.float32)
                elif source == cal_source:
                    feeds[name] = np.ascontiguousarray(calibrated[part], dtype=np.float32)
                else:
                    feeds[name] = np.ascontiguousarray(parts[source][part], dtype=np.float32)
            (got,) = self._graphs[step["name"]].run(feeds, [output])
            result[part] = got
        return result

    def _llm_scores(self, texts: list[str]) -> tuple[np.ndarray, dict[int, LLMError]]:
        if not self._llm_started:
            with self._llm_lock:
                if not self._llm_started:
                    try:
                        return self._llm_call(texts)
                    finally:
                        self._llm_started = True
        return self._llm_call(texts)

    def _llm_call(self, texts: list[str]) -> tuple[np.ndarray, dict[int, LLMError]]:
        """Raw LLM scores [n, C] and the failed rows (ml_only), or the LLMError raised with a hint (raise)."""
        if self.on_llm_error == "ml_only":
            partial = self._scorer.score_partial(texts)
            failed = {int(i): partial.errors.get(int(i)) or LLMError("no LLM score")
                      for i in np.flatnonzero(~np.asarray(partial.ok))}
            return np.asarray(partial.scores, dtype=np.float32), failed
        try:
            return np.asarray(self._scorer.score(texts), dtype=np.float32), {}
        except LLMError as e:
            raise type(e)(
                f"{e} -- the bundle needs LLM scores; load it with on_llm_error='ml_only' to answer "
                "without the LLM (the no-LLM head) when the LLM cannot be reached.",
                provider=e.provider, model=e.model, text_index=e.text_index, status_code=e.status_code,
                request_id=e.request_id, last_response=e.last_response,
            ) from e

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        (out,) = self._graphs[self._calibrator_step["name"]].run({self._cal_in: raw}, [self._cal_out])
        return np.asarray(out, dtype=np.float32)

    def _sessions(self) -> list[OnnxModel]:
        """Every ONNX Runtime session this bundle runs (what the CUDA fallback check reads)."""
        return [*self._graphs.values(), *([self._recheck_model] if self._recheck_model is not None else [])]

    def _warm_up(self) -> None:
        """One run of each session so the first request does not pay for lazy initialisation.

        On CUDA at the largest shape served, (batch_size, max_length): the arena is grown and the kernels
        chosen before the first request. On the CPU one short text, which keeps cold start short.
        """
        n_labels = len(self._manifest.labels)
        sample = self._tokenizer.encode(["warm up"])
        for model in (self._model, self._recheck_model):
            if model is None:
                continue
            rows, ids = 1, sample
            if model.uses_cuda:
                rows = self.batch_size
                ids = warm_up_rows(sample[0], rows, self._manifest.max_length)
            calibrated = self._calibrate(np.full((rows, n_labels), 1.0 / n_labels, np.float32))
            parts = self._run_components(model, ["warm up"] * rows, ids, np.arange(rows))
            fused = self._fuse(parts, calibrated, np.ones(rows, np.float32))
            for name, value in {**parts, self._fusion_step["name"]: fused, "calibrator": calibrated}.items():
                if value.shape != (rows, n_labels):
                    raise BundleError(f"{name}: output has shape {value.shape}; expected ({rows}, {n_labels}) for "
                                      f"the manifest's {n_labels} labels.")


def _check_arguments(variant: Any, on_llm_error: Any, batch_size: Any, intra_op_num_threads: Any,
                     llm_api_key: Any, llm_base_url: Any) -> None:
    if variant not in VARIANT_CHOICES:
        raise ConfigError(f"'variant' must be one of {list(VARIANT_CHOICES)} (got {variant!r}).")
    if on_llm_error not in ON_LLM_ERROR_CHOICES:
        raise ConfigError(f"'on_llm_error' must be one of {list(ON_LLM_ERROR_CHOICES)} (got {on_llm_error!r}).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"'batch_size' must be a positive int (got {batch_size!r}).")
    if intra_op_num_threads is not None and (isinstance(intra_op_num_threads, bool)
                                             or not isinstance(intra_op_num_threads, int)
                                             or intra_op_num_threads < 1):
        raise ConfigError(f"'intra_op_num_threads' must be None or a positive int (got {intra_op_num_threads!r}).")
    if llm_api_key is not None and (not isinstance(llm_api_key, str) or not llm_api_key):
        raise ConfigError("'llm_api_key' must be None or a non-empty string.")  # never echo a key
    if llm_base_url is not None and (not isinstance(llm_base_url, str)
                                     or not llm_base_url.startswith(("http://", "https://"))):
        raise ConfigError(f"'llm_base_url' must be None or an http(s) URL (got {llm_base_url!r}).")


def _check_gate_argument(llm_gate: Any) -> None:
    if isinstance(llm_gate, str) and llm_gate in GATE_CHOICES:
        return
    if isinstance(llm_gate, bool) or not isinstance(llm_gate, (int, float)) or not 0.0 <= float(llm_gate) <= 1.0:
        raise ConfigError(f"'llm_gate' must be 'manifest', 'off' or a threshold in [0, 1] (got {llm_gate!r}).")


def _llm_settings(manifest: BundleManifest, base_url: str | None, max_concurrency: int | None = None) -> LLMSettings:
    """The training-time LLM settings from the manifest (so the cache key matches); base URL and concurrency
    overridable by the caller."""
    fields = {k: v for k, v in manifest.llm.items() if k in _LLM_FIELDS}
    if base_url is not None:
        fields["base_url"] = base_url
    try:
        settings = LLMSettings(**fields)
    except (ConfigError, TypeError) as e:
        raise BundleError(f"{K.MANIFEST_FILE} 'llm': {e}") from None
    if max_concurrency is None:
        return settings
    return dataclasses.replace(settings, max_concurrency=max_concurrency)  # LLMSettings checks the value


def _open_model(manifest: BundleManifest, variant: str, plan: ProviderPlan, spinning: bool) -> OnnxModel:
    """The encoder graph in the chosen variant."""
    step = next(s for s in manifest.pipeline if s["name"] == "encoder")
    return _open_step(manifest, step, manifest.variants[variant], plan, spinning=spinning)


def _open_step(manifest: BundleManifest, step: dict[str, Any], name: str, plan: ProviderPlan, *,
               spinning: bool = True, threads: int | None = None) -> OnnxModel:
    """A session on one pipeline graph, its inputs and outputs as the manifest names them."""
    with opened_verified(manifest, name) as path:
        return plan.open(name, path, list(step["inputs"]), list(step["outputs"]), spinning=spinning, threads=threads)


class _StageClock:
    """Seconds per pipeline stage of one `_run` call (a stage run twice, such as fusion, adds up)."""

    __slots__ = ("_began", "seconds")

    def __init__(self) -> None:
        self._began = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self._began}


@dataclasses.dataclass
class _Answer:
    """What one pipeline run gives: probabilities and, per row index, what happened on the way."""

    probabilities: np.ndarray
    degraded: list[int] = dataclasses.field(default_factory=list)
    reasons: dict[int, str] = dataclasses.field(default_factory=dict)
    usage: dict[str, Any] = dataclasses.field(default_factory=dict)
    rechecked: list[int] = dataclasses.field(default_factory=list)
    skipped: list[int] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per stage (_StageClock)


__all__ = ["Bundle", "load_bundle"]
