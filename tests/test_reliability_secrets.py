"""The API key (in the environment, used by provider openai-compatible) appears in no file under output_dir,
the cache, the saved model or the bundle, in no log line or console output, and in no exception -- even
when the server echoes the Authorization header back in its error answers.
"""
from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify import AutoFusionClassifier
from textclassify.runtime import load_bundle
from textclassify.runtime.errors import LLMError
from textclassify.runtime.predict_cli import main as predict_main
from textclassify.train.cli import main as train_main

KEY = "sk-test-LEAK-1234567890"
# The key itself, its distinctive tail, and the forms an HTTP layer could write it in.
NEEDLES = [KEY.encode(), b"LEAK-1234567890", base64.b64encode(KEY.encode()), KEY.encode("utf-16-le")]
TEXTS = [t for t, _ in make_tickets(8, seed=41)]


def leaks(blob: bytes | str) -> list[bytes]:
    data = blob.encode("utf-8", "replace") if isinstance(blob, str) else blob
    return [n for n in NEEDLES if n in data]


def files_with_key(*roots: Path) -> dict[str, list[bytes]]:
    """Every regular file under `roots` (SQLite WAL and journal files included) that holds a needle."""
    found = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and (hit := leaks(path.read_bytes())):
                found[str(path)] = hit
    return found


@dataclass
class Console:
    """Everything written while capturing: log records (root logger, DEBUG), sys.stdout/err and fds 1/2."""

    logs: list[str] = field(default_factory=list)
    text: str = ""

    def everything(self) -> str:
        return "\n".join(self.logs) + "\n" + self.text


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(self.format(record))  # format() includes the traceback of exc_info


@contextlib.contextmanager
def console() -> Iterator[Console]:
    """Capture logging at DEBUG from every logger, Python-level stdout/stderr and the C-level fds 1 and 2."""
    out = Console()
    handler = _ListHandler(out.logs)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield out
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            root.removeHandler(handler)
            root.setLevel(old_level)
            sink.seek(0)
            out.text = text.getvalue() + sink.read().decode("utf-8", "replace")


def error_text(err: BaseException) -> str:
    """Message, repr, every attribute and the formatted traceback (with its chained causes)."""
    return "\n".join([str(err), repr(err), repr(vars(err)), "".join(traceback.format_exception(err))])


@pytest.fixture(scope="module")
def env(tiny_roberta_dir, tmp_path_factory):
    """Key in the environment; a server that echoes it back on some answers; a real fit, save and export."""
    tmp = tmp_path_factory.mktemp("reliability_secrets")
    with pytest.MonkeyPatch.context() as mp, FakeLLMServer() as server:
        mp.setenv("OPENAI_API_KEY", KEY)
        config = {**server.config_overrides(), "label_columns": ["topic"], "ml_model": tiny_roberta_dir,
                  "cache_dir": str(tmp / "cache"), "output_dir": str(tmp / "out"), "fusion_split": 0.4,
                  "llm": {"score_method": "json", "timeout_s": 5, "max_retries": 3},
                  "ml": {"num_epochs": 1, "max_length": 32, "batch_size": 16, "learning_rate": 1e-3},
                  "fusion": {"num_epochs": 1, "warmup_epochs": 5},
                  "gate": "off"}  # every row asks the (key-echoing) LLM: no confident row skips it
        frame = pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in make_tickets(80, seed=5)])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            server.inject("echo_key", times=3, status=500)  # echoed three times, retried, recovered
            with console() as happy:
                clf = AutoFusionClassifier(config).fit(frame, progress=False)
                clf.save(tmp / "model")
                clf.export(tmp / "bundle", progress=False)
                clf.predict(TEXTS)
        finally:
            torch.set_num_threads(threads)
        assert server.pending_faults() == 0
        yield {"server": server, "config": config, "frame": frame, "clf": clf, "tmp": tmp, "happy": happy}


def test_server_really_received_the_key(env):
    """The key did travel (as a Bearer token) and was echoed back: the checks below are not vacuous."""
    server = env["server"]
    server.inject("echo_key", status=401)
    with pytest.raises(LLMError) as info:
        env["clf"].predict(["ticket 99: a text not cached yet, refund please"])
    assert "Incorrect API key provided: Bearer ***" in info.value.last_response


def test_no_file_holds_the_key(env):
    """output_dir (metrics, report), the cache (SQLite + WAL), the saved model and the bundle: no key."""
    tmp = env["tmp"]
    for name in ("out", "cache", "model", "bundle"):
        assert any((tmp / name).rglob("*")), name
    assert files_with_key(tmp) == {}


def test_no_log_line_or_console_output_holds_the_key(env):
    """DEBUG logs of every library (openai, httpx, ours) and all console output of fit/save/export/predict."""
    happy = env["happy"]
    assert any("retrying text" in line for line in happy.logs), "the echoed 500s were retried and logged"
    assert leaks(happy.everything()) == []


def test_fitted_objects_hold_no_key(env):
    """Config, settings, metadata and the repr of the fitted classifier carry no key."""
    clf = env["clf"]
    assert leaks(repr(clf) + repr(clf.config_) + repr(clf.llm_settings_) + repr(clf.metadata_)) == []


def test_failed_fit_error_holds_no_key(env, llm_server, tmp_path):
    """A fit whose every request is refused with the key echoed: the LLMError, logs and output are clean."""
    llm_server.inject("echo_key", times=999, status=401)
    config = dict(env["config"], **llm_server.config_overrides(), cache_dir=str(tmp_path / "cache"),
                  output_dir=str(tmp_path / "out"))
    with console() as seen, pytest.raises(LLMError) as info:
        AutoFusionClassifier(config).fit(env["frame"], progress=False)
    err = info.value
    assert err.status_code == 401 and "Bearer ***" in (err.last_response or "")
    assert leaks(error_text(err)) == [] and leaks(seen.everything()) == []
    assert files_with_key(tmp_path) == {}


def test_fusion_train_cli_error_holds_no_key(env, llm_server, tmp_path):
    """fusion-train with the key echoed: one `Error:` line with the status, no key; nothing written with it."""
    server = llm_server
    env["frame"].to_csv(tmp_path / "train.csv", index=False)
    server.inject("echo_key", times=999, status=401)
    result = CliRunner().invoke(train_main, [
        "--data", str(tmp_path / "train.csv"), "--label-columns", "topic", "--ml-model", env["config"]["ml_model"],
        "--llm-provider", "openai-compatible", "--llm-base-url", server.base_url, "--llm-model", "fake",
        "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: LLM request for text ")
    assert "status 401" in result.stderr and "Bearer ***" in result.stderr
    assert leaks(result.output + result.stderr) == [] and files_with_key(tmp_path) == {}


@pytest.mark.parametrize("on_llm_error", ["raise", "ml_only"])
def test_bundle_errors_and_degraded_reasons_hold_no_key(env, llm_server, tmp_path, on_llm_error):
    """A bundle whose LLM echoes the key: the raised error (raise) or the degraded reasons (ml_only) are clean."""
    llm_server.inject("echo_key", times=999, status=401)
    with console() as seen, load_bundle(env["tmp"] / "bundle", providers="cpu", cache_dir=tmp_path / "cache",
                                        llm_base_url=llm_server.base_url, on_llm_error=on_llm_error) as bundle:
        if on_llm_error == "raise":
            with pytest.raises(LLMError) as info:
                bundle.predict(TEXTS[:3])
            text = error_text(info.value)
        else:
            result = bundle.predict(TEXTS[:3])
            assert result.metadata["degraded"] == [0, 1, 2]
            text = repr(result.metadata)
    assert "Bearer ***" in text and leaks(text) == [] and leaks(seen.everything()) == []
    assert files_with_key(tmp_path) == {}


def test_fusion_predict_cli_holds_no_key(env, llm_server, tmp_path):
    """fusion-predict with the key echoed: output CSV, summary JSON and console (ml_only) and the error (raise)."""
    pd.DataFrame({"text": TEXTS}).to_csv(tmp_path / "in.csv", index=False)
    args = ["--bundle", str(env["tmp"] / "bundle"), "--input", str(tmp_path / "in.csv"), "--providers", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--llm-base-url", llm_server.base_url]
    llm_server.inject("echo_key", times=999, status=401)
    degraded = CliRunner().invoke(predict_main, [*args, "--output", str(tmp_path / "out.csv"),
                                                 "--on-llm-error", "ml_only"])
    failed = CliRunner().invoke(predict_main, [*args, "--output", str(tmp_path / "fail.csv")])
    assert degraded.exit_code == 0, degraded.output
    assert "(8 degraded," in degraded.stderr
    assert failed.exit_code == 1 and "Bearer ***" in failed.stderr
    assert leaks(degraded.output + degraded.stderr + failed.output + failed.stderr) == []
    assert files_with_key(tmp_path) == {}


EXPLICIT = "sk-test-EXPLICIT-0987654321"


def test_explicit_api_key_never_leaks(env, llm_server, tmp_path):
    """A key passed as an argument (AutoFusionClassifier.load(api_key=...), load_bundle(llm_api_key=...)), echoed
    back by the server: used instead of the environment's, and in no error, repr, log line or re-saved file."""
    tmp = env["tmp"]
    needles = [EXPLICIT, "EXPLICIT-0987654321", KEY, "LEAK-1234567890"]
    llm_server.inject("echo_key", times=999, status=401)
    texts = ["ticket 77: an uncached text about a refund"]
    with console() as seen:
        clf = AutoFusionClassifier.load(tmp / "model", api_key=EXPLICIT)
        clf.llm_settings_ = llm_server.settings(score_method="json")
        with pytest.raises(LLMError) as fit_side:
            clf.predict(texts)
        clf.save(tmp_path / "model-again")
        with load_bundle(tmp / "bundle", providers="cpu", cache_dir=tmp_path / "cache", llm_api_key=EXPLICIT,
                         llm_base_url=llm_server.base_url) as bundle:
            with pytest.raises(LLMError) as serve_side:
                bundle.predict(texts)
            shown = repr(bundle) + repr(bundle.manifest) + repr(bundle.llm_usage)
    text = "\n".join([error_text(fit_side.value), error_text(serve_side.value), repr(clf), repr(clf.config_),
                      shown, seen.everything()])
    assert text.count("Bearer ***") >= 2
    assert [n for n in needles if n in text] == []
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert [n for n in needles if n.encode() in data] == [], path
