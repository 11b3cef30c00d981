"""FusionUtils (the original API's helpers) and the result/metrics helpers shared by the classes of that API.

`to_training_data` checks a DataFrame and builds TrainingData, `prepare_data_for_fusion` splits it
into train and test frames, `validate_fusion_data` collects every problem, `evaluate_fusion_model`
scores any model that returns a ClassificationResult, `plot_fusion_results` draws accuracy and
macro-F1 per model, and `save_fusion_model`/`load_fusion_model` delegate to AutoFusionClassifier.
"""
from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textclassify.runtime.atomic import atomic_path, write_atomic
from textclassify.runtime.decoding import decide, encode_targets, encode_true_labels
from textclassify.runtime.errors import ConfigError, DataError
from textclassify.runtime.metrics import classification_metrics
from textclassify.runtime.types import ClassificationResult, TrainingData

MAX_REPORTED_ERRORS = 20  # validate_fusion_data lists this many problems, then counts the rest


# ----------------------------------------------------------------------- shared result helpers
def targets_to_predictions(targets: np.ndarray, label_names: Sequence[str], multi_label: bool) -> list[Any]:
    """Label names per row: one name (multi-class) or the list of names whose column is 1."""
    if not multi_label:
        return [label_names[int(i)] for i in targets]
    return [[label_names[j] for j in np.flatnonzero(row)] for row in np.asarray(targets)]


def result_from_probabilities(probabilities: np.ndarray, label_names: Sequence[str], multi_label: bool, *,
                              thresholds: Sequence[float] | None = None, y_true: np.ndarray | None = None,
                              predicted: np.ndarray | None = None,
                              metadata: Mapping[str, Any] | None = None) -> ClassificationResult:
    """A ClassificationResult; metadata['metrics'] when `y_true` (from encode_true_labels) is given.

    `predicted` overrides the targets read off the probabilities (hard voting decides by votes).
    """
    probs = np.asarray(probabilities, dtype=np.float32)
    targets = decide(probs, multi_label, thresholds) if predicted is None else predicted
    meta = dict(metadata or {})
    if y_true is not None:
        meta["metrics"] = classification_metrics(y_true, targets, list(label_names), multi_label)
    return ClassificationResult(predictions=targets_to_predictions(targets, label_names, multi_label),
                                probabilities=probs, labels=list(label_names), metadata=meta)


def align_columns(probabilities: np.ndarray, source: Sequence[str], target: Sequence[str], what: str) -> np.ndarray:
    """Reorder probability columns from `source` label order into `target` order (same label set)."""
    if sorted(source) != sorted(target):
        raise DataError(f"{what}: predicts labels {list(source)}, but the ensemble's labels are {list(target)}.")
    return np.asarray(probabilities)[:, [list(source).index(name) for name in target]]


def check_training_data(data: Any, owner: str) -> TrainingData:
    """`fit` input must be TrainingData (validated with the same rules as a DataFrame)."""
    from textclassify.train.data import validate_training_data

    if not isinstance(data, TrainingData):
        raise DataError(f"{owner}.fit: expected TrainingData, got {type(data).__name__}; build it from a DataFrame "
                        "with FusionUtils.to_training_data(df, text_column, label_columns, multi_label).")
    if data.label_names is None:
        raise DataError(f"{owner}.fit: the labels are 0/1 rows without names; pass "
                        "TrainingData(..., label_names=[...]) in the rows' column order.")
    return validate_training_data(data)


# ----------------------------------------------------------------------------- validation
def _text_statistics(texts: Sequence[Any]) -> dict[str, Any]:
    lengths = [len(t) for t in texts if isinstance(t, str)]
    if not lengths:
        return {"min_chars": 0, "mean_chars": 0.0, "median_chars": 0.0, "max_chars": 0}
    return {"min_chars": min(lengths), "mean_chars": float(statistics.fmean(lengths)),
            "median_chars": float(statistics.median(lengths)), "max_chars": max(lengths)}


def _collect_errors(data: TrainingData) -> list[str]:
    """Every problem of a TrainingData that training would reject: the data module's rules, then the splits."""
    from textclassify.train.config import DEFAULT_CONFIG
    from textclassify.train.data import training_data_problems
    from textclassify.train.splits import make_splits

    errors = training_data_problems(data)
    if not errors:
        cfg = DEFAULT_CONFIG
        try:
            make_splits(data.label_matrix(), data.is_multi_label, cfg["fusion_split"], cfg["ml"]["val_split"],
                        cfg["fusion"]["val_split"], cfg["seed"], len(data.label_names or []))
        except DataError as e:
            errors.append(str(e))
    return errors


def _label_statistics(data: TrainingData) -> dict[str, Any]:
    names = list(data.label_names or [])
    counts: Counter[str] = Counter()
    for lab in data.labels:
        items = list(lab) if data.is_multi_label and isinstance(lab, (list, tuple, set)) else [lab]
        counts.update(str(item) for item in items)
    out: dict[str, Any] = {"label_counts": {name: int(counts.get(name, 0)) for name in names},
                           "n_labels": len(names)}
    if data.is_multi_label:
        sizes = [len(lab) for lab in data.labels if isinstance(lab, (list, tuple, set))]
        out["mean_labels_per_text"] = float(statistics.fmean(sizes)) if sizes else 0.0
        out["texts_without_labels"] = sum(1 for s in sizes if s == 0)
    return out


# ------------------------------------------------------------------------------- plotting
def _metric_pairs(metrics_by_model: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    rows = []
    for name, metrics in metrics_by_model.items():
        if not isinstance(metrics, Mapping) or "accuracy" not in metrics or "macro_f1" not in metrics:
            raise DataError(f"metrics_by_model[{name!r}]: expected a metrics dict with 'accuracy' and 'macro_f1' "
                            f"(as in result.metadata['metrics']), got {type(metrics).__name__}.")
        rows.append((str(name), float(metrics["accuracy"]), float(metrics["macro_f1"])))
    if not rows:
        raise DataError("metrics_by_model: expected at least one model's metrics, got an empty mapping.")
    return rows


def _draw_bars(rows: list[tuple[str, float, float]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [r[0] for r in rows]
    x = np.arange(len(rows))
    width = 0.38
    fig = Figure(figsize=(max(5.0, 1.3 * len(rows) + 2.0), 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for offset, column, label, color in ((-width / 2, 1, "accuracy", "#4C72B0"), (width / 2, 2, "macro-F1", "#DD8452")):
        values = [r[column] for r in rows]
        bars = ax.bar(x + offset, values, width, label=label, color=color)
        for bar, value in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.3f}", ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20 if max(len(n) for n in names) > 10 else 0, ha="right"
                       if max(len(n) for n in names) > 10 else "center")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.set_title(title, pad=26)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False)  # above the bars, never on them
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


class FusionUtils:
    """The original API's helper namespace: data preparation and checks, evaluation, plots, save/load."""

    @staticmethod
    def to_training_data(df: Any, text_column: str, label_columns: str | Sequence[str],
                         multi_label: bool = False) -> TrainingData:
        """A validated TrainingData from a DataFrame (one class-name column, or one 0/1 column per label)."""
        from textclassify.train.data import dataframe_to_training_data

        columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
        return dataframe_to_training_data(df, text_column, columns, multi_label)

    @staticmethod
    def prepare_data_for_fusion(df: Any, text_column: str = "text", label_columns: str | Sequence[str] = ("label",),
                                multi_label: bool = False, *, test_size: float = 0.2,
                                seed: int = 42) -> tuple[Any, Any]:
        """(train_df, test_df): `df` validated, then split with `test_size` of each label held out (multi-label:
        of each row's rarest label), seeded."""
        from textclassify.train.splits import stratified_split

        if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
            raise ConfigError(f"test_size: expected a float in (0, 1), got {test_size!r}.")
        data = FusionUtils.to_training_data(df, text_column, label_columns, multi_label)
        targets = encode_targets(data.labels, list(data.label_names or []), data.is_multi_label)
        train_idx, test_idx = stratified_split(targets, float(test_size), data.is_multi_label,
                                               np.random.default_rng(seed))
        return df.iloc[train_idx].reset_index(drop=True), df.iloc[test_idx].reset_index(drop=True)

    @staticmethod
    def validate_fusion_data(data: Any, text_column: str = "text", label_columns: str | Sequence[str] | None = None,
                             multi_label: bool = False) -> dict[str, Any]:
        """{'valid', 'errors', 'statistics'} for TrainingData or a DataFrame; problems are collected, not raised."""
        errors: list[str] = []
        td: TrainingData | None = None
        if isinstance(data, TrainingData):
            td = data
        else:
            from textclassify.train.data import read_labelled_frame

            columns = ["label"] if label_columns is None else (
                [label_columns] if isinstance(label_columns, str) else list(label_columns))
            try:
                td = read_labelled_frame(data, text_column, columns, multi_label)
            except DataError as e:
                errors.append(str(e))
        stats: dict[str, Any] = {}
        if td is not None:
            errors.extend(_collect_errors(td))
            stats = {"n": len(td.texts), "text": _text_statistics(td.texts), **_label_statistics(td),
                     "multi_label": td.is_multi_label}
        elif hasattr(data, "columns") and text_column in data.columns:
            stats = {"n": len(data), "text": _text_statistics(list(data[text_column]))}
        shown = errors[:MAX_REPORTED_ERRORS]
        if len(errors) > MAX_REPORTED_ERRORS:
            shown.append(f"... and {len(errors) - MAX_REPORTED_ERRORS} more problem(s).")
        return {"valid": not errors, "errors": shown, "statistics": stats}

    @staticmethod
    def evaluate_fusion_model(model: Any, texts: Sequence[str], labels: Sequence[Any], save_results: bool = False,
                              results_dir: str | os.PathLike = "fusion_results") -> dict[str, Any]:
        """Metrics of `model.predict(texts)` against `labels` (any model returning a ClassificationResult);
        with `save_results`, also written to `results_dir`/evaluation.json."""
        texts = list(texts)
        labels = list(labels) if not isinstance(labels, (str, bytes)) else labels
        if isinstance(labels, (str, bytes)) or len(labels) != len(texts):
            n = 1 if isinstance(labels, (str, bytes)) else len(labels)
            raise DataError(f"labels: {n} labels for {len(texts)} texts; they must match.")
        result = model.predict(texts)
        if not isinstance(result, ClassificationResult):
            raise DataError(f"model.predict returned {type(result).__name__}; expected a ClassificationResult.")
        multi = bool(getattr(model, "multi_label_", False)) or any(isinstance(p, list) for p in result.predictions)
        y_true = encode_true_labels(labels, len(texts), result.labels, multi)
        y_pred = encode_targets(result.predictions, result.labels, multi)
        metrics = classification_metrics(y_true, y_pred, result.labels, multi)
        if save_results:
            write_atomic(Path(results_dir).expanduser() / "evaluation.json", json.dumps(metrics, indent=2))
        return metrics

    @staticmethod
    def plot_fusion_results(metrics_by_model: Mapping[str, Any], save_path: str | os.PathLike,
                            title: str = "Accuracy and macro-F1 per model") -> Path:
        """A PNG bar chart (matplotlib, Agg canvas) of accuracy and macro-F1 per model; returns its path.

        `metrics_by_model`: {name: metrics}, or one model's metrics (evaluate_fusion_model's result).
        `save_path`: a .png file, or a folder (ending in '/', or existing), which gets fusion_results.png.
        """
        if isinstance(metrics_by_model, Mapping) and "accuracy" in metrics_by_model:
            metrics_by_model = {"model": metrics_by_model}
        rows = _metric_pairs(metrics_by_model)
        out = Path(save_path).expanduser()
        if str(save_path).endswith(("/", os.sep)) or out.is_dir() or not out.suffix:
            out = out / "fusion_results.png"
        elif out.suffix.lower() != ".png":
            raise ConfigError(f"save_path: expected a folder or a file name ending in .png, got {str(save_path)!r}.")
        _draw_bars(rows, out, title)
        return out

    @staticmethod
    def save_fusion_model(model: Any, directory: str | os.PathLike) -> Path:
        """Save a fitted FusionEnsemble or AutoFusionClassifier (safetensors + JSON, no pickle)."""
        from textclassify.train.auto import AutoFusionClassifier
        from textclassify.train.ensembles import FusionEnsemble

        if isinstance(model, (FusionEnsemble, AutoFusionClassifier)):
            return model.save(directory)
        raise ConfigError(f"model: expected a FusionEnsemble or AutoFusionClassifier, got {type(model).__name__}.")

    @staticmethod
    def load_fusion_model(directory: str | os.PathLike) -> Any:
        """A fitted FusionEnsemble from `save_fusion_model`'s folder (AutoFusionClassifier.load underneath)."""
        from textclassify.train.ensembles import FusionEnsemble

        return FusionEnsemble.load(directory)
