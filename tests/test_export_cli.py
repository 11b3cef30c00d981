"""fusion-export on a really fitted and saved AutoFusionClassifier; the runtime then matches `predict`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.support.data import make_tickets
from textclassify import AutoFusionClassifier
from textclassify.export import constants as EK
from textclassify.export.cli import main
from textclassify.runtime import constants as K
from textclassify.runtime import load_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(server, tiny_roberta_dir, tmp_path_factory):
    """Fit for real (tiny RoBERTa, loopback LLM), save, and return (clf, folder).

    600 rows and 3 encoder epochs, as in test_auto: with fewer the tiny encoder collapses to constant
    logits, FusionMLP's feature scaling divides them by its 1e-3 floor, and float noise of 3e-8 between
    ONNX Runtime and PyTorch becomes 1e-4 in fused_logits -- the gate then (rightly) refuses the export.
    """
    tmp = tmp_path_factory.mktemp("cli")
    rows = make_tickets(600, seed=3)
    frame = pd.DataFrame([{"text": t, "topic": labels[0]} for t, labels in rows])
    config = {**server.config_overrides(), "label_columns": ["topic"], "multi_label": False,
              "ml_model": tiny_roberta_dir, "cache_dir": str(tmp / "cache"), "output_dir": str(tmp / "out"),
              "llm": {"score_method": "json", "timeout_s": 5, "max_retries": 2},
              "ml": {"num_epochs": 3, "max_length": 48, "learning_rate": 1e-3, "batch_size": 16},
              "fusion": {"num_epochs": 1, "ml_lr": 1e-4, "cv_repeats": 1}}
    clf = AutoFusionClassifier(config).fit(frame, progress=False)
    clf.save(tmp / "model")
    return clf, tmp


def test_cli_exports_a_saved_model_that_the_runtime_serves_like_predict(saved):
    """fusion-export --fp16 on a saved folder; load_bundle(...).predict equals clf.predict (fp32)."""
    clf, tmp = saved
    out = tmp / "bundle"
    result = CliRunner().invoke(main, ["--model", str(tmp / "model"), "--output", str(out), "--fp16"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert "fusion-export [" in result.stderr and "loading the saved model from" in result.stderr
    manifest = json.loads((out / K.MANIFEST_FILE).read_text())
    assert manifest["max_length"] == 48 and manifest["llm"]["score_method"] == "json"
    assert manifest["variants"]["fp16"] == K.ENCODER_FP16_FILE and manifest["parity"]["fp16"]["checked_on"] == "cpu"
    assert manifest["parity"]["fp32"]["n_texts"] == len(clf.validation_["texts"]) + 1

    texts = [t for t, _ in make_tickets(25, seed=8)]
    want = clf.predict(texts)
    with load_bundle(out, variant="fp32", providers="cpu", cache_dir=tmp / "cache") as bundle:
        got = bundle.predict(texts)
    assert got.predictions == want.predictions and got.labels == want.labels
    assert np.abs(got.probabilities - want.probabilities).max() <= EK.FP32_PARITY_TOL


def test_python_twin_writes_the_same_kind_of_bundle(saved):
    """clf.export(bundle_dir) is the same export as the command."""
    clf, tmp = saved
    path = clf.export(tmp / "twin", progress=False)
    manifest = json.loads((path / K.MANIFEST_FILE).read_text())
    assert manifest["variants"] == {"fp32": K.ENCODER_FILE} and manifest["labels"] == clf.labels_


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    """A missing saved-model folder exits 1 with one `Error:` line and no traceback."""
    result = CliRunner().invoke(main, ["--model", str(tmp_path / "nope"), "--output", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert result.stderr == (f"Error: Saved model directory {str(tmp_path / 'nope')!r} does not exist or is not "
                             "a directory.\n")
    assert not (tmp_path / "b").exists()


def test_cli_usage_error_is_one_line(tmp_path):
    """click's own usage errors are one line too (exit code 2)."""
    result = CliRunner().invoke(main, ["--model", str(tmp_path), "--output", str(tmp_path / "b"), "--opset", "x"])
    assert result.exit_code == 2
    assert result.stderr == "Error: Invalid value for '--opset': 'x' is not a valid integer.\n"


def test_cli_debug_reraises(tmp_path):
    """--debug lets the exception (and its traceback) through."""
    result = CliRunner().invoke(main, ["--model", str(tmp_path / "nope"), "--output", str(tmp_path / "b"),
                                       "--debug"])
    assert result.exit_code == 1 and type(result.exception).__name__ == "ExportError"


def test_cli_help_shows_an_example():
    """--help lists the options and a worked example."""
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "fusion-export --model models/v1 --output bundles/v1 --int8 --fp16" in result.stdout
    for option in ("--model", "--output", "--int8", "--fp16", "--opset", "--max-length", "--debug"):
        assert option in result.stdout
