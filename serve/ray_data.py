"""Batch scoring on Ray Data: `fusion-predict --engine ray` (and `predict_dataset` for Python callers).

    read (CSV, JSONL or Parquet; file, folder or glob) -> map_batches over a fixed pool of bundle workers
    (one loaded bundle per actor) -> write a folder of Parquet (default), CSV or JSONL

Every input column is kept and `prediction`, `prob_<label>`, `degraded` and `llm_skipped` are added. Before
any bundle loads, each input file is scanned for rows without text (serve.ray_inputs). The result is
written to a hidden staging folder beside the output and renamed into place only when every input row is
in it exactly once, so a failed run leaves no half-written output and an existing one untouched.

Ray restarts a killed worker and retries its batches (Ray Data's actor pool defaults: max_restarts -1,
max_task_retries -1); the count check at the end proves that no row was lost or written twice.
`llm_concurrency` is a cap on LLM requests in flight across the whole pool: each actor's LLM client gets
an equal share (cap // workers), so the cap holds however the batches fall.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from textclassify.runtime import constants as K
from textclassify.runtime.atomic import write_atomic
from textclassify.runtime.errors import ConfigError, DataError, TextClassifyError, require
from textclassify.runtime.llm.usage import usage_sum
from textclassify.serve.ray_inputs import csv_read_options, describe_bad_row, resolve_inputs, scan_file, text_problem

try:
    import ray
except ImportError:  # pragma: no cover - the message names the extra
    require("ray", "ray")

OUTPUT_FORMATS = ("parquet", "csv", "jsonl")
ON_BAD_ROW_CHOICES = ("raise", "skip")
SUMMARY_SUFFIX = ".summary.json"
ERRORS_SUFFIX = ".errors"
# Reading, scanning and writing are light next to inference: they take no CPU from the actors' budget.
# With the default of one CPU per actor and as many actors as CPUs, a read task asking for a CPU would
# wait forever for one (measured: Ray Data 2.60 stalls with 2 actors and num_cpus=2).
IO_TASK_CPUS = 0
# Read and write tasks in flight at once, per this many actors (at least one). A CPU-free task still
# runs in a worker process of its own, and starting one costs more CPU than the task; on 2 cores one at a
# time scored faster than two or than no limit (figures: benchmarks/README.md). 8 is not measured: on
# larger pools it keeps reading and writing ahead of scoring without a process per actor.
ACTORS_PER_IO_TASK = 8
# A local Ray keeps an idle worker process for a minute instead of Ray's default second: the read and
# write tasks come a few seconds apart, and each new process for them costs more CPU than the task
# (figures: benchmarks/README.md).
LOCAL_RAY_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 60_000}
BLOCKS_PER_ACTOR = 4  # so that the last blocks spread over the pool
MIN_BLOCK_BYTES, MAX_BLOCK_BYTES = 1024, 128 * 1024 * 1024  # the upper one is Ray Data's default
_SUFFIX_OF = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}


def output_columns(labels: list[str]) -> list[str]:
    """The columns the run adds to each input row, in order."""
    return ["prediction"] + [f"prob_{label}" for label in labels] + ["degraded", "llm_skipped"]


def predict_dataset(
    bundle_dir: str, input_spec: str, output_dir: str, *, text_column: str = "text", workers: int = 2,
    batch_size: int = K.DEFAULT_BATCH_SIZE, output_format: str = "parquet", on_bad_row: str = "raise",
    overwrite: bool = False, ray_address: str | None = None, num_cpus: int | None = None,
    cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0, llm_concurrency: int | None = None,
    load_options: dict[str, Any] | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Score every row of INPUT_SPEC on Ray and write OUTPUT_DIR plus OUTPUT_DIR.summary.json; returns the summary.

    `batch_size` is the ONNX Runtime batch, as in single-process fusion-predict; a Ray Data batch (one
    `Bundle.predict` call) is fusion-predict's chunk, K.PREDICT_CHUNK_ROWS rows (fewer on a small input, see
    `batch_rows`; never fewer than `batch_size`), so texts are sorted by length over the whole chunk before
    padding and per-call costs are paid per chunk.
    `load_options` go to `load_bundle` (providers, variant, on_llm_error, llm_base_url, cache_dir, ...).
    `ray_address` None starts a local Ray with `num_cpus` (unless one is running in this process already);
    "auto" or HOST:PORT joins a cluster.
    """
    started = time.perf_counter()
    _check_arguments(workers, batch_size, output_format, on_bad_row, llm_concurrency, cpus_per_worker)
    files, fmt = resolve_inputs(input_spec)
    out = _check_output(output_dir, input_spec, output_format, overwrite)
    from textclassify.runtime.manifest import load_manifest

    manifest = load_manifest(bundle_dir)  # a broken bundle stops here, before Ray starts
    labels, multi_label = list(manifest.labels), bool(manifest.multi_label)
    options = dict(load_options or {})
    options["batch_size"] = batch_size
    options.setdefault("intra_op_num_threads", max(1, int(cpus_per_worker)))
    if llm_concurrency is not None:
        options["llm_max_concurrency"] = llm_concurrency // workers
    io_concurrency = max(1, workers // ACTORS_PER_IO_TASK)
    timings: dict[str, float] = {}
    started_ray = _connect(ray_address, num_cpus, timings)
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    block_size_before = None
    try:
        scans = _scan(files, fmt, text_column, output_columns(labels), timings)
        bad = [(scan.path, *row) for scan in scans for row in scan.bad]
        if bad and on_bad_row == "raise":
            path, line, reason, _ = bad[0]
            more = f" ({len(bad)} rows without text in all)" if len(bad) > 1 else ""
            raise DataError(f"{describe_bad_row(path, fmt, line, reason, text_column)}{more}; fix the input, or "
                            "pass --on-bad-row skip to score the other rows and write these to an errors output.")
        tally = _Tally.options(num_cpus=0).remote()
        run_started, run_started_wall = time.perf_counter(), time.time()
        context = ray.data.DataContext.get_current()
        block_size_before = context.target_max_block_size
        context.target_max_block_size = block_bytes(sum(os.path.getsize(f) for f in files), workers)
        dataset = _read(files, fmt, text_column, io_concurrency).map_batches(
            _BundleWorker, batch_size=batch_rows(sum(scan.rows for scan in scans), workers, batch_size),
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
            fn_constructor_kwargs={"bundle_dir": str(bundle_dir), "load_options": options,
                                   "text_column": text_column, "output_format": output_format, "tally": tally})
        ray.data.DataContext.get_current().enable_progress_bars = progress
        _write(dataset, staging, output_format, io_concurrency)
        timings["run_s"] = time.perf_counter() - run_started
        counted = _count_output(staging, output_format, labels, multi_label)
        expected = sum(scan.rows for scan in scans) - len(bad)
        if counted["rows"] != expected:
            raise TextClassifyError(f"the output holds {counted['rows']} rows where {expected} were scored; "
                                    "nothing was published (rerun; the LLM cache keeps what was paid for).")
        workers_report = ray.get(tally.report.remote())
        first_batch = workers_report["timing"].pop("first_batch_started")
        if first_batch is not None:  # actors started and loaded the bundle (and the first block was read)
            timings["actor_start_s"] = first_batch - run_started_wall
        _publish(staging, out)
        errors_file = _write_errors(out, bad, fmt, text_column, output_format)
    finally:
        if block_size_before is not None:  # the driver's Ray Data context outlives this run
            ray.data.DataContext.get_current().target_max_block_size = block_size_before
        shutil.rmtree(staging, ignore_errors=True)
        if started_ray:
            ray.shutdown()
    seconds = time.perf_counter() - started
    summary = {
        "engine": "ray", "bundle": str(bundle_dir), "input": str(input_spec), "input_files": len(files),
        "output": str(out), "format": output_format, "text_column": text_column, "rows": counted["rows"],
        "labels": labels, "task": "multi_label" if multi_label else "multi_class",
        "prediction_counts": counted["prediction_counts"], "degraded_rows": counted["degraded_rows"],
        "llm_skipped_rows": counted["llm_skipped_rows"], "error_rows": len(bad), "errors_file": errors_file,
        "providers": workers_report["providers"], "variant": workers_report["variant"],
        "int8_recheck_margin": workers_report["int8_recheck_margin"],
        "rechecked_rows": workers_report["rechecked_rows"], "llm_usage": workers_report["llm_usage"],
        "cost": workers_report["cost"],
        "seconds": round(seconds, 3), "texts_per_second": round(counted["rows"] / seconds, 2) if seconds else None,
        "ray": {"address": ray_address or "local", "workers": workers, "batch_size": batch_size,
                "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker,
                "llm_concurrency": llm_concurrency, "llm_concurrency_per_worker": options.get("llm_max_concurrency"),
                **{k: round(v, 3) for k, v in timings.items()}, **workers_report["timing"]},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "summary_file": str(out) + SUMMARY_SUFFIX,
    }
    write_atomic(summary["summary_file"], json.dumps(summary, indent=2) + "\n")
    return summary


def _check_arguments(workers: Any, batch_size: Any, output_format: Any, on_bad_row: Any, llm_concurrency: Any,
                     cpus_per_worker: Any) -> None:
    for name, value in (("workers", workers), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"'{name}' must be a positive int (got {value!r}).")
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"'output_format' must be one of {list(OUTPUT_FORMATS)} (got {output_format!r}).")
    if on_bad_row not in ON_BAD_ROW_CHOICES:
        raise ConfigError(f"'on_bad_row' must be one of {list(ON_BAD_ROW_CHOICES)} (got {on_bad_row!r}).")
    if llm_concurrency is not None and (isinstance(llm_concurrency, bool) or not isinstance(llm_concurrency, int)
                                        or llm_concurrency < workers):
        raise ConfigError(f"--llm-concurrency must be an int of at least --workers ({workers}), so that each "
                          f"worker may send one request (got {llm_concurrency!r}).")
    if isinstance(cpus_per_worker, bool) or not isinstance(cpus_per_worker, (int, float)) or cpus_per_worker <= 0:
        raise ConfigError(f"'cpus_per_worker' must be a positive number (got {cpus_per_worker!r}).")


def _check_output(output_dir: str, input_spec: str, output_format: str, overwrite: bool) -> Path:
    """The output folder's path; DataError when it holds results (without overwrite) or cannot be written."""
    out = Path(output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise DataError(f"--output {output_dir!r} exists and is not a folder; --engine ray writes a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"--output {output_dir!r} already holds results; pass --overwrite to replace them, or "
                        "choose another folder.")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
        raise DataError(f"--output {output_dir!r}: the folder {str(out.parent)!r} does not exist or is not writable.")
    source = Path(input_spec).expanduser().absolute()
    if source.is_dir() and (out == source or source in out.parents):
        raise DataError(f"--output {output_dir!r} is inside the input folder {input_spec!r}; a later run would read "
                        "its results as input. Choose a folder outside it.")
    return out


def _connect(address: str | None, num_cpus: int | None, timings: dict[str, float]) -> bool:
    """Start or join Ray; True when this call started it (and so shuts it down)."""
    if ray.is_initialized():
        timings["ray_init_s"] = 0.0
        return False
    t0 = time.perf_counter()
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address is None:  # a cluster's system config is its own (docs/scaling.md)
        kwargs.update(num_cpus=num_cpus, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    ray.init(address=address, **kwargs)
    timings["ray_init_s"] = time.perf_counter() - t0
    return True


def _scan(files: list[str], fmt: str, text_column: str, reserved: list[str], timings: dict[str, float]) -> list[Any]:
    t0 = time.perf_counter()
    task = ray.remote(num_cpus=IO_TASK_CPUS, max_retries=3)(scan_file)
    try:
        scans = ray.get([task.remote(path, fmt, text_column, reserved) for path in files])
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, TextClassifyError):
            raise e.cause from None
        raise
    timings["scan_s"] = time.perf_counter() - t0
    return scans


def block_bytes(input_bytes: int, workers: int) -> int:
    """Ray Data's target block size for this run. It hands a whole block to one actor and reads a small file
    as one block (seen here: two 30-row Parquet files reached a pool of 4 actors as one block, and one actor
    did all the work), so: at least 4 blocks per actor, at most Ray's default size. A repartition would do
    it too, but its task asks for a whole CPU, which the actors hold (measured: the run waited forever)."""
    return max(MIN_BLOCK_BYTES, min(MAX_BLOCK_BYTES, input_bytes // (workers * BLOCKS_PER_ACTOR)))


def batch_rows(input_rows: int, workers: int, batch_size: int) -> int:
    """Rows per Ray Data batch (one Bundle.predict call): fusion-predict's chunk, but no more than a block's
    share of the rows, since Ray Data merges blocks until a batch is full and hands it to one actor (240 rows
    in 512-row batches went to one of 4 actors); never fewer than the ONNX Runtime batch."""
    share = -(-input_rows // (workers * BLOCKS_PER_ACTOR))
    return max(batch_size, min(K.PREDICT_CHUNK_ROWS, share))


def _read(files: list[str], fmt: str, text_column: str, concurrency: int) -> Any:
    # partitioning None: the columns are the files' own
    common = {"partitioning": None, "num_cpus": IO_TASK_CPUS, "concurrency": concurrency}
    if fmt == "csv":
        return ray.data.read_csv(files, **common, **csv_read_options(text_column))
    if fmt == "json":
        return ray.data.read_json(files, file_extensions=None, **common)
    return ray.data.read_parquet(files, **common)


def _write(dataset: Any, staging: Path, output_format: str, concurrency: int) -> None:
    io = {"ray_remote_args": {"num_cpus": IO_TASK_CPUS}, "concurrency": concurrency}
    if output_format == "parquet":
        dataset.write_parquet(str(staging), **io)
    elif output_format == "csv":
        dataset.write_csv(str(staging), **io)
    else:
        dataset.write_json(str(staging), **io)
        for part in staging.rglob("*.json"):  # Ray names JSON Lines files .json; they are .jsonl to us
            part.rename(part.with_suffix(".jsonl"))
    staging.mkdir(exist_ok=True)  # an input with no scorable row writes no file


def _count_output(folder: Path, output_format: str, labels: list[str], multi_label: bool) -> dict[str, Any]:
    """Rows, prediction counts, degraded and LLM-skipped rows, read back from the written files one at a time."""
    counts: Counter[str] = Counter()
    rows = degraded = skipped = 0
    for path in sorted(folder.rglob(f"*{_SUFFIX_OF[output_format]}")):
        if output_format != "parquet" and path.stat().st_size == 0:
            continue  # an empty JSON Lines or CSV file holds no row (their readers refuse it)
        table = _read_counted_columns(path, output_format, multi_label)
        for pred in table.column("prediction").to_pylist():
            if multi_label:
                counts.update(json.loads(pred) if isinstance(pred, str) else pred)
            else:
                counts[pred] += 1
        rows += table.num_rows
        degraded += sum(bool(v) for v in table.column("degraded").to_pylist())
        skipped += sum(bool(v) for v in table.column("llm_skipped").to_pylist())
    return {"rows": rows, "prediction_counts": {lab: counts.get(lab, 0) for lab in labels},
            "degraded_rows": degraded, "llm_skipped_rows": skipped}


def _read_counted_columns(path: Path, output_format: str, multi_label: bool) -> Any:
    """The prediction, degraded and llm_skipped columns of one written file.

    File by file, with each format's own reader: pyarrow's dataset scan of JSON files waited forever (pyarrow
    26, reading back this module's output) on 4 files over its 1 MiB block at 2 CPU threads, and on 12 small
    ones where Arrow has 1 CPU thread (OMP_NUM_THREADS=1 or a 1-CPU container)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    columns = ["prediction", "degraded", "llm_skipped"]
    if output_format == "parquet":
        return pq.read_table(path, columns=columns)
    if output_format == "csv":
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                              convert_options=pacsv.ConvertOptions(include_columns=columns))
    prediction = pa.list_(pa.string()) if multi_label else pa.string()
    schema = pa.schema([("prediction", prediction), ("degraded", pa.bool_()), ("llm_skipped", pa.bool_())])
    return pajson.read_json(path, parse_options=pajson.ParseOptions(explicit_schema=schema,
                                                                    unexpected_field_behavior="ignore"))


def _publish(staging: Path, out: Path) -> None:
    """Rename the staging folder into place; an existing output (checked before the run) is replaced."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_errors(out: Path, bad: list[tuple[str, int, str, str]], fmt: str, text_column: str,
                  output_format: str) -> str | None:
    """OUTPUT.errors.<ext>: one row per input row without text (file, line, reason, the row); None if none."""
    import pyarrow as pa

    suffix = ".csv" if output_format == "csv" else ".parquet" if output_format == "parquet" else ".jsonl"
    target = Path(str(out) + ERRORS_SUFFIX + suffix)
    for stale in (Path(str(out) + ERRORS_SUFFIX + s) for s in (".csv", ".parquet", ".jsonl")):
        stale.unlink(missing_ok=True)  # from an earlier run over this output
    if not bad:
        return None
    table = pa.table({"file": [b[0] for b in bad], "line": [b[1] for b in bad],
                      "reason": [describe_bad_row(b[0], fmt, b[1], b[2], text_column) for b in bad],
                      "row": [b[3] for b in bad]})
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    if output_format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, tmp)
    elif output_format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, tmp)
    else:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist()), encoding="utf-8")
    os.replace(tmp, target)
    return str(target)


class _BundleWorker:
    """One Ray Data actor: loads the bundle once, then scores batches (pyarrow Tables) in place."""

    def __init__(self, bundle_dir: str, load_options: dict[str, Any], text_column: str, output_format: str,
                 tally: Any) -> None:
        from textclassify.runtime.bundle import load_bundle

        if load_options.get("intra_op_num_threads", 1) <= 1:  # one CPU: the tokenizer starts no threads either
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        t0 = time.perf_counter()
        self._bundle = load_bundle(bundle_dir, **load_options)
        self._text_column = text_column
        self._format = output_format
        self._tally = tally
        self._id = uuid.uuid4().hex  # a restarted actor is a new worker: its predecessor's usage still counts
        ray.get(tally.worker_started.remote({
            "pid": os.getpid(), "load_s": time.perf_counter() - t0, "providers": self._bundle.providers,
            "variant": self._bundle.variant, "int8_recheck_margin": self._bundle.int8_recheck_margin}))

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        t0 = time.time()
        texts = batch.column(self._text_column).to_pylist()
        keep = [i for i, text in enumerate(texts) if text_problem(text) is None]
        if len(keep) < len(texts):  # rows the scan reported (--on-bad-row skip): they go to the errors output
            batch, texts = batch.take(keep), [texts[i] for i in keep]
        result = self._bundle.predict(texts)
        meta = result.metadata
        n, labels = len(texts), self._bundle.labels
        batch = _flatten_for(batch, self._format)
        if self._bundle.multi_label and self._format == "csv":
            prediction = pa.array([json.dumps(p, ensure_ascii=False) for p in result.predictions], pa.string())
        elif self._bundle.multi_label:
            prediction = pa.array(result.predictions, pa.list_(pa.string()))
        else:
            prediction = pa.array(result.predictions, pa.string())
        probs = np.asarray(result.probabilities, dtype=np.float32).reshape(n, len(labels))
        flags = {}
        for name, rows in (("degraded", meta.get("degraded", [])), ("llm_skipped", meta.get("llm_skipped", []))):
            mask = np.zeros(n, dtype=bool)
            mask[list(rows)] = True
            flags[name] = pa.array(mask)
        columns = [("prediction", prediction)]
        columns += [(f"prob_{lab}", pa.array(probs[:, j])) for j, lab in enumerate(labels)]
        for name, values in columns + list(flags.items()):
            batch = batch.append_column(name, values)
        ray.get(self._tally.batch_done.remote(n, meta.get("llm_usage", {}), len(meta.get("rechecked", [])), t0,
                                              time.time(), self._id, self._bundle.usage["serving"]))
        return batch


def _flatten_for(batch: Any, output_format: str) -> Any:
    """CSV cannot hold nested values (a JSONL object or list cell): those columns become JSON text."""
    import pyarrow as pa

    if output_format != "csv":
        return batch
    for i, f in enumerate(batch.schema):
        if pa.types.is_nested(f.type):
            values = [None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                      for v in batch.column(i).to_pylist()]
            batch = batch.set_column(i, f.name, pa.array(values, pa.string()))
    return batch


@ray.remote
class _Tally:
    """What the workers report: load times, LLM usage and batch times (retried batches count again)."""

    def __init__(self) -> None:
        self.workers: list[dict[str, Any]] = []
        self.serving: dict[str, dict[str, Any]] = {}
        self.usage: Counter[str] = Counter()
        self.cost: float | None = None
        self.rows = self.batches = self.rechecked = 0
        self.first_start: float | None = None
        self.last_end: float | None = None

    def worker_started(self, info: dict[str, Any]) -> None:
        self.workers.append(info)

    def batch_done(self, rows: int, usage: dict[str, Any], rechecked: int, start: float, end: float, worker: str,
                   serving: dict[str, Any]) -> None:
        self.serving[worker] = serving  # Bundle.usage["serving"] counts since the worker loaded: keep the latest
        self.rows += rows
        self.batches += 1
        self.rechecked += rechecked
        for key, value in usage.items():
            if key == "cost_usd":  # None (no price known) unless some batch knew one
                self.cost = self.cost if value is None else (self.cost or 0.0) + value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                self.usage[key] += value
        self.first_start = start if self.first_start is None else min(self.first_start, start)
        self.last_end = end if self.last_end is None else max(self.last_end, end)

    def report(self) -> dict[str, Any]:
        first = self.workers[0] if self.workers else {}
        busy = (self.last_end - self.first_start) if self.batches and self.last_end else 0.0
        return {
            "providers": first.get("providers", []), "variant": first.get("variant"),
            "int8_recheck_margin": first.get("int8_recheck_margin"), "rechecked_rows": self.rechecked,
            "llm_usage": {**dict(self.usage), "cost_usd": self.cost},
            "cost": usage_sum({k: v for k, v in serving.items() if k != "gate_threshold"}
                              for serving in self.serving.values()),
            "timing": {"workers_started": len(self.workers),
                       "worker_load_s_max": round(max((w["load_s"] for w in self.workers), default=0.0), 3),
                       "batches": self.batches, "rows_scored_by_workers": self.rows,
                       "first_batch_started": self.first_start,
                       "scoring_s": round(busy, 3),
                       "steady_texts_per_second": round(self.rows / busy, 2) if busy > 0 else None},
        }


__all__ = ["OUTPUT_FORMATS", "output_columns", "predict_dataset"]
