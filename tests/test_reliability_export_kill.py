"""Export killed (SIGKILL) at any point: the target holds the previous bundle intact, the new complete one,
or nothing -- never a half-written bundle; leftovers are recognisable hidden `.NAME.export-*` entries,
and the next export to the same target removes them (restoring the previous bundle where none was left).

Part 1 runs the real `fusion-export` command on a saved tiny model and kills it as each phase shows up
on disk (the staging folder created; model.onnx written, int8 quantisation running). Part 2
kills a light process at every filesystem step of the commit (fsyncs, the rename/exchange, the clean-up),
with and without renameat2, so the microsecond windows no timer could hit are covered too.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.support.data import LABELS
from tests.support.fitted_model import make_fitted_model
from textclassify import AutoFusionClassifier
from textclassify.export import export_bundle
from textclassify.runtime import constants as K
from textclassify.runtime.manifest import load_manifest
from textclassify.train.config import validate_config

ROOT = Path(__file__).resolve().parents[1]
FUSION_EXPORT = Path(sys.executable).with_name("fusion-export")
FITTED_ATTRIBUTES = ("model_", "tokenizer_", "calibrator_", "labels_", "multi_label_", "thresholds_",
                     "max_length_", "metrics_", "validation_", "llm_settings_")
LEFTOVER = re.compile(r"^\.bundle\.export-[0-9a-f]{10}(-work|-previous|\.lock)?$")


@pytest.fixture(scope="module")
def saved(tiny_roberta_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A small fitted model saved with AutoFusionClassifier.save, and an older bundle of it (max_length 32)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("reliability_export_kill")
    fm = make_fitted_model(tiny_roberta_dir, LABELS, multi_label=False)
    config = {"llm_provider": "openai-compatible", "llm_base_url": "http://127.0.0.1:9/v1",
              "label_columns": ["topic"], "ml_model": tiny_roberta_dir}
    clf = AutoFusionClassifier(config)
    clf.config_ = validate_config(config)
    for name in FITTED_ATTRIBUTES:
        setattr(clf, name, getattr(fm, name))
    clf.metadata_ = {"llm_usage": {}}
    model_dir = clf.save(tmp / "model")
    previous = export_bundle(clf, tmp / "previous", max_length=32, progress=False)
    torch.set_num_threads(before)
    return model_dir, previous


def tree(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def outcome(target: Path, previous: Path | None) -> str:
    """'previous' (byte for byte), 'new' (complete and verified) or 'none'; anything else fails the test."""
    if not target.exists():
        return "none"
    if previous is not None and tree(target) == tree(previous):
        load_manifest(target)
        return "previous"
    manifest = load_manifest(target)  # raises BundleError for a half-written bundle
    assert manifest.max_length == 64, manifest.max_length  # the new export, not the previous (32)
    assert set(manifest.files) >= {"model.onnx", "calibrator.onnx", "tokenizer.json"}
    return "new"


# --------------------------------------------------------------------- part 1: the real command
def _staging(parent: Path) -> Path | None:
    found = [p for p in parent.glob(".bundle.export-*") if not p.name.endswith(("-work", "-previous", ".lock"))]
    return found[0] if found else None


PHASES = {
    # phase -> (has a previous bundle?, kill as soon as this is true of the parent folder)
    "staging folder created": (False, lambda parent: _staging(parent) is not None),
    "int8 quantising": (True, lambda parent: (s := _staging(parent)) is not None and (s / K.ENCODER_FILE).exists()),
}


def _kill_at(phase: str, model_dir: Path, previous: Path, parent: Path) -> dict:
    has_previous, ready = PHASES[phase]
    parent.mkdir()
    target = parent / "bundle"
    if has_previous:
        shutil.copytree(previous, target)
    proc = subprocess.Popen([str(FUSION_EXPORT), "--model", str(model_dir), "--output", str(target), "--int8"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    seen: list[str] = []
    while proc.poll() is None and time.monotonic() < deadline:
        if ready(parent):
            stage = _staging(parent)
            seen = sorted(p.name for p in stage.iterdir()) if stage is not None and stage.exists() else []
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    return {"phase": phase, "returncode": proc.returncode, "staged_at_kill": seen, "stderr": err.decode()[-2000:],
            "outcome": outcome(target, previous if has_previous else None), "leftovers": leftovers(parent)}


def test_killed_fusion_export_leaves_previous_or_nothing(saved, tmp_path):
    """fusion-export --int8 killed at two phases: the previous bundle (or none) stays; a re-export then works."""
    model_dir, previous = saved
    with ThreadPoolExecutor(max_workers=len(PHASES)) as pool:
        results = list(pool.map(lambda i_p: _kill_at(i_p[1], model_dir, previous, tmp_path / f"run{i_p[0]}"),
                                enumerate(PHASES)))
    for r in results:
        print(f"{r['phase']:>24}: rc={r['returncode']} staged={r['staged_at_kill']} -> {r['outcome']}; "
              f"leftovers {r['leftovers']}")
    for r in results:
        assert all(LEFTOVER.match(name) for name in r["leftovers"]), r
        assert r["returncode"] == -signal.SIGKILL, r  # the kill landed before the export finished
        assert r["outcome"] == ("previous" if PHASES[r["phase"]][0] else "none"), r
        assert r["leftovers"], r
    by_phase = {r["phase"]: r for r in results}
    assert {K.TOKENIZER_FILE, K.CALIBRATOR_FILE, K.ENCODER_FILE} <= set(by_phase["int8 quantising"]["staged_at_kill"])

    # The next export replaces the previous bundle whole and removes the dead run's hidden entries.
    parent = tmp_path / f"run{list(PHASES).index('int8 quantising')}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_bundle(model_dir, parent / "bundle", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert load_manifest(parent / "bundle").max_length == 64 and tree(parent / "bundle") != tree(previous)
    assert leftovers(parent) == []


# ------------------------------------------------------------ part 2: every step of the commit
# One single-threaded driver process (no torch) forks a child per kill point; each child stages the files,
# commits with every filesystem step hooked, and SIGKILLs itself at step k. Forking from a process with no
# other threads is safe, and one interpreter start serves every kill point.
COMMIT_DRIVER = r"""
import json, os, shutil, signal, sys
from pathlib import Path
from textclassify.export import bundle_writer as bw
from textclassify.runtime import atomic

source, previous, work, exchange = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
events = []
kill_at = [0]

def step(name):
    events.append(name)
    if len(events) == kill_at[0]:
        os.kill(os.getpid(), signal.SIGKILL)

def hooked(name, fn):
    def wrapped(*args, **kwargs):
        step(name + ":before")
        result = fn(*args, **kwargs)
        step(name + ":after")
        return result
    return wrapped

if exchange == "unavailable":
    atomic.exchange = lambda a, b: False
atomic.exchange = hooked("renameat2_exchange", atomic.exchange)
bw._fsync_file = hooked("fsync_file", bw._fsync_file)
bw._fsync_dir = hooked("fsync_dir", bw._fsync_dir)
bw.os.rename = hooked("rename", os.rename)
bw.shutil.rmtree = hooked("rmtree", shutil.rmtree)

def export_new(target):
    manifest = json.loads((source / "manifest.json").read_text())
    manifest.pop("files")
    manifest["metrics"] = {"marker": "new"}
    with bw.BundleStage(target) as stage:
        step("staging_created")
        for name in sorted(os.listdir(source)):
            if name != "manifest.json":
                shutil.copyfile(source / name, stage.path(name))
                step("staged:" + name)
        stage.commit(manifest)

def run(k):
    parent = work / f"k{k}"
    parent.mkdir(parents=True)
    shutil.copytree(previous, parent / "bundle")
    pid = os.fork()
    if pid == 0:
        kill_at[0] = k
        try:
            export_new(parent / "bundle")
        finally:
            (parent / "events.json").write_text(json.dumps(events))
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

codes = {k: run(k) for k in [0]}
n = len(json.loads((work / "k0" / "events.json").read_text()))
codes.update({k: run(k) for k in range(1, n + 1)})
print(json.dumps(codes))
"""


def _outcome_after_commit_kill(parent: Path, previous: Path) -> dict:
    target = parent / "bundle"
    result: dict = {"leftovers": leftovers(parent)}
    if not target.exists():
        result["outcome"] = "none"
        aside = [parent / n for n in result["leftovers"] if n.endswith("-previous")]
        result["previous_kept_aside"] = len(aside) == 1 and tree(aside[0]) == tree(previous)
    elif tree(target) == tree(previous):
        result["outcome"] = "previous"
    else:
        manifest = load_manifest(target)  # a half-written bundle fails here
        assert manifest.raw["metrics"] == {"marker": "new"}
        result["outcome"] = "new"
    return result


def _outcome_after_recovery(parent: Path, previous: Path) -> dict:
    """What a next export finds once it has cleaned up (bundle_writer.recover_stale_stages)."""
    from textclassify.export.bundle_writer import recover_stale_stages

    recover_stale_stages(parent / "bundle")
    result = _outcome_after_commit_kill(parent, previous)
    result.pop("previous_kept_aside", None)
    return result


@pytest.mark.parametrize("exchange", ["renameat2", "unavailable"])
def test_kill_at_every_commit_step(saved, tmp_path, exchange):
    """SIGKILL before and after each fsync, rename/exchange and clean-up: previous, new, or (in the rename-aside
    fallback's one window) no bundle with the previous one kept whole beside it."""
    _, previous = saved
    source = tmp_path / "source"
    shutil.copytree(previous, source)
    proc = subprocess.run([sys.executable, "-c", COMMIT_DRIVER, str(source), str(previous), str(tmp_path / "w"),
                           exchange], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    codes = {int(k): v for k, v in json.loads(proc.stdout).items()}
    events = json.loads((tmp_path / "w" / "k0" / "events.json").read_text())
    assert codes[0] == 0 and _outcome_after_commit_kill(tmp_path / "w" / "k0", previous) == {
        "leftovers": [], "outcome": "new"}
    # the 1-based step after which the target is the new bundle
    if exchange == "renameat2":
        swapped = events.index("renameat2_exchange:after") + 1
    else:
        swapped = max(i for i, e in enumerate(events, 1) if e == "rename:after")  # the staging dir -> target
    lines, none_windows = [], []
    for k, event in enumerate(events, start=1):
        assert codes[k] == -signal.SIGKILL, (k, event, codes[k])
        run = _outcome_after_commit_kill(tmp_path / "w" / f"k{k}", previous)
        assert all(LEFTOVER.match(name) for name in run["leftovers"]), run
        recovered = _outcome_after_recovery(tmp_path / "w" / f"k{k}", previous)
        lines.append(f"{k:2d} {event:28s} -> {run['outcome']:8s} leftovers={run['leftovers']}; next export's "
                     f"clean-up -> {recovered}")
        # the next export removes every leftover; where the kill left no bundle, the previous one is back
        assert recovered == {"leftovers": [], "outcome": "previous" if run["outcome"] == "none" else run["outcome"]}
        if k >= swapped:
            assert run["outcome"] == "new", (k, event, run)
        elif run["outcome"] == "none":
            assert run["previous_kept_aside"], (k, event, run)
            none_windows.append(event)
        else:
            assert run["outcome"] == "previous", (k, event, run)
    print("\n".join(lines))
    if exchange == "renameat2":
        assert none_windows == []
    else:  # after the old bundle was renamed aside, before the new one was renamed in
        assert none_windows == ["rename:after", "rename:before"], none_windows
