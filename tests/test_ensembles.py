"""VotingEnsemble, WeightedEnsemble and FusionEnsemble: combination rules exactly, then on the tiny fixtures."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.support.data import LABELS, make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify.runtime.errors import ConfigError, DataError, NotFittedError
from textclassify.runtime.types import ClassificationType, TrainingData
from textclassify.train.encoder_classifier import RoBERTaClassifier
from textclassify.train.ensembles import EnsembleConfig, FusionEnsemble, VotingEnsemble, WeightedEnsemble
from textclassify.train.fusion_utils import result_from_probabilities
from textclassify.train.llm_classifiers import OpenAICompatibleClassifier

torch.set_num_threads(1)


def _data(n: int, seed: int, multi_label: bool = False) -> TrainingData:
    rows = make_tickets(n, seed=seed, multi_label=multi_label)
    kind = ClassificationType.MULTI_LABEL if multi_label else ClassificationType.MULTI_CLASS
    return TrainingData([t for t, _ in rows], [labs if multi_label else labs[0] for _, labs in rows], kind)


class TableModel:
    """A component whose probabilities per text are given: the combination rules can be checked exactly."""

    def __init__(self, table: dict[str, list[float]], labels: list[str], multi_label: bool = False) -> None:
        self.table, self.labels, self.multi_label = table, labels, multi_label
        self.fit_calls = 0

    def fit(self, data: TrainingData) -> TableModel:
        self.fit_calls += 1
        return self

    def predict(self, texts, labels=None):
        probs = np.array([self.table[t] for t in texts], dtype=np.float32)
        return result_from_probabilities(probs, self.labels, self.multi_label)


AB = ["a", "b"]
TINY = TrainingData(["t1", "t2", "t3", "t4"], ["a", "b", "a", "b"])


def _ml(model_dir: str, **overrides) -> RoBERTaClassifier:
    params = dict(num_epochs=10, max_length=32, learning_rate=3e-3, batch_size=8, early_stopping_patience=3)
    return RoBERTaClassifier(model_dir, **{**params, **overrides})


def _llm(server: FakeLLMServer, tmp_path, **kwargs) -> OpenAICompatibleClassifier:
    return OpenAICompatibleClassifier("fake", base_url=server.base_url, cache_dir=str(tmp_path / "cache"), **kwargs)


# ------------------------------------------------------------------------------ voting rules
def test_hard_voting_majority_with_ties_broken_by_mean_probability() -> None:
    """Three voters: the majority wins; vote shares are the probabilities."""
    m1 = TableModel({"x": [0.9, 0.1], "y": [0.6, 0.4]}, AB)
    m2 = TableModel({"x": [0.4, 0.6], "y": [0.45, 0.55]}, AB)
    m3 = TableModel({"x": [0.8, 0.2], "y": [0.3, 0.7]}, AB)
    ens = VotingEnsemble([m1, m2, m3]).fit(TINY)
    result = ens.predict(["x", "y"], ["a", "a"])
    assert result.predictions == ["a", "b"]
    np.testing.assert_allclose(result.probabilities, [[2 / 3, 1 / 3], [1 / 3, 2 / 3]], rtol=1e-6)
    assert result.metadata["metrics"]["accuracy"] == 0.5
    assert [m.fit_calls for m in (m1, m2, m3)] == [1, 1, 1]
    tie = VotingEnsemble([m1, m2]).fit(TINY).predict(["x", "y"])  # 1:1 votes; mean probability decides
    assert tie.predictions == ["a", "a"]


def test_soft_voting_is_the_mean_probability() -> None:
    """Soft voting averages probabilities; labels in another column order are aligned by name."""
    m1 = TableModel({"x": [0.9, 0.1]}, AB)
    m2 = TableModel({"x": [0.8, 0.2]}, ["b", "a"])  # P(b)=0.8
    result = VotingEnsemble(EnsembleConfig("voting", [m1, m2], {"voting": "soft"})).fit(TINY).predict(["x"])
    np.testing.assert_allclose(result.probabilities, [[0.55, 0.45]], rtol=1e-6)
    assert result.predictions == ["a"] and result.metadata["voting"] == "soft"


def test_hard_voting_multi_label() -> None:
    """A label is on when more than half the voters predict it; exactly half defers to the mean probability."""
    data = TrainingData(["t1", "t2", "t3", "t4"], [["a"], ["b"], ["a", "b"], ["a", "b"]],
                        ClassificationType.MULTI_LABEL)
    m1 = TableModel({"x": [0.9, 0.6]}, AB, multi_label=True)
    m2 = TableModel({"x": [0.7, 0.1]}, AB, multi_label=True)
    result = VotingEnsemble([m1, m2]).fit(data).predict(["x"], [["a"]])
    assert result.predictions == [["a"]]  # b: one vote of two, mean 0.35 < 0.5
    np.testing.assert_allclose(result.probabilities, [[1.0, 0.5]])
    assert result.metadata["metrics"]["subset_accuracy"] == 1.0


def test_prefit_components_are_not_fitted_again() -> None:
    """prefit=True uses the components as they are."""
    m1, m2 = TableModel({"x": [0.9, 0.1]}, AB), TableModel({"x": [0.2, 0.8]}, AB)
    VotingEnsemble([m1, m2], prefit=True).fit(TINY)
    assert m1.fit_calls == m2.fit_calls == 0


# ---------------------------------------------------------------------------- weighted rules
def test_given_weights_are_normalised_and_applied() -> None:
    """weights=[3, 1] mix the components' probabilities 0.75 / 0.25."""
    m1, m2 = TableModel({"x": [1.0, 0.0]}, AB), TableModel({"x": [0.0, 1.0]}, AB)
    ens = WeightedEnsemble([m1, m2], weights=[3, 1]).fit(TINY)
    result = ens.predict(["x"])
    np.testing.assert_allclose(result.probabilities, [[0.75, 0.25]])
    assert result.metadata["weights"] == {"TableModel": 0.75, "TableModel_2": 0.25}
    assert result.metadata["weights_source"] == "given"


def test_learned_weights_favour_the_better_model() -> None:
    """On the validation slice, a model that is right gets far more weight than one that guesses."""
    data = _data(60, seed=2)
    rng = np.random.default_rng(0)
    good = TableModel({t: [0.9 if lab == name else 0.05 for name in LABELS] for t, lab in zip(data.texts, data.labels)},
                      LABELS)
    noisy = TableModel({t: list(rng.dirichlet([1, 1, 1])) for t in data.texts}, LABELS)
    ens = WeightedEnsemble([good, noisy], val_split=0.25, seed=1).fit(data)
    assert ens.weights_[0] > 0.9 and abs(ens.weights_.sum() - 1) < 1e-9
    assert ens.validation_metrics_["TableModel"]["accuracy"] == 1.0
    assert set(ens.validation_metrics_) == {"TableModel", "TableModel_2", "ensemble"}
    assert ens.weights_source_ == "learned on 15 validation rows (log loss)"


def test_weight_and_setting_errors() -> None:
    """Bad weights, too few models, a wrong method and unknown parameters are ConfigErrors naming the problem."""
    m1, m2 = TableModel({}, AB), TableModel({}, AB)
    with pytest.raises(ConfigError) as err:
        WeightedEnsemble([m1, m2], weights=[1, -1]).fit(TINY)
    assert str(err.value) == ("WeightedEnsemble: weights: expected 2 non-negative numbers with a positive sum, "
                              "got [1, -1]")
    with pytest.raises(ConfigError) as err:
        VotingEnsemble([m1]).fit(TINY)
    assert str(err.value) == "VotingEnsemble: needs at least 2 models; got 1."
    with pytest.raises(ConfigError) as err:
        VotingEnsemble(EnsembleConfig("weighted", [m1, m2])).fit(TINY)
    assert str(err.value) == ("VotingEnsemble: ensemble_method: expected 'voting', got 'weighted' "
                              "(one of ['voting', 'weighted', 'fusion'], each with its own class)")
    with pytest.raises(ConfigError) as err:
        WeightedEnsemble(EnsembleConfig("weighted", [m1, m2], {"wieghts": [1, 2]})).fit(TINY)
    assert str(err.value) == ("WeightedEnsemble: parameters: unknown key(s) ['wieghts'] "
                              "(known keys: seed, val_split, weights)")
    with pytest.raises(ConfigError) as err:
        VotingEnsemble([m1, m2], voting="majority").fit(TINY)
    assert str(err.value) == "VotingEnsemble: voting: expected one of ['hard', 'soft'], got 'majority'"


def test_mismatched_component_labels_are_named() -> None:
    """A component predicting another label set is a DataError naming it."""
    ens = VotingEnsemble([TableModel({"x": [1.0, 0.0]}, AB), TableModel({"x": [1.0, 0.0]}, ["a", "c"])]).fit(TINY)
    with pytest.raises(DataError) as err:
        ens.predict(["x"])
    assert str(err.value) == "TableModel_2: predicts labels ['a', 'c'], but the ensemble's labels are ['a', 'b']."


def test_unfitted_ensembles_say_call_fit() -> None:
    """Every ensemble refuses to predict before fit."""
    for ens in (VotingEnsemble(), WeightedEnsemble(), FusionEnsemble()):
        with pytest.raises(NotFittedError) as err:
            ens.predict(["x"])
        assert str(err.value) == f"This {type(ens).__name__} instance is not fitted yet. Call 'fit' first."


# ------------------------------------------------------------- on the tiny fixtures
def test_voting_and_weighted_on_encoder_and_llm(tiny_roberta_dir: str, llm_server: FakeLLMServer, tmp_path) -> None:
    """RoBERTaClassifier + fake LLM: both ensembles fit, predict with metrics and report LLM usage per component."""
    train, test = _data(120, seed=3), _data(40, seed=4)
    voting = VotingEnsemble([_ml(tiny_roberta_dir), _llm(llm_server, tmp_path)], voting="soft").fit(train)
    result = voting.predict(test.texts, test.labels)
    assert result.metadata["components"] == ["RoBERTaClassifier", "OpenAICompatibleClassifier"]
    assert result.metadata["metrics"]["n"] == 40
    assert result.metadata["metrics"]["accuracy"] >= 0.6
    assert set(result.metadata["component_metrics"]) == {"RoBERTaClassifier", "OpenAICompatibleClassifier"}
    assert result.metadata["llm_usage"]["OpenAICompatibleClassifier"]["requests"] == 40

    weighted = WeightedEnsemble([_ml(tiny_roberta_dir), _llm(llm_server, tmp_path)]).fit(train)
    result = weighted.predict(test.texts, test.labels)
    assert abs(sum(result.metadata["weights"].values()) - 1) < 1e-6
    assert result.metadata["metrics"]["accuracy"] >= 0.6
    assert set(weighted.validation_metrics_) == {"RoBERTaClassifier", "OpenAICompatibleClassifier", "ensemble"}


def test_fusion_ensemble_advanced_form(tiny_roberta_dir: str, llm_server: FakeLLMServer, tmp_path) -> None:
    """EnsembleConfig + add_ml_model/add_llm_model trains the DESIGN recipe and predicts with metrics."""
    train, test = _data(120, seed=3), _data(30, seed=4)
    params = {"fusion_hidden_dims": [16, 8], "ml_lr": 1e-4, "fusion_lr": 5e-3, "num_epochs": 1, "batch_size": 8,
              "output_dir": str(tmp_path / "out")}
    fusion = FusionEnsemble(EnsembleConfig("fusion", [], params))
    fusion.add_ml_model(_ml(tiny_roberta_dir)).add_llm_model(_llm(llm_server, tmp_path))
    config = fusion.to_config(train)
    assert config["fusion"] == {"hidden_dims": [16, 8], "ml_lr": 1e-4, "fusion_lr": 5e-3, "num_epochs": 1,
                                "batch_size": 8}
    assert (config["ml_model"], config["llm_base_url"], config["ml"]["max_length"]) == (
        tiny_roberta_dir, llm_server.base_url, 32)
    fusion.fit(train)
    assert {"ml", "llm_raw", "llm", "lexical", "stacker", "fused", "fused_no_llm"} <= set(fusion.metrics_)
    assert (tmp_path / "out" / "metrics.json").is_file()
    result = fusion.predict(test.texts, test.labels)
    assert result.labels == LABELS and result.metadata["ensemble_method"] == "fusion"
    assert result.metadata["metrics"]["n"] == 30
    assert result.metadata["llm_usage"]["requests"] == 30 - len(result.metadata["llm_skipped"])  # the gate skips some
    np.testing.assert_allclose(fusion.predict_proba(test.texts), result.probabilities, atol=1e-6)


def test_fusion_ensemble_errors(tiny_roberta_dir: str, llm_server: FakeLLMServer, tmp_path) -> None:
    """Missing components, unknown parameters and impossible values are named before any training."""
    train = _data(60, seed=3)
    with pytest.raises(ConfigError) as err:
        FusionEnsemble().add_ml_model(_ml(tiny_roberta_dir)).fit(train)
    assert str(err.value) == ("FusionEnsemble: needs one ML model (add_ml_model) and one LLM model (add_llm_model); "
                              "got an ML model and no LLM model.")
    models = [_ml(tiny_roberta_dir), _llm(llm_server, tmp_path)]
    with pytest.raises(ConfigError, match=r"^FusionEnsemble: parameters: unknown key\(s\) \['hidden_dims'\]"):
        FusionEnsemble(EnsembleConfig("fusion", models, {"hidden_dims": [8]})).fit(train)
    with pytest.raises(ConfigError) as err:
        FusionEnsemble(EnsembleConfig("fusion", models, {"ml_lr": -3})).fit(train)
    assert str(err.value) == "FusionEnsemble: fusion.ml_lr: expected a float in (0, 1], got -3"
    with pytest.raises(ConfigError) as err:
        FusionEnsemble().add_llm_model(_ml(tiny_roberta_dir))
    assert str(err.value).startswith("FusionEnsemble.add_llm_model: expected an LLM classifier")
    assert llm_server.requests == 0


def test_facade_names_and_torch_free_import() -> None:
    """The top-level facade maps the seed's names here; importing the ensembles module does not load torch."""
    import textclassify

    assert textclassify.VotingEnsemble is VotingEnsemble and textclassify.EnsembleConfig is EnsembleConfig
    assert textclassify.RoBERTaClassifier is RoBERTaClassifier
    code = ("import sys, textclassify.train.ensembles, textclassify.train.llm_classifiers, "
            "textclassify.train.encoder_classifier; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
