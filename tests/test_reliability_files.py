"""Files that got destroyed: every output path is checked before any work, nothing of the user's is replaced
or deleted without being asked, and temp files go on every exit path (SIGTERM included)."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.support import hostile
from tests.support.data import LABELS, make_tickets
from tests.support.fitted_model import make_fitted_model
from tests.support.llm_server import FakeLLMServer
from textclassify import AutoFusionClassifier
from textclassify.export.api import export_bundle
from textclassify.export.cli import main as export_main
from textclassify.runtime.errors import DataError
from textclassify.runtime.predict_cli import main as predict_main
from textclassify.train.cli import main as train_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROWS = [t for t, _ in make_tickets(6, seed=41)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tiny_roberta_dir, tmp_path_factory) -> Path:
    return hostile.export_small_bundle(tiny_roberta_dir, tmp_path_factory.mktemp("files") / "bundle")


def write_jsonl(path: Path, rows: list[str] = ROWS) -> bytes:
    data = "".join(json.dumps({"text": t}) + "\n" for t in rows).encode()
    path.write_bytes(data)
    return data


def predict(exported: Path, server: FakeLLMServer, source: Path, output: str, *extra: str):
    args = ["--bundle", str(exported), "--input", str(source), "--output", output, "--llm-base-url", server.base_url,
            "--cache-dir", str(source.parent / "cache"), *extra]
    return CliRunner().invoke(predict_main, args)


def error_line(result) -> str:
    assert result.exit_code == 1, (result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------------ 5: output == input
@pytest.mark.parametrize("how", ["same_path", "hard_link"])
def test_output_that_is_the_input_is_refused(exported, llm_server, tmp_path, how) -> None:
    """--output resolving to the --input file (same path, or a hard link: same inode) is refused before work."""
    source = tmp_path / "in.jsonl"
    original = write_jsonl(source)
    output = source
    if how == "hard_link":
        output = tmp_path / "out.csv"
        os.link(source, output)
    line = error_line(predict(exported, llm_server, source, str(output)))
    assert line == (f"Error: --output {str(output)!r} is the input file {str(source)!r}; writing it would destroy "
                    "the input. Choose another output path.")
    assert source.read_bytes() == original and llm_server.requests == 0


# ------------------------------------------------------------------------ 6: re-export over user files
def test_export_refuses_a_bundle_folder_with_foreign_files(tiny_roberta_dir, tmp_path) -> None:
    """A bundle folder that also holds NOTES.md and eval_results/ is refused, naming the first; nothing deleted."""
    fitted = make_fitted_model(tiny_roberta_dir, LABELS, multi_label=False)
    target = export_bundle(fitted, tmp_path / "bundle", progress=False)
    (target / "NOTES.md").write_text("my notes", encoding="utf-8")
    (target / "eval_results").mkdir()
    (target / "eval_results" / "run1.json").write_text("{}", encoding="utf-8")
    result = CliRunner().invoke(export_main, ["--model", str(tmp_path / "no-such-model"), "--output", str(target)])
    assert error_line(result) == (
        f"Error: Output directory {str(target)!r} holds 'NOTES.md', which is not part of the bundle there (2 such "
        "entries); replacing the bundle would delete it. Move it out, choose another path, or pass --force to "
        "replace the folder and everything in it.")
    assert (target / "NOTES.md").read_text(encoding="utf-8") == "my notes"
    # --force says what it removes (here the export itself then fails: the model folder does not exist)
    forced = CliRunner().invoke(export_main, ["--model", str(tmp_path / "no-such-model"), "--output", str(target),
                                              "--force"])
    assert forced.stderr.splitlines()[0] == (f"--force: replacing {target} removes 2 entries that are not part of a "
                                             "bundle: NOTES.md, eval_results")
    assert (target / "NOTES.md").exists()
    # and the API with force=True replaces the folder, user files included
    export_bundle(fitted, target, progress=False, force=True)
    assert not (target / "NOTES.md").exists() and (target / "manifest.json").is_file()


# ------------------------------------------------------------------------ 7: '-', symlinks, devices
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_dash_writes_to_stdout(exported, llm_server, tmp_path, fmt) -> None:
    """--output - writes the rows to stdout (CSV, or JSONL with --format jsonl) and the summary to stderr."""
    source = tmp_path / "in.jsonl"
    write_jsonl(source)
    result = predict(exported, llm_server, source, "-", "--format", fmt)
    assert result.exit_code == 0, result.stderr
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
    else:
        rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == ROWS
    assert all(r["prediction"] in LABELS for r in rows)
    assert '"rows": 6' in result.stderr and "summary in stderr" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "in.jsonl"]


def test_symlink_and_device_outputs_are_refused(exported, llm_server, tmp_path) -> None:
    """An existing symlink (its target stays as it was) and a non-regular file such as /dev/null are refused."""
    source = tmp_path / "in.jsonl"
    write_jsonl(source)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me", encoding="utf-8")
    link = tmp_path / "out.csv"
    link.symlink_to(precious)
    assert error_line(predict(exported, llm_server, source, str(link))) == (
        f"Error: --output {str(link)!r} is a symlink; refusing to replace it (give the real path, or '-' for "
        "stdout).")
    assert link.is_symlink() and precious.read_text(encoding="utf-8") == "keep me"
    assert error_line(predict(exported, llm_server, source, "/dev/null")) == (
        "Error: --output '/dev/null' is not a regular file; give a file path (or '-' for stdout).")
    assert llm_server.requests == 0


# ------------------------------------------------------------------------ 8: checked first, temp files removed
def test_output_folder_is_refused_before_any_work(exported, llm_server, tmp_path) -> None:
    """An existing folder as --output fails before the bundle loads or the LLM is asked, and leaves no .tmp."""
    source = tmp_path / "in.jsonl"
    write_jsonl(source)
    (tmp_path / "out").mkdir()
    assert error_line(predict(exported, llm_server, source, str(tmp_path / "out"))) == (
        f"Error: --output {str(tmp_path / 'out')!r} is a folder; give a file path (or '-' for stdout).")
    assert llm_server.requests == 0 and leftovers(tmp_path) == []


@pytest.mark.timeout(120)
def test_sigterm_removes_the_temp_file(exported, tmp_path) -> None:
    """SIGTERM while scoring: exit 143, the hidden temp file is removed, no output appears."""
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [f"ticket {i}: my invoice" for i in range(40)])
    with FakeLLMServer(delay_s=5.0) as slow:
        proc = subprocess.Popen(
            [sys.executable, "-m", "textclassify.runtime.predict_cli", "--bundle", str(exported), "--input",
             str(source), "--output", str(tmp_path / "out.csv"), "--llm-base-url", slow.base_url, "--cache-dir",
             str(tmp_path / "cache")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 90
            while not leftovers(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert leftovers(tmp_path), "the temp file never appeared"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 143, err.decode()[-2000:]
    assert leftovers(tmp_path) == [] and not (tmp_path / "out.csv").exists()


# ------------------------------------------------------------------------ 9: fit / fusion-train outputs
def test_fit_checks_output_dir_before_any_work(tiny_roberta_dir, llm_server, tmp_path) -> None:
    """output_dir that is an existing file: DataError at once, before any LLM request or training."""
    (tmp_path / "taken").write_text("a file", encoding="utf-8")
    frame = pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in make_tickets(40, seed=3)])
    clf = AutoFusionClassifier({**llm_server.config_overrides(), "label_columns": ["topic"],
                                "ml_model": tiny_roberta_dir, "cache_dir": str(tmp_path / "cache"),
                                "output_dir": str(tmp_path / "taken")})
    with pytest.raises(DataError) as info:
        clf.fit(frame)
    assert str(info.value) == (f"output_dir {str(tmp_path / 'taken')!r} exists and is not a folder; give a folder "
                               "path (the results are written inside it).")
    assert llm_server.requests == 0


@pytest.mark.parametrize("blocker", ["output", "model", "metrics"])
def test_fusion_train_checks_every_output_path_first(tiny_roberta_dir, llm_server, tmp_path, blocker) -> None:
    """fusion-train: output_dir a file, output_dir/model a file, output_dir/metrics.json a folder: refused first."""
    data = tmp_path / "train.csv"
    pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in make_tickets(40, seed=3)]).to_csv(data, index=False)
    out = tmp_path / "run"
    if blocker == "output":
        out.write_text("a file", encoding="utf-8")
        expected = (f"Error: output_dir {str(out)!r} exists and is not a folder; give a folder path (the results "
                    "are written inside it).")
    elif blocker == "model":
        out.mkdir()
        (out / "model").write_text("a file", encoding="utf-8")
        expected = f"Error: output_dir: {str(out / 'model')!r} is in the way (a file where a folder is written)."
    else:
        (out / "metrics.json").mkdir(parents=True)
        expected = f"Error: output_dir: {str(out / 'metrics.json')!r} is in the way (a folder where a file is written)."
    args = ["--data", str(data), "--label-columns", "topic", "--ml-model", tiny_roberta_dir, "--llm-provider",
            "openai-compatible", "--llm-base-url", llm_server.base_url, "--llm-model", "fake", "--output", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [expected]
    assert llm_server.requests == 0


LOST_SIGTERM = """
import sys, time
from pathlib import Path
from textclassify.runtime.atomic import atomic_path
from textclassify.runtime.output_paths import exit_on_sigterm
with exit_on_sigterm(grace_s=1.0), atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_text("partial")
    print(tmp, flush=True)
    while True:
        try:
            time.sleep(0.05)
        except BaseException:  # the SystemExit is lost, as when SIGTERM lands inside a finalizer
            pass
"""


@pytest.mark.timeout(60)
def test_sigterm_whose_exit_is_swallowed_still_ends_and_cleans_up(tmp_path) -> None:
    """SIGTERM's SystemExit can be lost (raised inside a weakref callback during an import, Python only prints
    "Exception ignored"): the process still exits 143 after the grace period and its temp file is removed."""
    proc = subprocess.Popen([sys.executable, "-c", LOST_SIGTERM, str(tmp_path / "out.csv")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert not tmp.exists() and not (tmp_path / "out.csv").exists()
