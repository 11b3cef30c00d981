"""The training report folder, from synthetic held-out predictions (no training needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from textclassify.runtime.errors import DataError
from textclassify.runtime.metrics import classification_metrics
from textclassify.train.reports import check_held_out, format_summary, write_report

LABELS = ["billing", "shipping", "technical support request"]
GENRES = ["action", "comedy", "drama", "documentary and biography", "horror"]
NOISE = {"ml_stage1": 1.0, "ml": 0.9, "llm_raw": 2.0, "llm": 1.6, "stacker": 0.8, "fused": 0.7}


def _synthetic(labels: list[str], multi_label: bool, n: int = 120, seed: int = 0, joint_epochs: int = 3):
    """Held-out targets and per-model probabilities with model-specific noise, plus matching metadata."""
    rng = np.random.default_rng(seed)
    c = len(labels)
    targets = (rng.random((n, c)) < 0.4).astype(np.int64) if multi_label else rng.integers(0, c, n)
    onehot = targets if multi_label else np.eye(c)[targets]
    probabilities = {}
    for name, noise in NOISE.items():
        z = 2 * onehot + rng.normal(0, noise, (n, c))
        if multi_label:
            probabilities[name] = 1 / (1 + np.exp(1 - z))
        else:
            e = np.exp(z * (3 if name == "llm_raw" else 1))
            probabilities[name] = e / e.sum(axis=1, keepdims=True)
    predicted = {k: (p >= 0.5).astype(np.int64) if multi_label else p.argmax(axis=1) for k, p in probabilities.items()}
    metadata = {
        "metrics": {k: classification_metrics(targets, y, labels, multi_label) for k, y in predicted.items()},
        "held_out": "fusion_val (also used for early stopping)", "n_held_out": n,
        "llm_usage": {"requests": 120, "cache_hits": 3, "total_tokens": 12345},
        "timings": {"llm_scoring_s": 3.2, "stage1_s": 40.1, "stage2_s": 12.0},
        "history": {
            "stage1": {"train_loss": [1.1, 0.8, 0.6], "val_loss": [1.0, 0.85, 0.9], "best_epoch": 1},
            "stage2": {"warmup_train_loss": list(np.linspace(1.0, 0.5, 30)),
                       "warmup_val_loss": list(np.linspace(1.0, 0.6, 30)),
                       "joint_train_loss": [0.45, 0.4, 0.38][:joint_epochs],
                       "joint_val_loss": [0.58, 0.57, 0.6][:joint_epochs],
                       "kept": "joint epoch 2" if joint_epochs >= 2 else "warmup"},
        },
    }
    return metadata, {"targets": targets, "probabilities": probabilities}


def _assert_png(path, min_side: int = 300) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_side, image.size


def test_multi_class_report(tmp_path):
    """Multi-class: one confusion matrix per model, the reliability diagram, training curves, JSON, summary."""
    metadata, held_out = _synthetic(LABELS, multi_label=False)
    written = write_report(tmp_path, metadata, held_out, LABELS, multi_label=False)
    names = sorted(p.name for p in written)
    assert names == sorted([f"confusion_matrix_{m}.png" for m in NOISE] + [
        "reliability_llm.png", "training_curves.png", "summary.txt", "metrics.json"])
    assert all(p.parent == tmp_path / "report" for p in written)
    for p in written:
        if p.suffix == ".png":
            _assert_png(p)
    payload = json.loads((tmp_path / "report" / "metrics.json").read_text())
    fused = metadata["metrics"]["fused"]
    assert payload["summary"]["fused"] == {"model": "Fused (served)", "accuracy": fused["accuracy"],
                                           "macro_f1": fused["macro_f1"]}
    assert list(payload["summary"]) == ["ml_stage1", "ml", "llm_raw", "llm", "stacker", "fused"]
    cal = payload["llm_calibrated_vs_raw"]
    assert cal["raw"]["accuracy"] == metadata["metrics"]["llm_raw"]["accuracy"]
    assert cal["calibrated"]["macro_f1"] == metadata["metrics"]["llm"]["macro_f1"]
    assert cal["ece_before"] > cal["ece_after"]  # the sharpened raw scores are over-confident
    assert payload["files"] == sorted(names)


def test_multi_label_report(tmp_path):
    """Multi-label: per-label F1 bars instead of confusion matrices."""
    metadata, held_out = _synthetic(GENRES, multi_label=True)
    written = write_report(tmp_path, metadata, held_out, GENRES, multi_label=True)
    assert sorted(p.name for p in written) == [
        "metrics.json", "per_label_f1.png", "reliability_llm.png", "summary.txt", "training_curves.png"]
    for p in written:
        if p.suffix == ".png":
            _assert_png(p)
    payload = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert payload["models"]["fused"]["per_label"]["horror"] == metadata["metrics"]["fused"]["per_label"]["horror"]
    assert payload["multi_label"] is True


def test_report_without_held_out_rows(tmp_path):
    """Without per-row predictions only the plots metadata allows are drawn."""
    metadata, _ = _synthetic(GENRES, multi_label=True)
    written = write_report(tmp_path, metadata, None, GENRES, multi_label=True)
    assert sorted(p.name for p in written) == ["metrics.json", "per_label_f1.png", "summary.txt", "training_curves.png"]
    metadata, _ = _synthetic(LABELS, multi_label=False)
    del metadata["history"]
    written = write_report(tmp_path / "mc", metadata, None, LABELS, multi_label=False)
    assert sorted(p.name for p in written) == ["metrics.json", "summary.txt"]


def test_training_curves_when_warmup_was_kept(tmp_path):
    """No joint epochs (fusion.num_epochs 0): the curves still draw, the warm-up result is marked kept."""
    metadata, held_out = _synthetic(LABELS, multi_label=False, joint_epochs=0)
    written = write_report(tmp_path, metadata, held_out, LABELS, multi_label=False)
    _assert_png(tmp_path / "report" / "training_curves.png")
    assert "Stage 2 kept: warmup (best fusion-val loss)" in (tmp_path / "report" / "summary.txt").read_text()
    assert len(written) == 10


def test_summary_table():
    """The summary lists every model in a fixed order with accuracy and macro-F1."""
    metadata, _ = _synthetic(LABELS, multi_label=False)
    metadata["calibration"] = {"log_loss_before": 1.5, "log_loss_after": 0.75, "ece_before": 0.25, "ece_after": 0.05}
    lines = format_summary(metadata).splitlines()
    assert lines[0] == "Held-out data: fusion_val (also used for early stopping), n=120"
    assert lines[2].split() == ["model", "accuracy", "macro-F1"]
    fused = metadata["metrics"]["fused"]
    assert lines[8] == f"Fused (served)              {fused['accuracy']:>8.3f}  {fused['macro_f1']:>8.3f}"
    assert [line[:26].strip() for line in lines[3:9]] == [
        "ML alone (stage-1 encoder)", "ML alone (final encoder)", "LLM alone (raw)", "LLM alone (calibrated)",
        "Stacker baseline", "Fused (served)"]
    assert "LLM calibration: log loss 1.500 -> 0.750, ECE 0.250 -> 0.050" in lines
    assert "LLM usage: requests 120, cache_hits 3, total_tokens 12,345" in lines
    assert "Time: llm scoring 3.2 s, stage 1 40.1 s, stage 2 12.0 s" in lines


def test_held_out_shapes_are_checked():
    """Wrong shapes or targets in the held-out dict are DataErrors naming the entry."""
    _, held_out = _synthetic(LABELS, multi_label=False, n=10)
    with pytest.raises(DataError, match=r"^held_out: expected a mapping with 'targets' and 'probabilities', "
                                        r"got \['targets'\]\.$"):
        check_held_out({"targets": held_out["targets"]}, LABELS, False)
    bad = {**held_out, "probabilities": {"fused": np.zeros((10, 2))}}
    with pytest.raises(DataError, match=r"^held_out\['probabilities'\]\['fused'\]: expected shape \(10, 3\), "
                                        r"got \(10, 2\)\.$"):
        check_held_out(bad, LABELS, False)
    with pytest.raises(DataError, match=r"^held_out\['targets'\]: expected class indices in \[0, 3\)"):
        check_held_out({**held_out, "targets": np.full(10, 3)}, LABELS, False)
    with pytest.raises(DataError, match=r"^held_out\['targets'\]: expected a 0/1 matrix of shape \(10, 3\)"):
        check_held_out(held_out, LABELS, True)


def test_multi_label_summary_says_subset_accuracy():
    """For multi-label the accuracy column is named for what it is: every label right."""
    metadata, _ = _synthetic(GENRES, multi_label=True)
    lines = format_summary(metadata).splitlines()
    assert lines[2].split() == ["model", "subset", "accuracy", "macro-F1"]
    fused = metadata["metrics"]["fused"]
    assert lines[8] == f"Fused (served)              {fused['accuracy']:>15.3f}  {fused['macro_f1']:>8.3f}"


def test_training_curves_with_a_diverging_joint_epoch(tmp_path):
    """Losses spanning two orders of magnitude still draw (on a log axis)."""
    metadata, _ = _synthetic(LABELS, multi_label=False)
    metadata["history"]["stage2"]["joint_train_loss"] = [51.0, 31.0, 24.0]
    metadata["history"]["stage2"]["joint_val_loss"] = [32.0, 8.0, 10.0]
    write_report(tmp_path, metadata, None, LABELS, multi_label=False)
    _assert_png(tmp_path / "report" / "training_curves.png")
    payload = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert payload["history"]["stage2"]["joint_val_loss"] == [32.0, 8.0, 10.0]


def test_plots_of_an_earlier_run_are_removed(tmp_path):
    """Writing a multi-label report where a multi-class one was leaves no stale confusion matrices."""
    metadata, held_out = _synthetic(LABELS, multi_label=False)
    write_report(tmp_path, metadata, held_out, LABELS, multi_label=False)
    (tmp_path / "report" / "notes.png").write_bytes(b"mine")
    metadata, held_out = _synthetic(GENRES, multi_label=True)
    written = write_report(tmp_path, metadata, held_out, GENRES, multi_label=True)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted([p.name for p in written] + ["notes.png"])
