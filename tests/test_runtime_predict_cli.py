"""fusion-predict: CSV/JSONL in, CSV with predictions and probabilities plus a summary JSON out."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from tests.support.toy_bundle import write_toy_bundle
from textclassify.runtime import load_bundle
from textclassify.runtime.predict_cli import main

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1",
       "score_method": "json", "max_retries": 0, "timeout_s": 5.0}
ROWS = make_tickets(15, seed=21)


@pytest.fixture(scope="module")
def bundle_dir(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "bundle"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False, llm=LLM)
    return out


@pytest.fixture(scope="module")
def multi_bundle_dir(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_multi") / "bundle"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=True, llm=LLM,
                     thresholds=[0.4, 0.4, 0.4])
    return out


def _write_csv(path: Path, column: str = "text") -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", column, "note"])
        for i, (text, _) in enumerate(ROWS):
            w.writerow([i, text, "has, comma" if i == 3 else ""])


def _run(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_csv_happy_path(bundle_dir: Path, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """Every input column is kept; prediction and prob_<label> equal Bundle.predict; summary JSON written."""
    _write_csv(tmp_path / "in.csv")
    out = tmp_path / "out.csv"
    res = _run("--bundle", str(bundle_dir), "--input", str(tmp_path / "in.csv"), "--output", str(out),
               "--llm-base-url", llm_server.base_url, "--cache-dir", str(tmp_path / "cache"), "--batch-size", "4")
    assert res.exit_code == 0, res.output
    with open(out, newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == ["id", "text", "note", "prediction", "prob_billing", "prob_shipping", "prob_technical"]
    assert [r["text"] for r in got] == [t for t, _ in ROWS] and got[3]["note"] == "has, comma"
    with load_bundle(bundle_dir, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "cache") as bundle:
        want = bundle.predict([t for t, _ in ROWS])
    assert [r["prediction"] for r in got] == want.predictions
    probs = np.array([[float(r[f"prob_{lab}"]) for lab in LABELS] for r in got])
    np.testing.assert_allclose(probs, want.probabilities, atol=1e-6)
    summary = json.loads((tmp_path / "out.csv.summary.json").read_text(encoding="utf-8"))
    assert summary["rows"] == 15 and summary["degraded_rows"] == 0 and summary["labels"] == LABELS
    assert sum(summary["prediction_counts"].values()) == 15
    assert summary["providers"] == ["CPUExecutionProvider"] and summary["variant"] == "fp32"
    assert summary["llm_usage"]["requests"] == 15
    assert "Wrote 15 rows to" in res.stderr


def test_jsonl_multi_label_ml_only(multi_bundle_dir: Path, tmp_path: Path) -> None:
    """JSONL input, multi-label predictions as JSON lists, and a degraded column with the LLM down."""
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"body": t, "meta": {"i": i}}) for i, (t, _) in enumerate(ROWS[:5])]
    src.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    res = _run("--bundle", str(multi_bundle_dir), "--input", str(src), "--text-column", "body", "--output",
               str(out), "--on-llm-error", "ml_only", "--llm-base-url", "http://127.0.0.1:9/v1",
               "--cache-dir", str(tmp_path / "cache"), "--providers", "CPUExecutionProvider")
    assert res.exit_code == 0, res.output
    with open(out, newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == ["body", "meta", "prediction", "prob_billing", "prob_shipping", "prob_technical",
                            "degraded"]
    assert json.loads(got[1]["meta"]) == {"i": 1}
    assert all(r["degraded"] == "true" for r in got)
    for r in got:
        probs = [float(r[f"prob_{lab}"]) for lab in LABELS]
        assert json.loads(r["prediction"]) == [lab for lab, p in zip(LABELS, probs) if p >= 0.4]
    summary = json.loads((tmp_path / "out.csv.summary.json").read_text(encoding="utf-8"))
    assert summary["degraded"] == [0, 1, 2, 3, 4] and summary["task"] == "multi_label"


def test_missing_column(bundle_dir: Path, tmp_path: Path) -> None:
    """A text column that is not there: exit 1, one 'Error:' line naming it and the columns, no output."""
    _write_csv(tmp_path / "in.csv", column="body")
    res = _run("--bundle", str(bundle_dir), "--input", str(tmp_path / "in.csv"), "--output",
               str(tmp_path / "out.csv"))
    assert res.exit_code == 1
    assert res.stderr == (f"Error: Column 'text' is not in {tmp_path / 'in.csv'} (columns: id, body, note); "
                          "choose one with --text-column.\n")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(("name", "content", "message"), [
    ("in.txt", "x", "Error: --input must be a .csv or .jsonl file (got '{p}')."),
    ("missing.csv", None, "Error: Input file '{p}' does not exist or is not a file."),
    ("bad.csv", b"text\n\xff\xfe broken\n", "Error: {p} is not UTF-8 text (byte 0xff at offset 5)."),
    ("bad.jsonl", '{"text": "ok"}\n{"text": \n', "Error: {p} line 2: not valid JSON (Expecting value)."),
    ("null.jsonl", '{"text": "ok"}\n{"text": null}\n', "Error: {p} line 2: 'text' must be a string (got nothing)."),
    ("short.csv", "id,text\n1,hello\n2\n", "Error: {p} line 3: 'text' must be a string (got nothing)."),
    ("clash.csv", "text,prediction\nhello,x\n", "Error: {p}: column(s) ['prediction'] would be overwritten by "
                                                 "the output; rename them."),
])
def test_input_errors(bundle_dir: Path, tmp_path: Path, name: str, content, message: str) -> None:
    """Unreadable or malformed input: exit 1 and exactly one clear line, no traceback."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    res = _run("--bundle", str(bundle_dir), "--input", str(path), "--output", str(tmp_path / "o.csv"),
               "--llm-base-url", "http://127.0.0.1:9/v1", "--cache-dir", str(tmp_path / "c"))
    assert res.exit_code == 1
    assert res.stderr == message.format(p=path) + "\n"


def test_bundle_error_is_one_line(tmp_path: Path) -> None:
    """A directory that is not a bundle is reported in one line."""
    (tmp_path / "in.csv").write_text("text\nhello\n", encoding="utf-8")
    res = _run("--bundle", str(tmp_path), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv"))
    assert res.exit_code == 1
    assert res.stderr == f"Error: manifest.json is missing from {str(tmp_path)!r}; not a textclassify bundle.\n"


def test_llm_down_raise_leaves_no_output(bundle_dir: Path, tmp_path: Path) -> None:
    """With --on-llm-error raise and no LLM, the error is one line and no partial CSV is left behind."""
    _write_csv(tmp_path / "in.csv")
    res = _run("--bundle", str(bundle_dir), "--input", str(tmp_path / "in.csv"), "--output",
               str(tmp_path / "out.csv"), "--llm-base-url", "http://127.0.0.1:9/v1", "--cache-dir",
               str(tmp_path / "c"))
    assert res.exit_code == 1
    assert res.stderr.startswith("Error: LLM request for text 0 failed") and res.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "in.csv"]


def test_debug_shows_traceback(bundle_dir: Path, tmp_path: Path) -> None:
    """--debug lets the exception through (a traceback for bug reports)."""
    (tmp_path / "in.csv").write_text("body\nhello\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["--bundle", str(bundle_dir), "--input", str(tmp_path / "in.csv"), "--output",
                                    str(tmp_path / "o.csv"), "--debug"])
    assert res.exit_code == 1 and type(res.exception).__name__ == "DataError"


def test_console_script_help() -> None:
    """The installed entry point prints help with an example."""
    exe = Path(sys.executable).parent / "fusion-predict"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "fusion-predict --bundle bundles/v1 --input tickets.csv --output scored.csv" in proc.stdout
    assert "--on-llm-error [raise|ml_only]" in proc.stdout
