"""AutoFusionClassifier end to end: fit, predict, metrics, cache, save/load (tiny RoBERTa, loopback LLM)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.support.data import LABELS, make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify import AutoFusionClassifier
from textclassify.runtime.decoding import decide
from textclassify.runtime.errors import DataError, NotFittedError
from textclassify.runtime.metrics import classification_metrics
from textclassify.train.config import DEFAULT_CONFIG


def tickets_frame(n: int, seed: int, multi_label: bool) -> pd.DataFrame:
    rows = make_tickets(n, seed=seed, multi_label=multi_label)
    if multi_label:
        return pd.DataFrame([{"text": t, **{lab: int(lab in ls) for lab in LABELS}} for t, ls in rows])
    return pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in rows])


def make_config(server: FakeLLMServer, model_dir: str, tmp_path, multi_label: bool, **extra) -> dict:
    return {
        **server.config_overrides(), "label_columns": LABELS if multi_label else ["topic"],
        "multi_label": multi_label, "ml_model": model_dir, "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "out"), "llm": {"score_method": "json", "timeout_s": 5, "max_retries": 2},
        "ml": {"num_epochs": 3, "max_length": 16, "learning_rate": 1e-3, "batch_size": 16},
        "fusion": {"num_epochs": 2, "ml_lr": 1e-4}, **extra,
    }


@pytest.fixture(scope="module")
def fitted_multiclass(server, tiny_roberta_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auto_mc")
    clf = AutoFusionClassifier(make_config(server, tiny_roberta_dir, tmp, False, fusion_split=0.4))
    before = server.requests
    clf.fit(tickets_frame(600, seed=1, multi_label=False), eval_data=tickets_frame(300, seed=2, multi_label=False),
            progress=False)
    return clf, tmp, server.requests - before


def test_fit_scores_only_fusion_rows_and_eval(fitted_multiclass):
    """Training asks the LLM about the fusion rows (the fusion split and stage 1's validation rows) and the
    evaluation data only."""
    clf, _, requests = fitted_multiclass
    splits = clf.metadata_["splits"]
    assert requests == splits["fusion"] + 300
    assert 230 <= splits["fusion_split"] <= 250
    assert splits["fusion"] == splits["fusion_split"] + splits["stage1_val"]
    assert splits["stage1_train"] + splits["fusion"] == 600


@pytest.mark.parametrize("multi_label", [False, True])
def test_fusion_rows_never_include_a_row_the_encoder_or_lexical_base_trains_on(multi_label, server,
                                                                               tiny_roberta_dir, tmp_path):
    """The combiners learn on the fusion rows, out-of-sample ones only: the fusion split and stage 1's validation
    rows, none of stage 1's training rows (which the encoder fits and every lexical fold reads); together, every
    row."""
    from textclassify.train.config import validate_config

    clf = AutoFusionClassifier(make_config(server, tiny_roberta_dir, tmp_path, multi_label))
    prep = clf._prepare_data(tickets_frame(400, seed=3, multi_label=multi_label), None,
                             validate_config(clf.config))
    splits, fusion, base = prep.splits, prep.fusion_idx, prep.stage1_train_idx
    assert sorted(fusion.tolist()) == sorted(np.concatenate([splits.stage1_val, splits.fusion_train,
                                                             splits.fusion_val]).tolist())
    assert np.array_equal(np.sort(base), np.sort(splits.stage1_train))
    assert not set(fusion.tolist()) & set(base.tolist())
    assert sorted(fusion.tolist() + base.tolist()) == list(range(400))


def test_fit_reports_every_model_side_by_side(fitted_multiclass):
    """metadata_ and output_dir/metrics.json hold every component's, the stacker's and the fused metrics, LLM usage,
    the stage-1 schedule and the combiners' cross-validation table with the one that serves."""
    clf, tmp, _ = fitted_multiclass
    metrics = clf.metadata_["metrics"]
    assert set(metrics) == {"ml", "lexical", "llm_raw", "llm", "stacker", "fused", "fused_no_llm"}
    on_disk = json.loads((tmp / "out" / "metrics.json").read_text())
    assert on_disk["metrics"]["fused"]["accuracy"] == metrics["fused"]["accuracy"]
    assert on_disk["llm_usage"]["requests"] > 0 and on_disk["llm_usage"]["total_tokens"] > 0
    assert on_disk["stage1"]["plan"]["learning_rate_source"] == "user" and on_disk["stage1"]["steps_run"] > 0
    table = on_disk["combiner"]["cv_table"]
    assert {r["combiner"] for r in table} == {"encoder", "lexical", "llm", "tied", "tied+lexical", "stacker",
                                              "stacker+lexical", "mlp", "mlp+lexical"}
    chosen = [r for r in table if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["combiner"] == on_disk["combiner"]["chosen"] == clf.combiner_
    assert on_disk["combiner"]["repeats"] == DEFAULT_CONFIG["fusion"]["cv_repeats"] > 1
    assert all("cv_log_loss_sd" in r for r in table)  # the spread of each candidate's log-loss over the splits
    for r in table:  # the others' paired margin over the one that serves, with its standard error over the rows
        assert ("cv_log_loss_vs_serving" in r) != r["chosen"], r
        if not r["chosen"]:
            assert r["cv_log_loss_vs_serving"] == pytest.approx(r["cv_log_loss"] - chosen[0]["cv_log_loss"], abs=2e-5)
            assert r["cv_log_loss_vs_serving_se"] > 0
    assert chosen[0]["cv_log_loss"] <= min(r["cv_log_loss"] for r in table) + 0.002


def test_fused_beats_each_model_and_matches_the_stacker(fitted_multiclass):
    """On complementary signals the fused model beats ML and LLM alone and matches the LR stacker."""
    clf, _, _ = fitted_multiclass
    m = {k: v["accuracy"] for k, v in clf.metadata_["metrics"].items()}
    print(m)
    assert m["fused"] > m["llm"] and m["fused"] > m["ml"]
    assert m["fused"] >= m["stacker"] - 0.01


def test_predict_contract(fitted_multiclass, server):
    """predict returns one label per text, [n, C] probabilities, and metrics when labels are given."""
    clf, _, _ = fitted_multiclass
    rows = make_tickets(40, seed=5)
    res = clf.predict([t for t, _ in rows], labels=[ls[0] for _, ls in rows])
    assert len(res.predictions) == 40 and set(res.predictions) <= set(LABELS)
    assert res.probabilities.shape == (40, 3) and np.allclose(res.probabilities.sum(1), 1, atol=1e-5)
    assert res.labels == sorted(LABELS)
    assert {"accuracy", "macro_f1", "micro_f1", "per_label"} <= set(res.metadata["metrics"])
    before = server.requests
    again = clf.predict([t for t, _ in rows])
    assert server.requests == before, "a second predict must come from the cache"
    assert again.predictions == res.predictions
    assert clf.predict([]).probabilities.shape == (0, 3)


def test_second_fit_sends_no_llm_requests(fitted_multiclass, server, tiny_roberta_dir):
    """A second fit with the same cache needs zero LLM requests."""
    clf, tmp, _ = fitted_multiclass
    before = server.requests
    second = dict(clf.config, fusion={"num_epochs": 0, "warmup_epochs": 2}, ml={"num_epochs": 1},
                  output_dir=str(tmp / "second"))  # the first fit's report stays for the tests below
    AutoFusionClassifier(second).fit(
        tickets_frame(600, seed=1, multi_label=False), eval_data=tickets_frame(300, seed=2, multi_label=False),
        progress=False)
    assert server.requests == before


def test_save_load_round_trip(fitted_multiclass, tmp_path):
    """save/load gives identical predictions and probabilities."""
    clf, _, _ = fitted_multiclass
    texts = [t for t, _ in make_tickets(30, seed=9)]
    clf.save(tmp_path / "model")
    loaded = AutoFusionClassifier.load(tmp_path / "model")
    a, b = clf.predict(texts), loaded.predict(texts)
    assert a.predictions == b.predictions
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_predict_input_errors(fitted_multiclass):
    """Non-string items and a bare string are clear DataErrors; an unfitted model says so."""
    clf, _, _ = fitted_multiclass
    with pytest.raises(DataError, match=r"^texts\[1\]: expected a string, got None \(NoneType\)\.$"):
        clf.predict(["fine", None])
    with pytest.raises(DataError, match="got a single str; pass \\[text\\] instead"):
        clf.predict("one text")
    not_fitted = "^This AutoFusionClassifier instance is not fitted yet. Call 'fit' first.$"
    with pytest.raises(NotFittedError, match=not_fitted):
        AutoFusionClassifier({}).predict(["x"])


def test_multi_label_fit_predict(server, tiny_roberta_dir, tmp_path):
    """Multi-label: lists of labels per text, sigmoid probabilities, hamming loss and subset accuracy."""
    clf = AutoFusionClassifier(make_config(server, tiny_roberta_dir, tmp_path, True))
    clf.fit(tickets_frame(500, seed=1, multi_label=True), eval_data=tickets_frame(150, seed=2, multi_label=True),
            progress=False)
    rows = make_tickets(50, seed=6, multi_label=True)
    res = clf.predict([t for t, _ in rows], labels=[ls for _, ls in rows])
    assert all(isinstance(p, list) and set(p) <= set(LABELS) for p in res.predictions)
    assert res.probabilities.shape == (50, 3)
    assert {"hamming_loss", "subset_accuracy"} <= set(res.metadata["metrics"])
    m = {k: v["micro_f1"] for k, v in clf.metadata_["metrics"].items()}
    print(m)
    assert m["fused"] >= max(m["llm"], m["ml"]) - 0.02
    thresholds = clf.metadata_["combiner"]["thresholds"]
    assert thresholds == clf.thresholds_ and len(thresholds) == 3 and all(0 < t < 1 for t in thresholds)
    # the tuned thresholds are the combiner's: a part alone is judged by the default rule (0.5 per label)
    held = clf.metadata_["held_out_predictions"]
    for name, rule in (("ml", None), ("lexical", None), ("fused", thresholds)):
        if name in held["probabilities"]:
            want = classification_metrics(held["targets"], decide(held["probabilities"][name], True, rule), clf.labels_,
                                          True)
            assert clf.metadata_["metrics"][name]["subset_accuracy"] == want["subset_accuracy"]


def test_bad_data_sends_no_llm_request(server, tiny_roberta_dir, tmp_path):
    """Invalid training data is rejected before any LLM request."""
    before = server.requests
    df = tickets_frame(100, seed=1, multi_label=False)
    df.loc[7, "topic"] = np.nan
    with pytest.raises(DataError, match=r"^column 'topic', row 7: label is missing \(NaN\)\.$"):
        AutoFusionClassifier(make_config(server, tiny_roberta_dir, tmp_path, False)).fit(df)
    assert server.requests == before


def test_fit_writes_the_report(fitted_multiclass):
    """fit writes output_dir/report/ with metrics, confusion matrices, reliability diagram and curves."""
    clf, tmp, _ = fitted_multiclass
    names = {p.name for p in (tmp / "out" / "report").iterdir()}
    assert {"metrics.json", "summary.txt", "confusion_matrix_fused.png", "confusion_matrix_ml.png",
            "reliability_llm.png", "training_curves.png"} <= names
    summary = (tmp / "out" / "report" / "summary.txt").read_text()
    assert (f"Combiner serving: {clf.combiner_} (lowest 5-fold cross-fitted log-loss on the fusion rows, mean of 3 "
            "random splits;") in summary
    assert summary.count("<- serves") == 1 and "Stage 1: lr 0.001 (user)" in summary
    assert "log-loss vs serving ± SE" in summary and summary.count(" ± ") >= 8
    report = json.loads((tmp / "out" / "report" / "metrics.json").read_text())
    assert report["combiner"]["chosen"] == clf.combiner_ and len(report["combiner"]["cv_table"]) == 9
