"""fusion-train: --create-config, one-line user errors, and a real training run (tiny RoBERTa, loopback LLM)."""
from __future__ import annotations

import json
import re
import socket

import pandas as pd
import torch
from click.testing import CliRunner

from tests.support.data import LABELS, make_tickets
from textclassify.runtime.errors import ConfigError
from textclassify.train.cli import main
from textclassify.train.config import validate_config
from textclassify.train.yaml_config import load_config


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def _single_error_line(result) -> str:
    """The whole output of a failed run: exactly one line, 'Error: ...', no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def _tickets_csv(path, n: int, seed: int) -> str:
    pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in make_tickets(n, seed=seed)]).to_csv(path, index=False)
    return str(path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_shows_examples():
    """--help lists the three forms as examples."""
    result = _run("--help")
    assert result.exit_code == 0
    assert "fusion-train --create-config fusion_config.yaml" in result.output
    assert "fusion-train --config fusion_config.yaml --test-data test.csv" in result.output
    assert "--llm-provider deepseek --llm-model deepseek-chat --output runs/v1" in result.output


def test_create_config_writes_the_defaults(tmp_path):
    """--create-config writes a file that loads back to the defaults, and will not replace it without --force."""
    path = tmp_path / "fusion_config.yaml"
    result = _run("--create-config", str(path))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        f"Wrote the default config to {path}. Set data.train_path and data.label_columns, then run:")
    assert load_config(path).classifier == validate_config({})
    again = _run("--create-config", str(path))
    assert _single_error_line(again) == (
        f"Error: {path}: already exists; choose another path or add --force to replace it.")
    assert _run("--create-config", str(path), "--force").exit_code == 0


def test_create_config_trains_nothing(tmp_path):
    """--create-config with training flags is refused rather than half-obeyed."""
    result = _run("--create-config", str(tmp_path / "c.yaml"), "--data", "train.csv")
    assert _single_error_line(result) == (
        "Error: --create-config writes a config file and trains nothing; give it alone (also given: --data).")
    assert not (tmp_path / "c.yaml").exists()


def test_nothing_to_do():
    """No arguments at all says what to give."""
    assert _single_error_line(_run()) == ("Error: nothing to do: give --config FILE, --data CSV or --create-config "
                                          "FILE (fusion-train --help shows examples).")


def test_missing_data_file(tmp_path):
    """A training CSV that does not exist is one line naming it."""
    missing = tmp_path / "nope.csv"
    result = _run("--data", str(missing), "--output", str(tmp_path / "out"))
    assert _single_error_line(result) == f"Error: {missing}: cannot read the file (No such file or directory)."
    assert not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path):
    """A config path that does not exist is one line naming it."""
    missing = tmp_path / "nope.yaml"
    assert _single_error_line(_run("--config", str(missing))) == (
        f"Error: {missing}: cannot read the config file (No such file or directory).")


def test_bad_key_in_the_config(tmp_path):
    """A bad value deep in the YAML is named by its path; --debug shows the exception instead."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train_path: t.csv\nfusion:\n  hidden_dims: [64, -3]\n")
    assert _single_error_line(_run("--config", str(path))) == (
        "Error: fusion.hidden_dims[1]: expected a positive integer, got -3")
    debug = _run("--config", str(path), "--debug")
    assert isinstance(debug.exception, ConfigError)


def test_bad_flag_value_names_the_flag(tmp_path):
    """A bad value given as a flag names the flag next to the key it sets."""
    result = _run("--data", "t.csv", "--llm-base-url", "ftp://example.com")
    assert _single_error_line(result) == (
        "Error: models.llm.base_url (from --llm-base-url): expected an http(s) URL or null, got 'ftp://example.com'")


def test_config_without_training_data(tmp_path):
    """A config with no train_path and no --data says how to give one."""
    path = tmp_path / "c.yaml"
    _run("--create-config", str(path))
    assert _single_error_line(_run("--config", str(path))) == (
        "Error: data.train_path: no training data; give --data train.csv or set data.train_path in the config "
        "file (fusion-train --create-config writes one).")


def test_non_utf8_csv(tmp_path):
    """A CSV that is not UTF-8 is one line with the byte and the line."""
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,topic\ncaf\u00e9 bill,billing\n".encode("latin-1"))
    result = _run("--data", str(path), "--label-columns", "topic")
    assert _single_error_line(result) == (
        f"Error: {path}: not valid UTF-8 at byte 14 (line 2): b'\\xe9'; re-save the file as UTF-8.")


def test_bad_data_column(tmp_path):
    """A label column missing from the CSV is one line listing the columns."""
    data = _tickets_csv(tmp_path / "t.csv", 20, seed=1)
    result = _run("--data", data, "--label-columns", "sentiment", "--llm-provider", "openai-compatible",
                  "--llm-base-url", "http://127.0.0.1:9/v1", "--cache-dir", str(tmp_path / "cache"))
    assert _single_error_line(result) == (
        "Error: column 'sentiment': not found in the data (columns: ['text', 'topic']).")


def _tiny_config(tmp_path, model_dir: str) -> str:
    path = tmp_path / "fusion_config.yaml"
    path.write_text(f"""
data:
  label_columns: [topic]
models:
  ml:
    model_name: {model_dir}
    num_epochs: 1
    max_length: 32
    learning_rate: 5e-4
  llm:
    score_method: json
    timeout_s: 5
    max_retries: 0
fusion:
  num_epochs: 1
  warmup_epochs: 5
fusion_split: 0.4
""")
    return str(path)


def test_unreachable_llm_is_one_line(tmp_path, tiny_roberta_dir):
    """An LLM that cannot be reached stops the run with one line and no model written."""
    data = _tickets_csv(tmp_path / "train.csv", 60, seed=1)
    result = _run("--config", _tiny_config(tmp_path, tiny_roberta_dir), "--data", data, "--llm-provider",
                  "openai-compatible", "--llm-base-url", f"http://127.0.0.1:{_closed_port()}/v1", "--llm-model", "x",
                  "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet")
    line = _single_error_line(result)
    assert re.match(r"Error: LLM request for text \d+ failed after 1 attempt\(s\) \(provider 'openai-compatible', "
                    r"model 'x', status none\): connection failed", line), line
    assert not (tmp_path / "out" / "model").exists()


def test_train_from_config_and_flags(tmp_path, tiny_roberta_dir, llm_server):
    """Config file + flag overrides train for real: model, metrics.json, report and a summary table."""
    torch.set_num_threads(1)
    train = _tickets_csv(tmp_path / "train.csv", 120, seed=1)
    test = _tickets_csv(tmp_path / "test.csv", 40, seed=2)
    out = tmp_path / "run"
    result = _run("--config", _tiny_config(tmp_path, tiny_roberta_dir), "--data", train, "--test-data", test,
                  "--llm-provider", "openai-compatible", "--llm-base-url", llm_server.base_url, "--llm-model", "fake",
                  "--output", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert result.exit_code == 0, result.output
    assert "it/s" not in result.stderr and "%|" not in result.stderr  # --quiet: no progress bars (warnings stay)
    lines = result.stdout.splitlines()
    assert lines[0] == "Held-out data: eval_data, n=40"
    rows = lines[3:lines.index("", 3)]
    table = {row[:28].strip(): row[28:].split() for row in rows}
    assert [name for name in table if name != "ML alone (stage-1 encoder)"][:5] == [
        "ML alone (final encoder)", "LLM alone (raw)", "LLM alone (calibrated)", "Lexical alone (TF-IDF + LR)",
        "Stacker baseline"]
    assert "Fused (served)" in table
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert table["Fused (served)"] == [f"{metrics['fused']['accuracy']:.3f}", f"{metrics['fused']['macro_f1']:.3f}"]
    assert f"Model:   {out / 'model'}" in lines
    assert llm_server.requests > 0

    from textclassify import AutoFusionClassifier

    clf = AutoFusionClassifier.load(out / "model")
    assert clf.labels_ == LABELS
    report = json.loads((out / "report" / "metrics.json").read_text())
    assert report["summary"]["fused"]["accuracy"] == metrics["fused"]["accuracy"]
    assert {"ml", "llm_raw", "llm", "lexical", "stacker", "fused", "fused_no_llm"} <= set(metrics)
    assert report["files"] == sorted([f"confusion_matrix_{m}.png" for m in metrics] + [
        "reliability_llm.png", "training_curves.png", "summary.txt", "metrics.json"])
    assert sorted(p.name for p in (out / "report").iterdir()) == report["files"]
    assert f"Report:  {out / 'report'} ({len(report['files'])} files)" in lines
