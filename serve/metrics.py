"""Prometheus metrics of one server (its own registry, so two apps in one process never share counters)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# LLM usage counters (runtime.llm) exported per batch, under the event names the metric uses
_LLM_EVENTS = {"requests": "calls", "cache_hits": "cache_hits", "failures": "failures", "retries": "retries"}
# Bundle.predict's metadata["timings_s"] stages, mapped onto the stage label ("total" is the batcher's own
# "inference"); "graphs" is also observed as the sum of every ONNX graph's stage, the coarse view.
_BUNDLE_STAGES = {"tokenize": "tokenise", "encoder": "encoder", "lexical": "lexical", "fusion": "fusion",
                  "gate": "gate", "llm": "llm", "calibrator": "calibrator", "recheck": "recheck"}
_GRAPH_STAGES = ("encoder", "lexical", "fusion", "calibrator", "recheck")


class ServeMetrics:
    """Requests, batch sizes, queue depth, per-stage latency, LLM events and degraded rows."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("textclassify_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.batch_size = Histogram("textclassify_batch_size", "Rows per batch run by the model",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("textclassify_queue_depth", "Rows waiting for a batch", ["model"], registry=r)
        self.stage = Histogram("textclassify_stage_seconds",
                               "Latency per stage: queue (per row); inference (the bundle call), tokenise, "
                               "encoder, lexical, fusion, gate, llm, calibrator, recheck and graphs (every ONNX "
                               "graph) per batch; total (per request)", ["model", "stage"],
                               buckets=SECONDS_BUCKETS, registry=r)
        self.rows = Counter("textclassify_rows", "Rows answered", ["model"], registry=r)
        self.deduplicated = Counter("textclassify_deduplicated_rows",
                                    "Rows answered by an identical text already in flight", ["model"], registry=r)
        self.llm = Counter("textclassify_llm_events", "LLM calls, cache hits, skips (rows the gate answered "
                           "without the LLM), retries and failures", ["model", "event"], registry=r)
        self.degraded = Counter("textclassify_degraded_rows", "Rows answered without the LLM after it failed",
                                ["model"], registry=r)

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(self, name)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ModelMetrics:
    """The batcher's view of ServeMetrics: everything labelled with one model name."""

    def __init__(self, metrics: ServeMetrics, model: str) -> None:
        self._m = metrics
        self.model = model

    def queue_depth(self, rows: int) -> None:
        self._m.queue_depth.labels(self.model).set(rows)

    def deduplicated(self, rows: int) -> None:
        if rows:
            self._m.deduplicated.labels(self.model).inc(rows)

    def request_seconds(self, seconds: float) -> None:
        self._m.stage.labels(self.model, "total").observe(seconds)

    def batch(self, size: int, queue_waits: Sequence[float], seconds: float, metadata: Mapping[str, Any]) -> None:
        """One finished batch: its size, each row's wait, its run time and the bundle's metadata."""
        m, model = self._m, self.model
        m.batch_size.labels(model).observe(size)
        m.rows.labels(model).inc(size)
        queue = m.stage.labels(model, "queue")
        for wait in queue_waits:
            queue.observe(wait)
        m.stage.labels(model, "inference").observe(seconds)
        timings = {k: float(v) for k, v in (metadata.get("timings_s") or {}).items()
                   if k in _BUNDLE_STAGES and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key, value in timings.items():
            m.stage.labels(model, _BUNDLE_STAGES[key]).observe(value)
        graphs = [timings[k] for k in _GRAPH_STAGES if k in timings]
        if graphs:
            m.stage.labels(model, "graphs").observe(sum(graphs))
        usage = metadata.get("llm_usage") or {}
        for key, event in _LLM_EVENTS.items():
            value = usage.get(key)
            if isinstance(value, (int, float)) and value > 0:
                m.llm.labels(model, event).inc(value)
        skipped = len(metadata.get("llm_skipped") or [])
        if skipped:
            m.llm.labels(model, "skips").inc(skipped)
        degraded = len(metadata.get("degraded") or [])
        if degraded:
            m.degraded.labels(model).inc(degraded)


__all__ = ["ModelMetrics", "ServeMetrics"]
