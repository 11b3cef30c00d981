"""fusion-predict: score a CSV or JSONL file with a bundle; writes a CSV (or JSONL) and a summary JSON next to it."""
from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from textclassify.runtime import constants as K
from textclassify.runtime.atomic import write_atomic
from textclassify.runtime.cli_base import OneLineErrorCommand
from textclassify.runtime.errors import ConfigError, DataError
from textclassify.runtime.output_paths import STDOUT, check_output_file, exit_on_sigterm
from textclassify.runtime.validation import DEFAULT_MAX_TEXT_CHARS, check_base_url, check_unicode

SUMMARY_SUFFIX = ".summary.json"
FORMATS = ("csv", "jsonl")
ENGINES = ("single", "ray")
# --engine ray lives in textclassify.serve (runtime never imports serve): the package registers it under this
# entry-point group, and it is looked up only when asked for, so the default engine imports no Ray.
ENGINE_GROUP = "textclassify.predict_engines"
RAY_ONLY = {"workers": "--workers", "ray_address": "--ray-address", "llm_concurrency": "--llm-concurrency",
            "on_bad_row": "--on-bad-row", "overwrite": "--overwrite", "cpus_per_worker": "--cpus-per-worker",
            "gpus_per_worker": "--gpus-per-worker"}
EXAMPLES = """\b
Examples:
  fusion-predict --bundle bundles/v1 --input tickets.csv --output scored.csv
  fusion-predict --bundle bundles/v1 --input tickets.jsonl --text-column body \\
      --output scored.csv --providers cpu --variant int8 --on-llm-error ml_only
  fusion-predict --engine ray --bundle bundles/v1 --input 'tickets/*.parquet' --output scored/ \\
      --workers 4 --llm-concurrency 16

\b
The output CSV holds the input columns, then `prediction` (a label; for a multi-label bundle a
JSON list of labels), one `prob_<label>` column per label and, with --on-llm-error ml_only, a
`degraded` column (true where the LLM failed and the no-LLM head answered). A summary
(rows, prediction counts, degraded rows, providers, LLM usage, timing) is written to
OUTPUT.summary.json. `--output -` writes to stdout (CSV, or JSONL with --format jsonl) and the
summary to stderr. The output is checked before any work: an existing folder, symlink or non-regular
file, or the input file itself, is refused. The LLM API key comes from the provider's environment variable.

\b
--engine ray (pip install textclassify[ray]) reads a file, a folder or a glob of CSV, JSONL or Parquet
with Ray Data, scores it on a pool of --workers actors (each loads the bundle once) and writes a folder of
Parquet (default), CSV or JSONL files plus OUTPUT.summary.json; every input column is kept and `prediction`,
`prob_<label>`, `degraded` and `llm_skipped` are added. See docs/scaling.md.
"""


@click.command(cls=OneLineErrorCommand, epilog=EXAMPLES,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--bundle", "bundle_dir", required=True, help="Bundle directory (written by fusion-export).")
@click.option("--input", "input_path", required=True, help="Texts to score: a .csv or .jsonl file (UTF-8).")
@click.option("--output", "output_path", required=True,
              help="File to write (replaced atomically), or '-' for stdout.")
@click.option("--format", "output_format", type=click.Choice(FORMATS + ("parquet",)), default=None,
              help="Output format; default: jsonl for a .jsonl/.ndjson output, else csv (--engine ray: parquet).")
@click.option("--text-column", default="text", show_default=True, help="Column (or JSON key) holding the text.")
@click.option("--providers", default="auto", show_default=True,
              help="auto | cpu | cuda | comma-separated ONNX Runtime provider names.")
@click.option("--variant", type=click.Choice(["auto", "fp32", "int8", "fp16"]), default="auto", show_default=True,
              help="Model variant; auto = fp16 on CUDA when the export validated it there, else fp32.")
@click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True,
              help="CUDA device for the sessions and their IO binding.")
@click.option("--int8-recheck/--no-int8-recheck", default=True, show_default=True,
              help="With --variant int8: answer again with the fp32 graph the rows within the bundle's recheck "
                   "margin of flipping (loads both graphs).")
@click.option("--on-llm-error", type=click.Choice(["raise", "ml_only"]), default="raise", show_default=True,
              help="When the LLM fails: stop with an error, or answer without the LLM (flagged degraded).")
@click.option("--batch-size", type=click.IntRange(min=1), default=K.DEFAULT_BATCH_SIZE, show_default=True,
              help="Texts per ONNX Runtime batch.")
@click.option("--llm-base-url", default=None, help="Override the LLM endpoint recorded in the bundle.")
@click.option("--cache-dir", default=K.DEFAULT_CACHE_DIR, show_default=True, help="LLM score cache directory.")
@click.option("--max-text-chars", type=click.IntRange(min=1), default=DEFAULT_MAX_TEXT_CHARS, show_default=True,
              help="Characters of a text the tokenizer sees at most (the encoder keeps max_length tokens anyway).")
@click.option("--long-texts", type=click.Choice(["truncate", "raise"]), default="truncate", show_default=True,
              help="A text longer than --max-text-chars: cut it, or stop with an error naming it.")
@click.option("--engine", type=click.Choice(ENGINES), default="single", show_default=True,
              help="single: this process; ray: Ray Data over an actor pool (the options below).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="[ray] Actors, each with the bundle. [2]")
@click.option("--ray-address", default=None, help="[ray] 'auto' or HOST:PORT of a cluster; default: a local Ray.")
@click.option("--llm-concurrency", type=click.IntRange(min=1), default=None,
              help="[ray] LLM requests in flight across all workers (each gets an equal share).")
@click.option("--on-bad-row", type=click.Choice(["raise", "skip"]), default=None,
              help="[ray] A row without text: stop naming file and line, or write it to OUTPUT.errors. [raise]")
@click.option("--overwrite", is_flag=True, default=None, help="[ray] Replace an output folder that holds results.")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=None,
              help="[ray] CPUs Ray reserves per actor (also its ONNX Runtime threads, at least 1). [1]")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None,
              help="[ray] GPUs Ray reserves per actor (use with --providers cuda). [0]")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def main(bundle_dir: str, input_path: str, output_path: str, output_format: str | None, text_column: str,
         providers: str, variant: str, device_id: int, int8_recheck: bool, on_llm_error: str, batch_size: int,
         llm_base_url: str | None, cache_dir: str, max_text_chars: int, long_texts: str, engine: str,
         debug: bool, **ray_options: Any) -> None:
    """Score every text of INPUT with a textclassify bundle and write predictions to OUTPUT."""
    load_options = {"providers": _providers(providers), "variant": variant, "on_llm_error": on_llm_error,
                    "llm_base_url": llm_base_url, "device_id": device_id, "cache_dir": cache_dir,
                    "int8_recheck": int8_recheck, "max_text_chars": max_text_chars, "long_texts": long_texts}
    if engine == "ray":
        summary = _predict_on_engine("ray", bundle_dir, input_path, output_path, text_column=text_column,
                                     batch_size=batch_size, output_format=output_format, load_options=load_options,
                                     **ray_options)
        _echo_summary(summary, f"{output_path} (errors: {summary['errors_file'] or 'none'})")
        return
    given = [flag for name, flag in RAY_ONLY.items() if ray_options.get(name) not in (None, False)]
    if given or output_format == "parquet":
        raise click.UsageError(f"{(given or ['--format parquet'])[0]} is an option of --engine ray.")
    with exit_on_sigterm():
        summary = predict_file(bundle_dir, input_path, output_path, text_column=text_column, batch_size=batch_size,
                               output_format=output_format, **load_options)
    _echo_summary(summary, "stdout" if output_path == STDOUT else output_path)


def _echo_summary(summary: dict[str, Any], where: str) -> None:
    """The two closing stderr lines of every engine: rows, degraded rows, then the LLM's calls and cost."""
    click.echo(f"Wrote {summary['rows']} rows to {where} ({summary['degraded_rows']} degraded, "
               f"{summary['error_rows']} without an answer); summary in {summary['summary_file'] or 'stderr'}",
               err=True)
    cost = summary.get("cost") or {}
    usd = "unknown (no price for this model)" if cost.get("cost_usd") is None else f"${cost['cost_usd']:.6f}"
    click.echo(f"LLM cost: {cost.get('requests', 0)} requests, {cost.get('cache_hits', 0)} cache hits, "
               f"{cost.get('llm_skipped_rows', 0)} rows answered without the LLM; {cost.get('prompt_tokens', 0):,} "
               f"prompt + {cost.get('completion_tokens', 0):,} completion tokens; {usd}", err=True)


def _predict_on_engine(name: str, bundle_dir: str, input_spec: str, output_dir: str, *, output_format: str | None,
                       **options: Any) -> dict[str, Any]:
    """Run a registered engine (entry point `name` of ENGINE_GROUP); its options of None take its defaults."""
    from importlib.metadata import distributions

    # Every distribution on the path, not entry_points(): that keeps only the first copy of a name, and a stale
    # textclassify.egg-info in the working folder would hide the installed package's entry points.
    found = [ep for dist in distributions() for ep in dist.entry_points if ep.group == ENGINE_GROUP and ep.name == name]
    if not found:
        raise ConfigError(f"--engine {name} is not installed: install textclassify[{name}] "
                          f"(pip install 'textclassify[{name}]'), then reinstall textclassify.")
    engine = found[0].load()
    options = {k: v for k, v in options.items() if v is not None}
    return engine(bundle_dir, input_spec, output_dir, output_format=output_format or "parquet", **options)


def predict_file(bundle_dir: str, input_path: str, output_path: str, *, text_column: str = "text",
                 providers: str | list[str] = "auto", variant: str = "auto", on_llm_error: str = "raise",
                 batch_size: int = K.DEFAULT_BATCH_SIZE, llm_base_url: str | None = None,
                 cache_dir: str = K.DEFAULT_CACHE_DIR, int8_recheck: bool = True, output_format: str | None = None,
                 max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, long_texts: str = "truncate",
                 device_id: int = 0) -> dict[str, Any]:
    """Read INPUT, predict with the bundle, write OUTPUT (CSV or JSONL; '-' is stdout) and OUTPUT.summary.json.

    Both output paths are checked before the input is read or the bundle loaded; returns the summary."""
    started = time.perf_counter()
    check_base_url(llm_base_url, "--llm-base-url")
    to_stdout = output_path == STDOUT
    check_output_file(output_path, inputs=[input_path])
    summary_path = None if to_stdout else str(output_path) + SUMMARY_SUFFIX
    if summary_path is not None:
        check_output_file(summary_path, inputs=[input_path], what="the summary file")
    fmt = output_format or ("jsonl" if Path(output_path).suffix.lower() in (".jsonl", ".ndjson") else "csv")
    if fmt not in FORMATS:
        raise DataError(f"--format must be one of {list(FORMATS)} (got {fmt!r}).")
    columns, rows = read_rows(input_path, text_column)
    from textclassify.runtime.bundle import load_bundle

    with load_bundle(bundle_dir, providers=providers, variant=variant, on_llm_error=on_llm_error,
                     batch_size=batch_size, llm_base_url=llm_base_url, cache_dir=cache_dir,
                     int8_recheck=int8_recheck, max_text_chars=max_text_chars, long_texts=long_texts,
                     device_id=device_id) as bundle:
        out_columns = ["prediction"] + [f"prob_{lab}" for lab in bundle.labels]
        out_columns += ["degraded"] if on_llm_error == "ml_only" else []
        clash = [c for c in out_columns if c in columns]
        if clash:
            raise DataError(f"{input_path}: column(s) {clash} would be overwritten by the output; rename them.")
        counts: Counter[str] = Counter()
        degraded: list[int] = []
        errors: list[int] = []
        rechecked = 0
        with _atomic_output(output_path, fmt, columns + out_columns) as write, \
                tqdm(total=len(rows), unit="text", desc="fusion-predict", file=sys.stderr, disable=None) as bar:
            for start in range(0, len(rows), K.PREDICT_CHUNK_ROWS):
                chunk = rows[start:start + K.PREDICT_CHUNK_ROWS]
                result = bundle.predict([row[text_column] for row in chunk])
                bad = set(result.metadata["degraded"])
                degraded += [start + i for i in sorted(bad)]
                rechecked += len(result.metadata.get("rechecked", []))
                for i, (row, pred, probs) in enumerate(zip(chunk, result.predictions, result.probabilities)):
                    if pred is None:  # no answer for this row (non-finite model output): never counted as a label
                        errors.append(start + i)
                    else:
                        counts.update(pred if bundle.multi_label else [pred])
                    record: list[Any] = [row.get(c) for c in columns]
                    record.append(pred)
                    record += [_Prob(p) for p in probs]
                    record += [i in bad] if on_llm_error == "ml_only" else []
                    write(record)
                bar.update(len(chunk))
        seconds = time.perf_counter() - started
        summary = {
            "bundle": str(bundle_dir), "input": str(input_path), "output": str(output_path),
            "format": fmt, "text_column": text_column, "rows": len(rows), "labels": bundle.labels,
            "task": "multi_label" if bundle.multi_label else "multi_class",
            "prediction_counts": {lab: counts.get(lab, 0) for lab in bundle.labels},
            "degraded_rows": len(degraded), "degraded": degraded, "error_rows": len(errors), "errors": errors,
            "providers": bundle.providers, "variant": bundle.variant, "variant_reason": bundle.variant_reason,
            "int8_recheck_margin": bundle.int8_recheck_margin, "rechecked_rows": rechecked,
            "llm_usage": bundle.llm_usage, "cost": bundle.usage["serving"], "seconds": round(seconds, 3),
            "texts_per_second": round(len(rows) / seconds, 2) if seconds > 0 else None,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
    summary["summary_file"] = summary_path
    text = json.dumps(summary, indent=2) + "\n"
    if summary_path is None:
        sys.stderr.write(text)
    else:
        write_atomic(summary_path, text)
    return summary


def read_rows(path: str, text_column: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns (in order) and rows of a .csv or .jsonl file; DataError naming the line for bad rows."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise DataError(f"--input must be a .csv or .jsonl file (got {_short(path)}).")
    if not p.is_file():
        raise DataError(f"Input file {_short(path)} does not exist or is not a file.")
    try:
        columns, rows, lines = _read_csv(p) if suffix == ".csv" else _read_jsonl(p)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}).") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a readable CSV file ({e}).") from None
    except MemoryError:
        raise DataError(f"{path} is too large to read into memory.") from None
    if text_column not in columns:
        raise DataError(f"Column {text_column!r} is not in {path} (columns: {', '.join(columns) or 'none'}); "
                        "choose one with --text-column.")
    for line, row in zip(lines, rows):
        value = row.get(text_column)
        if not isinstance(value, str):
            raise DataError(f"{path} line {line}: {text_column!r} must be a string "
                            f"(got {'nothing' if value is None else type(value).__name__}).")
        check_unicode(value, f"{path} line {line}: {text_column!r}")
    return columns, rows


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, Any]], list[int]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        dup = sorted({c for c in columns if columns.count(c) > 1})
        if dup:
            raise DataError(f"{path}: duplicate column name(s) {dup} in the header.")
        rows, lines = [], []
        for row in reader:
            if None in row:
                raise DataError(f"{path} line {reader.line_num}: more fields than the header's {len(columns)}.")
            rows.append(row)
            lines.append(reader.line_num)
    return columns, rows, lines


def _read_jsonl(path: Path) -> tuple[list[str], list[dict[str, Any]], list[int]]:
    columns: dict[str, None] = {}
    rows, lines = [], []
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {line_no}: not valid JSON ({e.msg}).") from None
            except RecursionError:
                raise DataError(f"{path} line {line_no}: JSON nested too deeply.") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {line_no}: expected a JSON object (got {type(row).__name__}).")
            columns.update(dict.fromkeys(row))
            rows.append(row)
            lines.append(line_no)
    return list(columns), rows, lines


class _Prob(float):
    """A probability: 7 significant digits in CSV, a plain number in JSONL."""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, _Prob):
        return f"{value:.7g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _atomic_output:
    """A row writer (CSV or JSONL) on a temp file beside the target, renamed over it only on success and
    removed on any other exit (an exception, Ctrl-C, SIGTERM through exit_on_sigterm); '-' writes to stdout."""

    def __init__(self, path: str, fmt: str, columns: list[str]) -> None:
        self.path, self.fmt, self.columns = path, fmt, columns
        self.tmp: str | None = None

    def __enter__(self) -> Any:
        if self.path == STDOUT:
            self.fh = sys.stdout
        else:
            target = Path(self.path)
            directory = target.parent if str(target.parent) else Path(".")
            fd, self.tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
            self.fh = os.fdopen(fd, "w", newline="", encoding="utf-8")
        if self.fmt == "csv":
            writer = csv.writer(self.fh)
            writer.writerow(self.columns)
            return lambda record: writer.writerow([_cell(v) for v in record])
        return lambda record: self.fh.write(json.dumps(dict(zip(self.columns, record)), ensure_ascii=False) + "\n")

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if self.tmp is None:
            self.fh.flush()
            return
        try:
            self.fh.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
                self.tmp = None
        finally:
            if self.tmp is not None:
                os.unlink(self.tmp)


def _short(value: str, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _providers(value: str) -> str | list[str]:
    return value if value in ("auto", "cpu", "cuda") else [p.strip() for p in value.split(",") if p.strip()]


if __name__ == "__main__":
    main()
