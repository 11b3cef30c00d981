"""load_bundle and Bundle: serve a verified bundle with ONNX Runtime and the cached LLM client (no torch)."""
from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from textclassify.runtime import constants as K
from textclassify.runtime.decoding import decode_predictions, encode_targets, logits_to_probabilities
from textclassify.runtime.errors import BundleError, ConfigError, DataError, LLMError
from textclassify.runtime.llm import LLMScorer, LLMSettings
from textclassify.runtime.llm.usage import usage_delta
from textclassify.runtime.manifest import BundleManifest, load_manifest, opened_verified
from textclassify.runtime.metrics import classification_metrics
from textclassify.runtime.recheck import rows_to_recheck
from textclassify.runtime.sessions import CPU, CUDA, OnnxModel, resolve_providers, session_options
from textclassify.runtime.tokenization import BundleTokenizer
from textclassify.runtime.types import ClassificationResult
from textclassify.runtime.validation import validate_texts

VARIANT_CHOICES = ("auto", "fp32", "int8", "fp16")
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
) -> Bundle:
    """Verify a bundle (manifest, names, sizes, sha256), open its ONNX sessions, warm them up, return a Bundle.

    With variant="int8" and `int8_recheck`, model.onnx is opened too and answers again the rows whose int8
    decision is within the manifest's recheck margin of flipping (see runtime.recheck).
    """
    _check_arguments(variant, on_llm_error, batch_size, intra_op_num_threads, llm_api_key, llm_base_url)
    if not isinstance(int8_recheck, bool):
        raise ConfigError(f"'int8_recheck' must be True or False (got {int8_recheck!r}).")
    manifest = load_manifest(path)  # every check on the files happens here, before ONNX Runtime sees any
    settings = _llm_settings(manifest, llm_base_url)
    provider_list = resolve_providers(providers)
    chosen = _choose_variant(variant, manifest, CUDA in provider_list)
    wants_recheck = chosen == "int8" and int8_recheck and manifest.int8_recheck_margin is not None
    # int8 and its fp32 recheck take turns on the same cores: no threads spinning in one while the other
    # runs. On MiniLM this took 0.05 s off a 0.41 s cold start; throughput moved less than its noise.
    options = session_options(intra_op_num_threads, spinning=not wants_recheck)
    # The calibrator is a tiny [B, C] graph: one thread, so no intra-op pool spins beside the model's.
    calibrator_options = session_options(1)
    # The graphs' sessions are built on worker threads (ONNX Runtime releases the GIL while it parses and
    # initialises) while this thread builds the tokenizer and the calibrator: on 2 cores the MiniLM int8 and
    # fp32 recheck sessions were built in 0.13-0.16 s instead of 0.19-0.20 s one after the other.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="textclassify-load") as pool:
        pending_model = pool.submit(_open_model, manifest, chosen, provider_list, options)
        pending_recheck = pool.submit(_open_model, manifest, "fp32", provider_list, options) if wants_recheck else None
        tokenizer = BundleTokenizer.from_manifest(manifest)
        cal = manifest.calibrator
        # On CPU even with CUDA: for a [B, C] graph that costs less than two device copies per call.
        with opened_verified(manifest, cal["file"]) as cal_source:
            calibrator = OnnxModel(cal["file"], cal_source, [CPU], calibrator_options, [cal["input"]],
                                   [cal["output"]])
        model = pending_model.result()
        recheck = None
        if pending_recheck is not None:
            fused, ml = manifest.int8_recheck_margin, manifest.int8_recheck_margin_ml
            recheck = (pending_recheck.result(), fused, fused if ml is None else ml)
    if not model.uses_cuda and CUDA in provider_list:
        if providers == "cuda":
            raise ConfigError(f"providers='cuda' but ONNX Runtime could not use CUDA on this machine (providers "
                              f"in use: {model.providers}); its log above says why.")
        if variant == "auto" and chosen == "fp16":  # onnxruntime-gpu fell back to CPU: fp16 is a CUDA variant
            chosen = "fp32"
            model = _open_model(manifest, chosen, provider_list, options)
    scorer = LLMScorer(settings, manifest.labels, manifest.multi_label,
                       cache_dir=None if cache_dir is None else os.fspath(cache_dir), api_key=llm_api_key)
    bundle = Bundle(manifest=manifest, tokenizer=tokenizer, calibrator=calibrator, model=model, scorer=scorer,
                    variant=chosen, on_llm_error=on_llm_error, batch_size=batch_size, recheck=recheck)
    try:
        bundle._warm_up()
    except BaseException:
        bundle.close()
        raise
    return bundle


class Bundle:
    """A loaded bundle: `predict` / `predict_proba` on lists of texts; safe to call from many threads."""

    def __init__(self, *, manifest: BundleManifest, tokenizer: BundleTokenizer, calibrator: OnnxModel,
                 model: OnnxModel, scorer: Any, variant: str, on_llm_error: str, batch_size: int,
                 recheck: tuple[OnnxModel, float, float] | None = None) -> None:
        self._manifest = manifest
        self._tokenizer = tokenizer
        self._calibrator = calibrator
        self._model = model
        # model.onnx and the recheck margins for rows decided by fused_logits and by ml_logits (no LLM score)
        self._recheck_model, self._recheck_margin, self._recheck_margin_ml = recheck or (None, None, None)
        self._scorer = scorer
        self.variant = variant
        self.on_llm_error = on_llm_error
        self.batch_size = batch_size
        self._cal_in, self._cal_out = manifest.calibrator["input"], manifest.calibrator["output"]
        # LLMScorer starts its event-loop thread lazily on the first call and that start is not
        # thread-safe; the first call goes under this lock, later ones run concurrently.
        self._llm_lock = threading.Lock()
        self._llm_started = False

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
        """Execution providers ONNX Runtime actually uses for model.onnx (not merely those requested)."""
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
    def path(self) -> Path:
        return self._manifest.directory

    def __repr__(self) -> str:
        return (f"Bundle(path={str(self.path)!r}, labels={self.labels}, multi_label={self.multi_label}, "
                f"variant={self.variant!r}, providers={self.providers})")

    def predict(self, texts: Sequence[str], labels: Sequence[Any] | None = None) -> ClassificationResult:
        """Labels and probabilities for `texts`; metrics in metadata when true `labels` are given."""
        texts = validate_texts(texts)
        targets = None
        if labels is not None:
            targets = self._encode_labels(labels, len(texts))
        probs, degraded, reasons, usage, rechecked = self._infer(texts)
        predictions = decode_predictions(probs, self.labels, self.multi_label, self._manifest.thresholds)
        metadata: dict[str, Any] = {
            "degraded": degraded, "degraded_reasons": reasons, "llm_usage": usage,
            "providers": self.providers, "variant": self.variant, "rechecked": rechecked,
        }
        if targets is not None:
            pred_idx = encode_targets(predictions, self.labels, self.multi_label)
            metadata["metrics"] = classification_metrics(targets, pred_idx, self.labels, self.multi_label)
        return ClassificationResult(predictions=predictions, probabilities=probs, labels=self.labels,
                                    metadata=metadata)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities [n, C] in `labels` order (softmax for multi-class, sigmoids for multi-label)."""
        return self._infer(validate_texts(texts))[0]

    def close(self) -> None:
        """Release the LLM client (its HTTP connections and cache handle)."""
        self._scorer.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _encode_labels(self, labels: Sequence[Any], n: int) -> np.ndarray:
        if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
            raise DataError(f"'labels' must be a list with one entry per text (got {type(labels).__name__}).")
        if len(labels) != n:
            raise DataError(f"'labels' has {len(labels)} entries but there are {n} texts; they must match.")
        try:
            return encode_targets(labels, self.labels, self.multi_label)
        except ValueError as e:
            raise DataError(str(e)) from None

    def _infer(self, texts: list[str]) -> tuple[np.ndarray, list[int], dict[int, str], dict[str, Any], list[int]]:
        """Probabilities, degraded row indices, their reasons, LLM usage and rechecked rows for validated texts."""
        n_labels = len(self._manifest.labels)
        if not texts:
            return np.zeros((0, n_labels), np.float32), [], {}, {}, []
        ids = self._tokenizer.encode(texts)  # before any LLM request: a tokenizer error costs nothing
        before = self._scorer.usage
        raw, failed = self._llm_scores(texts)
        usage = usage_delta(self._scorer.usage, before)
        ok = np.ones(len(texts), dtype=bool)
        ok[list(failed)] = False
        raw = np.where(ok[:, None], raw, np.float32(1.0 / n_labels)).astype(np.float32)  # placeholder rows
        calibrated = self._calibrate(raw)
        ml_logits, fused_logits = self._run_model(self._model, ids, calibrated)
        logits = np.where(ok[:, None], fused_logits, ml_logits)
        rechecked = self._recheck(ids, calibrated, ok, logits)
        probs = logits_to_probabilities(logits, self.multi_label)
        reasons = {i: str(err) for i, err in sorted(failed.items())}
        return probs, sorted(failed), reasons, usage, rechecked

    def _recheck(self, ids: list[list[int]], calibrated: np.ndarray, ok: np.ndarray, logits: np.ndarray) -> list[int]:
        """Rerun through model.onnx the int8 rows too close to a flip; overwrites their `logits`, returns them."""
        if self._recheck_model is None:
            return []
        margin = np.where(ok, self._recheck_margin, self._recheck_margin_ml)
        rows = rows_to_recheck(logits, margin, self.multi_label, self._manifest.thresholds)
        if len(rows):
            ml, fused = self._run_model(self._recheck_model, [ids[i] for i in rows], calibrated[rows])
            logits[rows] = np.where(ok[rows, None], fused, ml)
        return [int(i) for i in rows]

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
                "from the encoder alone when the LLM cannot be reached.",
                provider=e.provider, model=e.model, text_index=e.text_index, status_code=e.status_code,
                request_id=e.request_id, last_response=e.last_response,
            ) from e

    def _calibrate(self, raw: np.ndarray) -> np.ndarray:
        (out,) = self._calibrator.run({self._cal_in: raw}, [self._cal_out])
        return np.asarray(out, dtype=np.float32)

    def _run_model(self, model: OnnxModel, ids: list[list[int]],
                   calibrated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ml_logits and fused_logits [n, C] in input order; batches sorted by length, padded per batch."""
        n, n_labels = len(ids), calibrated.shape[1]
        order = np.argsort(np.fromiter((len(r) for r in ids), dtype=np.int64, count=n), kind="stable")
        ml = np.empty((n, n_labels), np.float32)
        fused = np.empty((n, n_labels), np.float32)
        for start in range(0, n, self.batch_size):
            rows = order[start:start + self.batch_size]
            input_ids, attention_mask = self._tokenizer.pad([ids[i] for i in rows])
            out_ml, out_fused = model.run(
                {"input_ids": input_ids, "attention_mask": attention_mask, "llm_scores": calibrated[rows]},
                K.OUTPUT_NAMES,
            )
            ml[rows], fused[rows] = out_ml, out_fused
        return ml, fused

    def _warm_up(self) -> None:
        """One tiny run of each session so the first request does not pay for lazy initialisation."""
        n_labels = len(self._manifest.labels)
        calibrated = self._calibrate(np.full((1, n_labels), 1.0 / n_labels, np.float32))
        for model in (self._model, self._recheck_model):
            if model is None:
                continue
            ml, fused = self._run_model(model, self._tokenizer.encode(["warm up"]), calibrated)
            if ml.shape != (1, n_labels) or fused.shape != (1, n_labels):
                raise BundleError(f"{model.name}: outputs have shape {ml.shape} and {fused.shape}; "
                                  f"expected (1, {n_labels}) for the manifest's {n_labels} labels.")




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


def _llm_settings(manifest: BundleManifest, base_url: str | None) -> LLMSettings:
    """The training-time LLM settings from the manifest (so the cache key matches), base URL overridable."""
    fields = {k: v for k, v in manifest.llm.items() if k in _LLM_FIELDS}
    if base_url is not None:
        fields["base_url"] = base_url
    try:
        return LLMSettings(**fields)
    except (ConfigError, TypeError) as e:
        raise BundleError(f"{K.MANIFEST_FILE} 'llm': {e}") from None


def _open_model(manifest: BundleManifest, variant: str, providers: list[str], options: Any) -> OnnxModel:
    name = manifest.variants[variant]
    with opened_verified(manifest, name) as path:
        return OnnxModel(name, path, providers, options, K.INPUT_NAMES, K.OUTPUT_NAMES)


def _choose_variant(requested: str, manifest: BundleManifest, on_cuda: bool) -> str:
    if requested == "auto":
        return "fp16" if on_cuda and "fp16" in manifest.variants else "fp32"
    if requested not in manifest.variants:
        raise ConfigError(f"variant {requested!r} is not in this bundle (it has {sorted(manifest.variants)}).")
    return requested


__all__ = ["Bundle", "load_bundle"]
