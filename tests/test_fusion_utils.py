"""FusionUtils: data preparation and checks, evaluation, the results plot, save/load of a fusion model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.support.data import LABELS, make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify.runtime.errors import ConfigError, DataError
from textclassify.runtime.types import ClassificationType, TrainingData
from textclassify.train.encoder_classifier import RoBERTaClassifier
from textclassify.train.ensembles import EnsembleConfig, FusionEnsemble
from textclassify.train.fusion_utils import FusionUtils
from textclassify.train.llm_classifiers import GeminiClassifier

torch.set_num_threads(1)


def _data(n: int, seed: int) -> TrainingData:
    rows = make_tickets(n, seed=seed)
    return TrainingData([t for t, _ in rows], [labs[0] for _, labs in rows])


def test_to_training_data_from_class_names_and_one_hot() -> None:
    """A class-name column or one 0/1 column per label becomes validated TrainingData."""
    df = pd.DataFrame({"text": ["good film", "bad film", "fine film", "awful film"],
                       "sentiment": ["pos", "neg", "pos", "neg"]})
    data = FusionUtils.to_training_data(df, "text", "sentiment")
    assert data.label_names == ["neg", "pos"] and data.labels == ["pos", "neg", "pos", "neg"]
    multi = pd.DataFrame({"text": ["a b", "b c", "a c", "a b c"], "a": [1, 0, 1, 1], "b": [1, 1, 0, 1],
                          "c": [0, 1, 1, 1]})
    data = FusionUtils.to_training_data(multi, "text", ["a", "b", "c"], multi_label=True)
    assert data.classification_type is ClassificationType.MULTI_LABEL
    assert data.labels == [["a", "b"], ["b", "c"], ["a", "c"], ["a", "b", "c"]]


def test_to_training_data_names_a_missing_column() -> None:
    """A missing label column is a DataError naming it and the columns that exist."""
    with pytest.raises(DataError) as err:
        FusionUtils.to_training_data(pd.DataFrame({"text": ["x"]}), "text", ["label"])
    assert str(err.value) == "column 'label': not found in the data (columns: ['text'])."


def test_prepare_data_for_fusion_splits_train_and_test_by_label() -> None:
    """The original API's form: (train_df, test_df), test_size of each label held out, seeded, rows intact."""
    df = pd.DataFrame({"text": [f"text {i}" for i in range(50)], "label": ["a"] * 30 + ["b"] * 15 + ["c"] * 5})
    train_df, test_df = FusionUtils.prepare_data_for_fusion(df, text_column="text", label_columns=["label"])
    assert test_df["label"].value_counts().to_dict() == {"a": 6, "b": 3, "c": 1}
    assert sorted(train_df["text"].tolist() + test_df["text"].tolist()) == sorted(df["text"].tolist())
    again, _ = FusionUtils.prepare_data_for_fusion(df, "text", ["label"])
    assert again.equals(train_df)
    other, _ = FusionUtils.prepare_data_for_fusion(df, "text", ["label"], seed=7)
    assert not other.equals(train_df)
    with pytest.raises(ConfigError, match=r"^test_size: expected a float in \(0, 1\), got 1\.$"):
        FusionUtils.prepare_data_for_fusion(df, "text", ["label"], test_size=1)


def test_validate_fusion_data_statistics() -> None:
    """Valid data: no errors, text length statistics in characters and label counts."""
    texts = ["ab", "abcd", "abcdef", "a" * 10] * 20
    labels = ["x", "y", "x", "y"] * 20
    report = FusionUtils.validate_fusion_data(TrainingData(texts, labels))
    assert report["valid"] is True and report["errors"] == []
    stats = report["statistics"]
    assert stats["n"] == 80
    assert stats["text"] == {"min_chars": 2, "mean_chars": 5.5, "median_chars": 5.0, "max_chars": 10}
    assert stats["label_counts"] == {"x": 40, "y": 40} and stats["n_labels"] == 2


def test_validate_fusion_data_collects_every_problem() -> None:
    """Problems are collected, not raised: an empty text, an unknown label and a label seen once."""
    data = TrainingData(["fine", "  ", "ok", "good", "meh"], ["x", "x", "zzz", "y", "x"], label_names=["x", "y"])
    report = FusionUtils.validate_fusion_data(data)
    assert report["valid"] is False
    assert report["errors"] == [
        "texts[1]: expected a non-empty string, got '  '.",
        "labels[2]: unknown label 'zzz'; label_names are ['x', 'y'].",
        "labels: label 'y' is seen 1 time(s); each label needs at least 2 examples.",
    ]
    assert report["statistics"]["label_counts"] == {"x": 3, "y": 1}


def test_validate_fusion_data_reports_too_few_rows_and_dataframe_errors() -> None:
    """Too few rows for the fusion splits, and a DataFrame's column error, come back as errors."""
    small = FusionUtils.validate_fusion_data(TrainingData(["a", "b", "c", "d"], ["x", "y", "x", "y"]))
    assert small["errors"] == ["data: 4 rows is too few for fusion_split=0.2, ml.val_split=0.1 and "
                               "fusion.val_split=0.25 with 2 labels; at least 40 rows are needed."]
    df = pd.DataFrame({"text": ["one", "three"], "category": ["a", "b"]})
    report = FusionUtils.validate_fusion_data(df, text_column="text", label_columns=["label"])
    assert report == {"valid": False,
                      "errors": ["column 'label': not found in the data (columns: ['text', 'category'])."],
                      "statistics": {"n": 2, "text": {"min_chars": 3, "mean_chars": 4.0,
                                                             "median_chars": 4.0, "max_chars": 5}}}


def test_plot_fusion_results_writes_a_png(tmp_path) -> None:
    """The bar chart is a PNG file of the expected size; bad input is refused with a clear message."""
    from matplotlib.image import imread

    metrics = {"ml": {"accuracy": 0.8, "macro_f1": 0.78}, "llm": {"accuracy": 0.6, "macro_f1": 0.5},
               "fused": {"accuracy": 0.86, "macro_f1": 0.85}}
    path = FusionUtils.plot_fusion_results(metrics, tmp_path / "plots" / "models.png")
    assert path == tmp_path / "plots" / "models.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert imread(path).shape[:2] == (504, 708)  # 5.9 x 4.2 inches at 120 dpi
    with pytest.raises(DataError) as err:
        FusionUtils.plot_fusion_results({"ml": {"f1": 0.3}}, tmp_path / "x.png")
    assert str(err.value) == ("metrics_by_model['ml']: expected a metrics dict with 'accuracy' and 'macro_f1' "
                              "(as in result.metadata['metrics']), got dict.")
    with pytest.raises(ConfigError) as err:
        FusionUtils.plot_fusion_results(metrics, tmp_path / "x.jpg")
    assert str(err.value) == (f"save_path: expected a folder or a file name ending in .png, "
                              f"got {str(tmp_path / 'x.jpg')!r}.")


def test_evaluate_save_and_load_a_fusion_model(tiny_roberta_dir: str, llm_server: FakeLLMServer, tmp_path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate_fusion_model matches predict's metrics; save/load round-trips; the component's API key is used
    for training but never saved (after load it comes from the environment)."""
    secret = "sk-test-NEVER-SAVED-42"
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    ml = RoBERTaClassifier(tiny_roberta_dir, num_epochs=3, max_length=32, learning_rate=3e-3, batch_size=8)
    llm = GeminiClassifier(base_url=llm_server.base_url, api_key=secret, cache_dir=str(tmp_path / "cache"))
    params = {"num_epochs": 1, "batch_size": 8, "fusion_hidden_dims": [16], "output_dir": str(tmp_path / "out")}
    fusion = FusionEnsemble(EnsembleConfig("fusion", [ml, llm], params)).fit(_data(120, seed=3))
    test = _data(20, seed=4)
    metrics = FusionUtils.evaluate_fusion_model(fusion, test.texts, test.labels)
    assert metrics == fusion.predict(test.texts, test.labels).metadata["metrics"]
    with pytest.raises(DataError) as err:
        FusionUtils.evaluate_fusion_model(fusion, test.texts, test.labels[:3])
    assert str(err.value) == "labels: 3 labels for 20 texts; they must match."

    saved = FusionUtils.save_fusion_model(fusion, tmp_path / "model")
    for path in [*saved.rglob("*"), *(tmp_path / "out").rglob("*")]:
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    loaded = FusionUtils.load_fusion_model(saved)
    monkeypatch.setenv("GEMINI_API_KEY", secret)
    assert isinstance(loaded, FusionEnsemble) and loaded.labels_ == LABELS
    np.testing.assert_allclose(loaded.predict_proba(test.texts), fusion.predict_proba(test.texts), atol=1e-6)
    with pytest.raises(ConfigError) as err:
        FusionUtils.save_fusion_model(ml, tmp_path / "other")
    assert str(err.value) == "model: expected a FusionEnsemble or AutoFusionClassifier, got RoBERTaClassifier."
