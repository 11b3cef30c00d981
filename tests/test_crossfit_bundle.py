"""The exported bundle serves the combiner fit chose (or any other one forced in), with predict's answers and
the multi-label thresholds tuned on cross-fitted predictions (tiny RoBERTa, loopback LLM)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.data import LABELS, make_tickets
from tests.support.fitted_model import raw_scores
from textclassify import AutoFusionClassifier
from textclassify.runtime import load_bundle
from textclassify.runtime.decoding import decide, encode_targets
from textclassify.train.crossfit import CANDIDATES, fit_combiner
from textclassify.train.thresholds import GRID, tune_thresholds

MIN_AGREEMENT = 0.995
N_SERVED = 300


def _frame(n: int, seed: int, multi_label: bool) -> pd.DataFrame:
    rows = make_tickets(n, seed=seed, multi_label=multi_label)
    if multi_label:
        return pd.DataFrame([{"text": t, **{lab: int(lab in ls) for lab in LABELS}} for t, ls in rows])
    return pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in rows])


def _fit(server, model_dir: str, tmp: Path, multi_label: bool) -> AutoFusionClassifier:
    config = {
        **server.config_overrides(), "label_columns": LABELS if multi_label else ["topic"],
        "multi_label": multi_label, "ml_model": model_dir, "cache_dir": str(tmp / "cache"),
        "output_dir": str(tmp / "out"), "fusion_split": 0.4,
        "llm": {"score_method": "json", "timeout_s": 5, "max_retries": 2},
        "ml": {"num_epochs": 2, "max_length": 16, "learning_rate": 1e-3, "batch_size": 16},
        "fusion": {"cv_repeats": 1},  # one fold split: what is served, not how it was chosen, is tested here
    }
    return AutoFusionClassifier(config).fit(_frame(300, 1, multi_label), progress=False)


def _served(clf, bundle_dir: Path, server, texts: list[str], tmp: Path):
    with load_bundle(bundle_dir, llm_base_url=server.base_url, cache_dir=tmp / "bundle-cache") as bundle:
        return bundle.predict(texts)


def _agreement(a: list, b: list) -> float:
    return float(np.mean([x == y for x, y in zip(a, b)]))


@pytest.fixture(scope="module")
def fitted(server, tiny_roberta_dir, tmp_path_factory, one_torch_thread):
    return _fit(server, tiny_roberta_dir, tmp_path_factory.mktemp("crossfit_bundle"), False)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [t for t, _ in make_tickets(N_SERVED, seed=9)]


def test_bundle_serves_the_chosen_combiner_with_predicts_answers(fitted, server, texts, tmp_path):
    """The manifest names the combiner fit chose (with its CV table); the bundle agrees with predict on >= 99.5%."""
    bundle_dir = fitted.export(tmp_path / "bundle", progress=False)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["combiner"]["chosen"] == fitted.combiner_
    assert [r["combiner"] for r in manifest["combiner"]["cv_table"]] == [r["combiner"] for r in fitted.cv_table_]
    files = [step["file"] for step in manifest["pipeline"]]
    assert ("lexical.onnx" in files) == fitted.head_.has_lexical
    want, got = fitted.predict(texts), _served(fitted, bundle_dir, server, texts, tmp_path)
    assert _agreement(got.predictions, want.predictions) >= MIN_AGREEMENT
    assert got.metadata["llm_skipped"] == want.metadata["llm_skipped"]


def _forced(clf: AutoFusionClassifier, name: str, rows: int = 200) -> AutoFusionClassifier:
    """A copy of `clf` whose head is `name`, fitted on fresh labelled texts (lexical fitted there when it reads it)."""
    from textclassify.train.encoder import encoder_logits
    from textclassify.train.fusion_model import FusionWrapper
    from textclassify.train.lexical import LexicalModel

    data = make_tickets(rows, seed=21)
    texts = [t for t, _ in data]
    y = encode_targets([ls[0] for _, ls in data], clf.labels_, False)
    ml = encoder_logits(clf.encoder_, clf.tokenizer_, texts, clf.max_length_, 32)
    lexical = LexicalModel(multi_label=False, n_labels=len(clf.labels_), seed=0).fit(texts, y)
    cal = clf.calibrator_.transform(raw_scores(texts, clf.labels_, False))
    head = fit_combiner(name, ml, lexical.logits(texts), cal, y, multi_label=False, fusion=clf.config_["fusion"],
                        seed=0)
    forced = copy.copy(clf)
    forced.head_, forced.model_ = head, FusionWrapper(clf.encoder_, head).eval()
    forced.lexical_ = lexical if head.has_lexical else None
    forced.combiner_, forced.gate_ = name, None
    return forced


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_bundle_serves_any_forced_combiner(fitted, server, texts, tmp_path, name):
    """Each servable combiner, forced in place of the chosen one, is served by the bundle as predict answers."""
    clf = _forced(fitted, name)
    bundle_dir = clf.export(tmp_path / "bundle", progress=False)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["combiner"]["chosen"] == name
    want, got = clf.predict(texts), _served(clf, bundle_dir, server, texts, tmp_path)
    assert _agreement(got.predictions, want.predictions) >= MIN_AGREEMENT
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=2e-3)


# ------------------------------------------------------------------------------------- multi-label thresholds
def test_tune_thresholds_macro_f1_finds_the_separating_threshold():
    """Per label, the grid threshold with the best F1; ties go to the one nearest 0.5."""
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]])
    p = np.array([[0.35, 0.1], [0.30, 0.2], [0.10, 0.9], [0.20, 0.8], [0.15, 0.3]])
    thr = tune_thresholds(p, y, "macro_f1")
    assert thr == [0.3, 0.5]  # label 0: (0.2, 0.3] separates, 0.3 nearest 0.5; label 1: (0.3, 0.8] -> 0.5
    assert set(thr) <= set(GRID.tolist())
    assert (decide(p, True, thr) == y).all()


def test_tune_thresholds_subset_accuracy_and_bad_objective():
    """subset_accuracy makes every row's whole label set right where a threshold per label can; an unknown objective
    is refused."""
    rng = np.random.default_rng(0)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    p = np.where(y == 1, rng.uniform(0.15, 0.3, y.shape), rng.uniform(0.0, 0.12, y.shape))
    thr = tune_thresholds(p, y, "subset_accuracy")
    assert (decide(p, True, thr) == y).all(axis=1).mean() == 1.0
    with pytest.raises(ValueError, match="objective must be 'macro_f1' or 'subset_accuracy'"):
        tune_thresholds(p, y, "accuracy")


@pytest.fixture(scope="module")
def fitted_multi_label(server, tiny_roberta_dir, tmp_path_factory, one_torch_thread):
    return _fit(server, tiny_roberta_dir, tmp_path_factory.mktemp("crossfit_bundle_ml"), True)


def test_thresholds_tuned_by_fit_are_in_the_manifest_and_served(fitted_multi_label, server, tmp_path):
    """fit's per-label thresholds (from cross-fitted predictions) are in metrics.json and the manifest, and the
    bundle's label sets equal predict's."""
    clf = fitted_multi_label
    assert clf.thresholds_ == clf.metadata_["combiner"]["thresholds"] and len(clf.thresholds_) == len(LABELS)
    bundle_dir = clf.export(tmp_path / "bundle", progress=False)
    assert json.loads((bundle_dir / "manifest.json").read_text())["thresholds"] == clf.thresholds_
    texts = [t for t, _ in make_tickets(200, seed=9, multi_label=True)]
    want, got = clf.predict(texts), _served(clf, bundle_dir, server, texts, tmp_path)
    assert _agreement(got.predictions, want.predictions) >= MIN_AGREEMENT


def test_other_thresholds_change_predict_and_the_runtime_alike(fitted_multi_label, server, tmp_path):
    """Thresholds far from 0.5 decide both sides the same way: predict and the runtime apply p >= threshold per
    label, and the label sets differ from those at 0.5."""
    clf = copy.copy(fitted_multi_label)
    clf.thresholds_ = [0.2, 0.5, 0.8]
    bundle_dir = clf.export(tmp_path / "bundle", progress=False)
    assert json.loads((bundle_dir / "manifest.json").read_text())["thresholds"] == [0.2, 0.5, 0.8]
    texts = [t for t, _ in make_tickets(200, seed=9, multi_label=True)]
    want, got = clf.predict(texts), _served(clf, bundle_dir, server, texts, tmp_path)
    labels = np.array(clf.labels_)
    for result in (want, got):
        on = decide(result.probabilities, True, clf.thresholds_)
        assert [sorted(labels[row == 1].tolist()) for row in on] == [sorted(p) for p in result.predictions]
    assert _agreement(got.predictions, want.predictions) >= MIN_AGREEMENT
    at_half = decide(want.probabilities, True, [0.5] * 3)
    assert (at_half != decide(want.probabilities, True, clf.thresholds_)).any()


def test_choose_thresholds_keeps_a_tuned_threshold_only_where_it_beats_half_out_of_sample():
    """A label whose probabilities are shifted low gets its tuned threshold; a label that 0.5 already separates,
    with noise that tuning would fit, keeps 0.5; too few rows keep 0.5 throughout."""
    from textclassify.train.thresholds import choose_thresholds

    rng = np.random.default_rng(3)
    y = (rng.random((200, 2)) < 0.4).astype(int)
    shifted = np.where(y[:, 0] == 1, rng.uniform(0.2, 0.45, 200), rng.uniform(0.0, 0.15, 200))
    noisy = np.clip(np.where(y[:, 1] == 1, 0.75, 0.25) + rng.normal(0, 0.2, 200), 0, 1)
    p = np.stack([shifted, noisy], axis=1)
    thr = choose_thresholds(p, y, "macro_f1")
    assert 0.15 <= thr[0] <= 0.2 and thr[1] == 0.5
    assert tune_thresholds(p, y, "macro_f1")[1] != 0.5  # raw tuning does move it: the check is what kept 0.5
    assert choose_thresholds(p[:3], y[:3], "subset_accuracy") == [0.5, 0.5]


def test_choose_thresholds_keeps_half_where_tuning_wins_overall_but_in_a_minority_of_folds():
    """60 noisy rows: tuning gains on the whole (one lucky fold) but wins in only 2 of 5 folds, so 0.5 stays."""
    from textclassify.train.thresholds import choose_thresholds, fold_gains

    rng = np.random.default_rng(1)
    y = (rng.random((60, 1)) < 0.4).astype(int)
    p = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.25, (60, 1)), 0, 1)
    sizes, gains = fold_gains(p, y, "macro_f1", folds=5, seed=0)  # choose_thresholds' folds at seed 0
    gains = gains[:, 0]
    assert (sizes * gains).sum() > 0 and (gains > 0).sum() == 2  # the case: a gain overall, from a minority
    assert tune_thresholds(p, y)[0] != 0.5
    assert choose_thresholds(p, y, "macro_f1", seed=0) == [0.5]
