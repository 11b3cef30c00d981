"""The training report: `output_dir/report/` with metrics.json, summary.txt and PNG plots (matplotlib, Agg).

Plots: a confusion matrix per model (multi-class) or per-label F1 bars (multi-label), a reliability
diagram of the LLM scores before and after calibration, and the training curves of both stages.
The confusion matrices and the reliability diagram need per-row held-out predictions:

    held_out = {"targets": [n] class indices or [n, C] 0/1,
                "probabilities": {"ml": [n, C], "llm_raw": [n, C], "llm": [n, C], "stacker": ..., "fused": ...},
                "thresholds": [C] (multi-label, optional; 0.5 each)}
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textclassify.runtime.atomic import atomic_path
from textclassify.runtime.decoding import decide, label_thresholds
from textclassify.runtime.errors import DataError
from textclassify.runtime.metrics import classification_metrics, expected_calibration_error, log_loss
from textclassify.train import persistence
from textclassify.train.crossfit import (
    VS_SERVING_HEADER,
    left_out_lines,
    repeats_note,
    vs_serving,
    vs_serving_key,
)

REPORT_DIR = "report"
MODEL_NAMES: dict[str, str] = {
    "ml_stage1": "ML alone (stage-1 encoder)",
    "ml": "ML alone (final encoder)",
    "llm_raw": "LLM alone (raw)",
    "llm": "LLM alone (calibrated)",
    "lexical": "Lexical alone (TF-IDF + LR)",
    "stacker": "Stacker baseline",
    "fused": "Fused (served)",
    "fused_no_llm": "Fused without the LLM",
}
BAR_MODELS = ("ml", "llm", "stacker", "fused")  # per-label F1 bars: one bar per model and label
_COLOURS = {"ml_stage1": "#8c8c8c", "ml": "#1f77b4", "llm_raw": "#ff7f0e", "llm": "#2ca02c", "stacker": "#9467bd",
            "fused": "#d62728", "lexical": "#8c564b", "fused_no_llm": "#e377c2"}
_N_BINS = 10
_OWN_PLOT = re.compile(r"confusion_matrix_[\w-]+\.png|per_label_f1\.png|reliability_llm\.png|training_curves\.png")


def _display(name: str) -> str:
    return MODEL_NAMES.get(name, name)


def _ordered(names: Sequence[str]) -> list[str]:
    known = [n for n in MODEL_NAMES if n in names]
    return known + sorted(n for n in names if n not in MODEL_NAMES)


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "\u2026"


# ------------------------------------------------------------------------------------ held-out data
def check_held_out(held_out: Mapping[str, Any], labels: Sequence[str],
                   multi_label: bool) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(targets, probabilities per model, thresholds) from a held-out dict, every shape checked."""
    if not isinstance(held_out, Mapping) or "targets" not in held_out or "probabilities" not in held_out:
        got = sorted(held_out) if isinstance(held_out, Mapping) else type(held_out).__name__
        raise DataError(f"held_out: expected a mapping with 'targets' and 'probabilities', got {got}.")
    c = len(labels)
    targets = np.asarray(held_out["targets"])
    n = len(targets)
    if multi_label:
        if targets.shape != (n, c) or not np.isin(targets, (0, 1)).all():
            raise DataError(f"held_out['targets']: expected a 0/1 matrix of shape ({n}, {c}), "
                            f"got shape {targets.shape}.")
    elif targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer) or ((targets < 0) | (targets >= c)).any():
        raise DataError(f"held_out['targets']: expected class indices in [0, {c}) of shape ({n},), got shape "
                        f"{targets.shape} ({targets.dtype}).")
    probabilities = {}
    for name, value in dict(held_out["probabilities"]).items():
        p = np.asarray(value, dtype=np.float64)
        if p.shape != (n, c):
            raise DataError(f"held_out['probabilities'][{name!r}]: expected shape ({n}, {c}), got {p.shape}.")
        if not np.isfinite(p).all():
            raise DataError(f"held_out['probabilities'][{name!r}]: every probability must be finite.")
        probabilities[name] = p
    given = held_out.get("thresholds")
    thresholds = label_thresholds(given, c)
    if thresholds.shape != (c,):
        raise DataError(f"held_out['thresholds']: expected {c} thresholds, got shape {thresholds.shape}.")
    return targets, probabilities, thresholds


def _calibration(targets: np.ndarray, probabilities: Mapping[str, np.ndarray], multi_label: bool) -> dict[str, float]:
    raw, cal = probabilities["llm_raw"], probabilities["llm"]
    return {"log_loss_before": log_loss(raw, targets, multi_label),
            "log_loss_after": log_loss(cal, targets, multi_label),
            "ece_before": expected_calibration_error(raw, targets, multi_label),
            "ece_after": expected_calibration_error(cal, targets, multi_label)}


# ------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        from textclassify.runtime.errors import require

        require("matplotlib", "train")
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)  # the Agg canvas: no display, no pyplot global state
    return fig


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def plot_confusion_matrix(path: Path, targets: np.ndarray, predicted: np.ndarray, labels: Sequence[str],
                          title: str) -> Path:
    """Counts and row shares (colour) of true vs predicted class."""
    c = len(labels)
    counts = np.zeros((c, c), dtype=np.int64)
    np.add.at(counts, (targets, predicted), 1)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(5.0, 0.6 * c + 3.0), 16.0)
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    names = [_short(label, 26 if c <= 5 else 18) for label in labels]
    rotate = c > 4 or max(len(n) for n in names) > 6
    ax.set_xticks(range(c), names, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                  rotation_mode="anchor")
    ax.set_yticks(range(c), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if c <= 12:
        size = 9 if c <= 6 else 7
        for i in range(c):
            for j in range(c):
                colour = "white" if shares[i, j] > 0.55 else "black"
                ax.text(j, i, f"{counts[i, j]}\n{shares[i, j]:.0%}", ha="center", va="center", fontsize=size,
                        color=colour)
    return _save(fig, path)


def plot_label_f1(path: Path, metrics: Mapping[str, Mapping[str, Any]], labels: Sequence[str]) -> Path:
    """Grouped horizontal bars: per-label F1 of each model on the held-out data."""
    models = [m for m in BAR_MODELS if m in metrics] or _ordered(list(metrics))
    c, k = len(labels), len(models)
    bar = 0.8 / k
    fig = _figure(8.0, max(3.5, c * (0.25 * k + 0.35) + 1.6))
    ax = fig.add_subplot()
    for j, name in enumerate(models):
        f1 = [float(metrics[name]["per_label"][label]["f1"]) for label in labels]
        ys = np.arange(c) - 0.4 + bar * (j + 0.5)
        ax.barh(ys, f1, height=bar * 0.92, color=_COLOURS.get(name), label=_display(name))
        if c * k <= 80:
            for y, v in zip(ys, f1):
                ax.text(v + 0.01, y, f"{v:.2f}", va="center", fontsize=7)
    ax.set_yticks(range(c), [_short(label, 24) for label in labels])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("F1")
    ax.set_title("Per-label F1 on the held-out data", fontsize=11)
    fig.set_layout_engine("constrained")
    fig.legend(loc="outside lower center", ncol=min(k, 4), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _reliability_bins(p: np.ndarray, targets: np.ndarray, multi_label: bool) -> tuple[np.ndarray, ...]:
    if multi_label:
        conf, hit = p.ravel(), np.asarray(targets, dtype=float).ravel()
    else:
        conf, hit = p.max(axis=1), (p.argmax(axis=1) == targets).astype(float)
    bins = np.minimum((conf * _N_BINS).astype(int), _N_BINS - 1)
    counts = np.bincount(bins, minlength=_N_BINS)
    safe = np.maximum(counts, 1)
    return (np.bincount(bins, weights=conf, minlength=_N_BINS) / safe,
            np.bincount(bins, weights=hit, minlength=_N_BINS) / safe, counts)


def plot_reliability(path: Path, targets: np.ndarray, raw: np.ndarray, calibrated: np.ndarray,
                     multi_label: bool) -> Path:
    """Calibration curve of the LLM scores before and after calibration, with bin counts below."""
    fig = _figure(6.4, 6.6)
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
    top = fig.add_subplot(grid[0])
    bottom = fig.add_subplot(grid[1], sharex=top)
    top.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, label="perfectly calibrated")
    width = 0.4 / _N_BINS
    for k, (name, p) in enumerate((("llm_raw", raw), ("llm", calibrated))):
        conf, acc, counts = _reliability_bins(p, targets, multi_label)
        seen = counts > 0
        ece = expected_calibration_error(p, targets, multi_label, n_bins=_N_BINS)
        top.plot(conf[seen], acc[seen], marker="o", color=_COLOURS[name], label=f"{_display(name)}: ECE {ece:.3f}")
        centres = (np.arange(_N_BINS) + 0.5) / _N_BINS
        bottom.bar(centres + (k - 0.5) * width, counts, width=width * 0.95, color=_COLOURS[name])
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("observed frequency of the label" if multi_label else "accuracy")
    top.set_title(f"LLM scores before and after calibration (held-out n={len(targets)})", fontsize=11)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    top.tick_params(labelbottom=False)
    bottom.set_xlabel("predicted probability (every label)" if multi_label else "confidence (top-class probability)")
    bottom.set_ylabel("count")
    bottom.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _mark_kept(ax: Any, x: float, y: float) -> None:
    ax.plot([x], [y], marker="*", markersize=14, color="black", linestyle="none", label="kept state", zorder=5)


def plot_training_curves(path: Path, history: Mapping[str, Any]) -> Path:
    """Train/validation loss per epoch of stage 1 (encoder) and, where recorded, stage 2 (warm-up, then joint)."""
    fig = _figure(11.5, 4.4)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    s1 = history.get("stage1") or {}
    train1, val1 = list(s1.get("train_loss") or []), list(s1.get("val_loss") or [])
    left.plot(range(1, len(train1) + 1), train1, marker="o", color="#1f77b4", label="train loss")
    left.plot(range(1, len(val1) + 1), val1, marker="o", color="#ff7f0e", label="validation loss")
    best = s1.get("best_epoch", -1)
    if isinstance(best, int) and 0 <= best < len(val1):
        _mark_kept(left, best + 1, val1[best])
    left.set_title("Stage 1: encoder fine-tuning", fontsize=11)

    s2 = history.get("stage2") or {}
    wt, wv = list(s2.get("warmup_train_loss") or []), list(s2.get("warmup_val_loss") or [])
    jt, jv = list(s2.get("joint_train_loss") or []), list(s2.get("joint_val_loss") or [])
    w = len(wv)
    right.plot(range(1, len(wt) + 1), wt, color="#1f77b4", label="warm-up train loss")
    right.plot(range(1, w + 1), wv, color="#ff7f0e", label="warm-up fusion-val loss")
    if jv:
        xs = range(w + 1, w + len(jv) + 1)
        right.axvspan(w + 0.5, w + len(jv) + 0.5, color="#dddddd", alpha=0.5, label="joint fine-tuning")
        right.plot(xs[: len(jt)], jt, marker="o", color="#1f77b4", linestyle="--", label="joint train loss")
        right.plot(xs, jv, marker="o", color="#ff7f0e", linestyle="--", label="joint fusion-val loss")
    kept = str(s2.get("kept", ""))
    match = re.fullmatch(r"joint epoch (\d+)", kept)
    if match and int(match.group(1)) <= len(jv):
        _mark_kept(right, w + int(match.group(1)), jv[int(match.group(1)) - 1])
    elif wv:
        i = int(np.argmin(wv))
        _mark_kept(right, i + 1, wv[i])
    right.set_title(f"Stage 2: fusion MLP warm-up, then joint (kept: {kept or 'n/a'})", fontsize=11)
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    for ax, values in ((left, train1 + val1), (right, wt + wv + jt + jv)):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        positive = [v for v in values if v > 0]
        if positive and len(positive) == len(values) and max(positive) > 10 * min(positive):
            ax.set_yscale("log")  # a diverging epoch would flatten every other curve
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel("loss (log scale)")
        else:
            ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ report
def format_summary(metadata: Mapping[str, Any]) -> str:
    """Human-readable summary: accuracy and macro-F1 per model, calibration, LLM usage and timings."""
    metrics = metadata.get("metrics") or {}
    lines = []
    if "held_out" in metadata:
        lines += [f"Held-out data: {metadata['held_out']}, n={metadata.get('n_held_out', '?')}", ""]
    width = max([len(_display(n)) for n in metrics] + [5])
    multi_label = any("subset_accuracy" in m for m in metrics.values())
    accuracy = "subset accuracy" if multi_label else "accuracy"  # every label right, for multi-label
    lines.append(f"{'model':<{width}}  {accuracy:>8}  {'macro-F1':>8}")
    for name in _ordered(list(metrics)):
        m = metrics[name]
        lines.append(f"{_display(name):<{width}}  {m['accuracy']:>{len(accuracy)}.3f}  {m['macro_f1']:>8.3f}")
    cal = metadata.get("calibration")
    if cal:
        lines += ["", f"LLM calibration: log loss {cal['log_loss_before']:.3f} -> {cal['log_loss_after']:.3f}, "
                      f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}"]
    usage = {k: v for k, v in (metadata.get("llm_usage") or {}).items() if isinstance(v, (int, float))}
    if usage:
        lines.append("LLM usage: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:.4g}"
                                               for k, v in usage.items()))
    timings = metadata.get("timings") or {}
    if timings:
        names = {k: re.sub(r"stage(\d)", r"stage \1", k.removesuffix("_s").replace("_", " ")) for k in timings}
        lines.append("Time: " + ", ".join(f"{names[k]} {v:.1f} s" for k, v in timings.items()))
    kept = ((metadata.get("history") or {}).get("stage2") or {}).get("kept")
    if kept:
        lines.append(f"Stage 2 kept: {kept} (best fusion-val loss)")
    stage1 = metadata.get("stage1") or {}
    if stage1.get("summary"):
        lines += ["", stage1["summary"][:1].upper() + stage1["summary"][1:]]
    lines += format_combiner(metadata.get("combiner") or {})
    lines += format_gate_and_cost(metadata.get("gate") or {}, metadata.get("cost") or {})
    return "\n".join(lines)


UNKNOWN_PRICE = "no price for this model; set llm.price_per_million to see USD"


def _usd(value: Any) -> str:
    return "USD unknown" if value is None else f"${value:.4f}"


def format_gate_and_cost(gate: Mapping[str, Any], cost: Mapping[str, Any]) -> list[str]:
    """The cascade's gate on held-out data, and the LLM's tokens and cost per stage and per 1,000 predictions."""
    lines: list[str] = []
    held = gate.get("held_out") or {}
    if gate:
        if gate.get("threshold") is None:
            why = "disabled (gate: off)" if gate.get("enabled") is False else "no threshold met the target"
            lines += ["", f"LLM gate: none, every row asks the LLM ({why})"]
        else:
            lines += ["", f"LLM gate: {gate.get('rule')} >= {gate['threshold']:.4f} (target {gate.get('target')}, "
                          f"chosen on {gate.get('chosen_on', {}).get('source', '?')})"]
        if held:
            lines.append(f"  held-out: {held['llm_calls_saved']} of {held['n']} LLM calls saved "
                         f"({1 - held['llm_fraction']:.1%}); accuracy {held['accuracy_gated']:.3f} gated vs "
                         f"{held['accuracy_always_llm']:.3f} always-LLM (cost {held['accuracy_cost']:+.3f}); "
                         f"no-LLM head alone {held.get('accuracy_no_llm', float('nan')):.3f}")
    for stage, c in (cost.get("stages") or {}).items():
        lines.append(f"LLM cost, {stage.replace('_', ' ')}: {c['requests']} requests, {c['prompt_tokens']:,} prompt + "
                     f"{c['completion_tokens']:,} completion tokens, {_usd(c['cost_usd'])}")
    per = cost.get("per_1000_predictions") or {}
    if per:
        lines.append(f"Projected LLM cost of 1,000 predictions: {_usd(per.get('always_llm_usd'))} always-LLM, "
                     f"{_usd(per.get('gated_usd'))} with the gate ({per.get('llm_calls_gated')} LLM calls)")
    prices = [c.get("cost_usd") for c in (cost.get("stages") or {}).values()] + (
        [per.get("always_llm_usd")] if per else [])
    if any(p is None for p in prices):
        lines.append(f"  ({UNKNOWN_PRICE})")
    return lines


def format_combiner(combiner: Mapping[str, Any]) -> list[str]:
    """The cross-validation table of the combiners and which one serves."""
    table = combiner.get("cv_table") or []
    if not table:
        return []
    lines = ["", f"Combiner serving: {combiner.get('chosen')} (lowest {combiner.get('folds', '?')}-fold cross-fitted "
                 f"log-loss on the fusion rows{repeats_note(combiner.get('repeats'))}; a tie goes to the simpler); "
                 f"lexical component: {combiner.get('lexical', '?')}"]
    width = max(len(r["combiner"]) for r in table) + 2
    lines.append(f"  {'combiner':<{width}}{'log-loss':>9}  {'accuracy':>8}  {'macro-F1':>8}  {VS_SERVING_HEADER}")
    for r in table:
        lines.append(f"  {r['combiner']:<{width}}{r['cv_log_loss']:>9.4f}  {r['cv_accuracy']:>8.3f}  "
                     f"{r['cv_macro_f1']:>8.3f}  {vs_serving(r)}")
    lines += left_out_lines(combiner) + vs_serving_key(table)
    if combiner.get("thresholds"):
        lines.append(f"Per-label thresholds ({combiner.get('threshold_objective')}): "
                     + ", ".join(f"{t:.3f}" for t in combiner["thresholds"]))
    return lines


def write_report(output_dir: str | os.PathLike, metadata: Mapping[str, Any], held_out: Mapping[str, Any] | None,
                 labels: Sequence[str], multi_label: bool) -> list[Path]:
    """Write output_dir/report/ (metrics.json, summary.txt, PNGs); returns the paths written.

    Without `held_out` the confusion matrices and the reliability diagram are skipped (they need per-row
    predictions); the per-label F1 bars and the training curves come from `metadata` alone.
    """
    folder = Path(output_dir).expanduser() / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(labels)
    metrics = dict(metadata.get("metrics") or {})
    written: list[Path] = []
    calibration = metadata.get("calibration")
    if held_out is not None:
        targets, probabilities, thresholds = check_held_out(held_out, labels, multi_label)
        if not multi_label:
            for name in _ordered(list(probabilities)):
                predicted = decide(probabilities[name], multi_label, thresholds)
                m = classification_metrics(targets, predicted, labels, multi_label)
                title = (f"{_display(name)} (held-out n={len(targets)})\n"
                         f"accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
                slug = re.sub(r"[^\w-]", "_", name)
                written.append(plot_confusion_matrix(folder / f"confusion_matrix_{slug}.png", targets, predicted,
                                                     labels, title))
        if "llm_raw" in probabilities and "llm" in probabilities:
            written.append(plot_reliability(folder / "reliability_llm.png", targets, probabilities["llm_raw"],
                                            probabilities["llm"], multi_label))
            calibration = calibration or _calibration(targets, probabilities, multi_label)
    if multi_label and metrics:
        written.append(plot_label_f1(folder / "per_label_f1.png", metrics, labels))
    history = metadata.get("history") or {}
    if (history.get("stage1") or {}).get("train_loss") or (history.get("stage2") or {}).get("warmup_train_loss"):
        written.append(plot_training_curves(folder / "training_curves.png", history))

    for stale in folder.glob("*.png"):  # plots of an earlier run into the same folder would mislead
        if stale not in written and _OWN_PLOT.fullmatch(stale.name):
            stale.unlink()
    summary = format_summary({**metadata, "calibration": calibration} if calibration else metadata)
    (folder / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    written.append(folder / "summary.txt")
    payload = {
        "labels": labels, "multi_label": multi_label,
        "held_out": metadata.get("held_out"), "n_held_out": metadata.get("n_held_out"),
        "summary": {name: {"model": _display(name), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
                    for name, m in ((n, metrics[n]) for n in _ordered(list(metrics)))},
        "llm_calibrated_vs_raw": {
            "raw": {k: metrics["llm_raw"][k] for k in ("accuracy", "macro_f1")} if "llm_raw" in metrics else None,
            "calibrated": {k: metrics["llm"][k] for k in ("accuracy", "macro_f1")} if "llm" in metrics else None,
            **(calibration or {}),
        },
        "models": metrics,
        "llm_usage": metadata.get("llm_usage"), "llm_score_method": metadata.get("llm_score_method"),
        "splits": metadata.get("splits"), "timings": metadata.get("timings"), "history": metadata.get("history"),
        "stage1": metadata.get("stage1"), "combiner": metadata.get("combiner"),
        "gate": metadata.get("gate"), "cost": metadata.get("cost"),
        "files": sorted([p.name for p in written] + ["metrics.json"]),
    }
    persistence.write_json(folder / "metrics.json", payload)
    written.append(folder / "metrics.json")
    return written


def write_classifier_report(clf: Any, output_dir: str | os.PathLike | None = None) -> list[Path]:
    """`write_report` for a fitted AutoFusionClassifier (held-out rows from metadata_['held_out_predictions'])."""
    clf._check_fitted()
    metadata = clf.metadata_
    target = output_dir if output_dir is not None else clf.config_["output_dir"]
    return write_report(target, metadata, metadata.get("held_out_predictions"), clf.labels_, clf.multi_label_)
