"""Inputs of `fusion-predict --engine ray`: which files, and which of their rows have no text (file and line).

A file, a folder (every .csv, .jsonl/.ndjson or .parquet file below it, hidden and `_` names skipped) or a
glob; one format per run. Before any bundle loads, one Ray task per file reads it with the same pyarrow
readers Ray Data uses and returns its row count and the rows without text, so a bad row stops the run (or
goes to the errors output) with its file and line, before the first LLM request is paid for.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textclassify.runtime.errors import DataError

FORMAT_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet"}
MAX_QUOTED = 200  # characters of a bad row quoted in the errors output's `row` cell


@dataclass
class FileScan:
    """One input file: its rows, its columns and its rows without text (line, reason, the row as JSON)."""

    path: str
    rows: int
    columns: list[str]
    bad: list[tuple[int, str, str]] = field(default_factory=list)


def resolve_inputs(spec: str) -> tuple[list[str], str]:
    """The files that `spec` (a file, a folder or a glob) names, sorted, and their one format."""
    p = Path(spec).expanduser()
    if p.is_dir():
        files = [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in FORMAT_SUFFIXES
                 and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts)]
        where = f"folder {spec!r}"
    elif p.is_file():
        files = [str(p)]
        where = f"file {spec!r}"
    elif glob.has_magic(spec):
        files = sorted(f for f in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(f))
        where = f"glob {spec!r}"
    else:
        raise DataError(f"--input {spec!r} is not a file, a folder or a glob that matches files.")
    if not files:
        raise DataError(f"--input: the {where} holds no .csv, .jsonl or .parquet file.")
    formats = {FORMAT_SUFFIXES.get(Path(f).suffix.lower()) for f in files}
    if None in formats:
        odd = next(f for f in files if Path(f).suffix.lower() not in FORMAT_SUFFIXES)
        raise DataError(f"--input: {odd!r} is not a .csv, .jsonl/.ndjson or .parquet file.")
    if len(formats) > 1:
        raise DataError(f"--input: the {where} mixes formats ({', '.join(sorted(formats))}); score one format "
                        "per run.")
    return files, formats.pop()


def csv_read_options(text_column: str) -> dict[str, Any]:
    """pyarrow CSV options shared by the scan and Ray Data's read: the text column stays a string (also when
    every value looks like a number), and a quoted value may hold line breaks, as texts do."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    return {"convert_options": pacsv.ConvertOptions(column_types={text_column: pa.string()}),
            "parse_options": pacsv.ParseOptions(newlines_in_values=True)}


def read_table(path: str, fmt: str, text_column: str) -> Any:
    """The whole file as a pyarrow Table, read as Ray Data reads it; DataError naming the file otherwise."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    try:
        if fmt == "csv":
            return pacsv.read_csv(path, **csv_read_options(text_column))
        if fmt == "json":
            return pajson.read_json(path)
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path} cannot be read as {fmt.upper()}: {' '.join(str(e).split())[:300]}") from None


def text_problem(value: Any) -> str | None:
    """Why a text cell cannot be scored, or None: missing, not a string, or blank."""
    if value is None:
        return "no text (the cell is empty or missing)"
    if not isinstance(value, str):
        return f"the text is a {type(value).__name__}, not a string"
    if not value.strip():
        return "the text is blank"
    return None


def scan_file(path: str, fmt: str, text_column: str, reserved: list[str]) -> FileScan:
    """Row count, columns and rows without text of one file (runs as a Ray task, one per file)."""
    table = read_table(path, fmt, text_column)
    columns = list(table.column_names)
    if text_column not in columns:
        raise DataError(f"Column {text_column!r} is not in {path} (columns: {', '.join(columns) or 'none'}); "
                        "choose one with --text-column.")
    clash = [c for c in reserved if c in columns]
    if clash:
        raise DataError(f"{path}: column(s) {clash} would be overwritten by the output; rename them.")
    texts = table.column(text_column).to_pylist()
    bad_rows = [(i, reason) for i, reason in ((i, text_problem(t)) for i, t in enumerate(texts)) if reason]
    scan = FileScan(path, table.num_rows, columns)
    if bad_rows:
        lines = _line_numbers(path, fmt, [i for i, _ in bad_rows])
        for (i, reason), line in zip(bad_rows, lines):
            row = json.dumps(table.slice(i, 1).to_pylist()[0], ensure_ascii=False, default=str)
            scan.bad.append((line, reason, row[:MAX_QUOTED]))
    return scan


def _line_numbers(path: str, fmt: str, rows: list[int]) -> list[int]:
    """The line in the file of each 0-based data row (CSV: the line a record ends on; Parquet: row + 1)."""
    if fmt == "parquet":
        return [i + 1 for i in rows]
    wanted, found = set(rows), {}
    with open(path, newline="" if fmt == "csv" else None, encoding="utf-8-sig") as fh:
        if fmt == "csv":
            reader = csv.reader(fh)
            next(reader, None)
            for i, _ in enumerate(record for record in reader if record):  # pyarrow skips blank lines too
                if i in wanted:
                    found[i] = reader.line_num
        else:
            records = (n for n, line in enumerate(fh, start=1) if line.strip())
            for i, line_no in enumerate(records):
                if i in wanted:
                    found[i] = line_no
    return [found.get(i, i + 1) for i in rows]


def describe_bad_row(path: str, fmt: str, line: int, reason: str, text_column: str) -> str:
    """The one-line message for a bad row: file, line (or row for Parquet), column and reason."""
    where = f"row {line}" if fmt == "parquet" else f"line {line}"
    return f"{path} {where}: column {text_column!r}: {reason}"
