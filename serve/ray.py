"""fusion-serve's HTTP API on Ray Serve: the same Starlette app (serve.app), batched with `@serve.batch`.

    serve run textclassify.serve.ray:app bundle=bundles/v1 max_replicas=4 gpus_per_replica=1

`app(args)` is a Ray Serve application builder: `serve run` and a `serve deploy` config file pass it
string arguments (ARGUMENTS lists them). Each replica loads the bundle once and builds fusion-serve's app
over it with a Predictor whose rows go through one `@serve.batch` method, so the rows of concurrent requests
run as one `Bundle.predict` call. Replicas autoscale between `min_replicas` and `max_replicas` on
`target_ongoing_requests` (requests in flight per replica); `gpus_per_replica` reserves GPUs for each
replica and serves on CUDA. Ray Serve's proxy replaces uvicorn; everything else (endpoints, errors,
metrics, validation) is fusion-serve's own code.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from textclassify.runtime.errors import ConfigError, require

try:
    from ray import serve
except ImportError:  # pragma: no cover - the message names the extra
    require("ray", "ray")

from textclassify.runtime.llm.usage import usage_sum
from textclassify.serve.app import create_app
from textclassify.serve.batcher import Answer, QueueFullError, RequestTimeoutError, RowAnswer
from textclassify.serve.metrics import ModelMetrics
from textclassify.serve.settings import ServeSettings, encoder_run_rows

# name -> (type, default, what it is); `serve run ... key=value` and a config file's `args:` use these names.
ARGUMENTS: dict[str, tuple[type, Any, str]] = {
    "bundle": (str, None, "bundle directory (required)"),
    "name": (str, None, "model name in the URLs (default: the bundle folder's name)"),
    "min_replicas": (int, 1, "fewest replicas"),
    "max_replicas": (int, 1, "most replicas"),
    "target_ongoing_requests": (float, 16.0, "requests in flight per replica that autoscaling aims at"),
    "max_ongoing_requests": (int, 64, "requests in flight one replica accepts (at least max_batch_size)"),
    "cpus_per_replica": (float, 1.0, "CPUs Ray reserves per replica"),
    "gpus_per_replica": (float, 0.0, "GPUs Ray reserves per replica (> 0: providers default to cuda)"),
    "max_batch_size": (int, 32, "rows per @serve.batch call"),
    "encoder_batch_size": (int, None, "rows per encoder run in a batch (default: the batch on CUDA, 8 on the CPU)"),
    "batch_wait_timeout_ms": (float, 5.0, "how long a batch waits to fill"),
    "providers": (str, None, "auto | cpu | cuda (default: cuda with GPUs, else auto)"),
    "variant": (str, "auto", "auto | fp32 | int8 | fp16"),
    "on_llm_error": (str, "raise", "raise | ml_only"),
    "llm_base_url": (str, None, "override the bundle's LLM endpoint"),
    "cache_dir": (str, None, "LLM score cache directory (default: the runtime's)"),
    "llm_concurrency": (int, None, "LLM requests in flight per replica"),
    "timeout_s": (float, 30.0, "a request's time limit (504 after it)"),
    "max_texts": (int, 256, "texts per request at most"),
    "token_env": (str, None, "environment variable on the replicas holding the bearer token"),
}


class _BatchPredictor:
    """serve.batcher.Predictor over a replica's `@serve.batch` method: one call per row, Ray Serve batches them."""

    def __init__(self, replica: FusionServe, max_queue: int) -> None:
        self._replica = replica
        self._max_queue = max_queue
        self._waiting = 0
        self._closing = False

    async def predict(self, texts: Sequence[str], timeout_s: float) -> Answer:
        if self._closing:
            raise QueueFullError("the server is shutting down")
        if self._waiting + len(texts) > self._max_queue:
            raise QueueFullError(f"{self._waiting} rows are waiting and the queue holds at most {self._max_queue}")
        self._waiting += len(texts)
        try:
            rows = await asyncio.wait_for(asyncio.gather(*(self._replica.predict_row(t) for t in texts)), timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"no answer within {timeout_s:g} s") from None
        finally:
            self._waiting -= len(texts)
        return Answer(list(rows), usage_sum({r.batch: r.batch_usage for r in rows}.values()))  # once per batch

    def queue_depth(self) -> int:
        return self._waiting

    async def close(self, timeout_s: float) -> None:
        self._closing = True
        deadline = time.monotonic() + timeout_s
        while self._waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


@serve.deployment
@serve.ingress()
class FusionServe:
    """One replica: a loaded bundle, fusion-serve's app over it, and the batched predict method."""

    def __init__(self, bundle_dir: str, name: str, load_options: dict[str, Any], settings: dict[str, Any],
                 max_batch_size: int, batch_wait_timeout_s: float, token_env: str | None = None,
                 encoder_batch_size: int | None = None) -> None:
        from textclassify.runtime.bundle import load_bundle

        token = os.environ.get(token_env) if token_env else None
        if token_env and not token:
            raise ConfigError(f"token_env={token_env!r}: that environment variable is not set on this replica.")
        self._settings = ServeSettings(**settings, token=token)
        self._name = name
        self._bundle = load_bundle(bundle_dir, **load_options)
        # loaded (and warmed up) at the merged batch's size; the encoder runs it as fusion-serve does
        self._bundle.batch_size = encoder_run_rows(self._bundle.providers, max_batch_size, encoder_batch_size)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textclassify-ray-serve")
        self._metrics: ModelMetrics | None = None
        self._batches = 0
        self.predict_row.set_max_batch_size(max_batch_size)
        self.predict_row.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def __serve_build_asgi_app__(self) -> Any:
        """Ray Serve calls this after __init__: fusion-serve's app, with this replica's batching plugged in."""
        def factory(name: str, bundle: Any, metrics: ModelMetrics) -> _BatchPredictor:
            self._metrics = metrics
            return _BatchPredictor(self, self._settings.max_queue)

        return create_app({self._name: self._bundle}, self._settings, predictor_factory=factory)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_row(self, texts: list[str]) -> list[RowAnswer]:
        """The texts of concurrent requests, as one Bundle.predict call on a worker thread."""
        loop = asyncio.get_running_loop()
        self._batches += 1
        batch_id, start = self._batches, loop.time()
        result = await loop.run_in_executor(self._executor, self._bundle.predict, list(texts))
        meta = result.metadata
        reasons = meta.get("degraded_reasons") or {}
        degraded, skipped = set(meta.get("degraded") or []), set(meta.get("llm_skipped") or [])
        usage = {k: v for k, v in (meta.get("llm_usage") or {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        probs = np.asarray(result.probabilities, dtype=np.float32)
        if self._metrics is not None:
            self._metrics.batch(len(texts), [], loop.time() - start, meta)
        return [RowAnswer(result.predictions[i], probs[i],
                          (str(reasons.get(i) or reasons.get(str(i)) or "the LLM failed") if i in degraded else None),
                          i in skipped, batch_id, usage) for i in range(len(texts))]

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
        bundle = getattr(self, "_bundle", None)
        if bundle is not None:
            bundle.close()


def parse_arguments(args: Mapping[str, Any]) -> dict[str, Any]:
    """ARGUMENTS' values from `serve run` strings (or a config file's typed values); ConfigError naming the key."""
    given = {str(k).replace("-", "_"): v for k, v in args.items()}
    unknown = sorted(set(given) - set(ARGUMENTS))
    if unknown:
        raise ConfigError(f"textclassify.serve.ray:app: unknown argument(s) {unknown}; known: {sorted(ARGUMENTS)}.")
    out: dict[str, Any] = {}
    for key, (kind, default, _) in ARGUMENTS.items():
        value = given.get(key, default)
        if value is not None and not isinstance(value, kind):
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"textclassify.serve.ray:app: {key} must be {kind.__name__} (got {value!r}).") \
                    from None
        out[key] = value
    if not out["bundle"]:
        raise ConfigError("textclassify.serve.ray:app needs bundle=DIR (the bundle directory).")
    if not 0 <= out["min_replicas"] <= out["max_replicas"] or out["max_replicas"] < 1:
        raise ConfigError(f"textclassify.serve.ray:app: need 0 <= min_replicas <= max_replicas and max_replicas >= 1 "
                          f"(got {out['min_replicas']} and {out['max_replicas']}).")
    for key in ("max_batch_size", "encoder_batch_size"):
        if out[key] is not None and out[key] < 1:
            raise ConfigError(f"textclassify.serve.ray:app: {key} must be at least 1 (got {out[key]}).")
    if out["max_ongoing_requests"] < out["max_batch_size"]:
        raise ConfigError(f"textclassify.serve.ray:app: max_ongoing_requests ({out['max_ongoing_requests']}) must be "
                          f"at least max_batch_size ({out['max_batch_size']}), or batches never fill.")
    return out


def app(args: Mapping[str, Any]) -> Any:
    """The Ray Serve application builder: `serve run textclassify.serve.ray:app bundle=DIR [key=value ...]`."""
    a = parse_arguments(args)
    from textclassify.runtime.manifest import load_manifest

    load_manifest(a["bundle"])  # a broken bundle stops here, before any replica starts
    bundle_dir = str(Path(a["bundle"]).expanduser().absolute())
    providers = a["providers"] or ("cuda" if a["gpus_per_replica"] > 0 else "auto")
    load_options: dict[str, Any] = {"providers": providers, "variant": a["variant"], "on_llm_error": a["on_llm_error"],
                                    "llm_base_url": a["llm_base_url"], "llm_max_concurrency": a["llm_concurrency"],
                                    "batch_size": a["max_batch_size"],
                                    "intra_op_num_threads": max(1, int(a["cpus_per_replica"]))}
    if a["cache_dir"] is not None:
        load_options["cache_dir"] = a["cache_dir"]
    settings = {"max_batch_size": a["max_batch_size"], "max_delay_ms": a["batch_wait_timeout_ms"],
                "timeout_s": a["timeout_s"], "max_texts": a["max_texts"], "workers": 1}
    deployment = FusionServe.options(
        autoscaling_config={"min_replicas": a["min_replicas"], "max_replicas": a["max_replicas"],
                            "target_ongoing_requests": a["target_ongoing_requests"]},
        max_ongoing_requests=a["max_ongoing_requests"],
        ray_actor_options={"num_cpus": a["cpus_per_replica"], "num_gpus": a["gpus_per_replica"]},
    )
    return deployment.bind(bundle_dir, a["name"] or Path(bundle_dir).name, load_options, settings,
                           a["max_batch_size"], a["batch_wait_timeout_ms"] / 1000.0, a["token_env"],
                           a["encoder_batch_size"])


__all__ = ["ARGUMENTS", "FusionServe", "app", "parse_arguments"]
