"""Cross-fitting (train.crossfit, train.lexical): no text's own label reaches its out-of-fold logits."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss

from textclassify.train.calibration import fit_calibrator
from textclassify.train.crossfit import CANDIDATES, choose_combiner, complement, make_folds, out_of_fold
from textclassify.train.lexical import cross_fitted_lexical

N_LABELS = 3
FUSION = {"hidden_dims": [16, 8], "dropout": 0.0, "fusion_lr": 1e-2, "warmup_epochs": 5, "batch_size": 16,
          "llm_dropout": 0.25}


def balanced_labels(n: int, seed: int) -> np.ndarray:
    """Random labels with exactly n / 3 of each class, so that chance is 1/3 whatever a fold's majority."""
    return np.random.default_rng(seed).permutation(np.arange(n) % N_LABELS)


def unique_texts(n: int, prefix: str) -> list[str]:
    """One token per text that no other text has: a model that reads it can only memorise."""
    return [f"{prefix}{i:04d}x" for i in range(n)]


def noisy_parts(n: int, seed: int, ml_sd: float, lexical_sd: float):
    """Balanced labels, encoder and lexical logits that carry them under Gaussian noise, and uninformative LLM
    scores: (y, ml, lexical, raw)."""
    rng = np.random.default_rng(seed)
    y = balanced_labels(n, seed)
    ml = (np.eye(N_LABELS)[y] + rng.normal(0, ml_sd, (n, N_LABELS))).astype(np.float32)
    lexical = (np.eye(N_LABELS)[y] + rng.normal(0, lexical_sd, (n, N_LABELS))).astype(np.float32)
    raw = rng.dirichlet(np.ones(N_LABELS), n).astype(np.float32)
    return y, ml, lexical, raw


def test_folds_are_disjoint_and_cover_every_row():
    """make_folds: k disjoint test sets whose union is every row, stratified (each class in every fold)."""
    y = balanced_labels(90, 0)
    folds = make_folds(y, 5, seed=3, multi_label=False)
    rows = np.concatenate(folds)
    assert len(folds) == 5 and sorted(rows.tolist()) == list(range(90))
    assert all(set(y[f]) == {0, 1, 2} for f in folds)
    assert all(len(np.intersect1d(f, complement(f, 90))) == 0 for f in folds)


def test_out_of_fold_with_a_memorising_one_nearest_neighbour_is_at_chance():
    """A 1-NN on per-row random vectors is perfect on rows it saw and at chance out of fold."""
    from sklearn.neighbors import KNeighborsClassifier

    n = 300
    y = balanced_labels(n, 1)
    x = np.random.default_rng(2).normal(size=(n, 64))
    folds = make_folds(y, 5, seed=0, multi_label=False)
    fitted_on = []

    def fit_predict(train_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
        fitted_on.append(set(train_idx.tolist()))
        return KNeighborsClassifier(1).fit(x[train_idx], y[train_idx]).predict_proba(x[test_idx])

    oof = out_of_fold(fit_predict, n, folds)
    in_fold = KNeighborsClassifier(1).fit(x, y).predict_proba(x)
    assert (in_fold.argmax(1) == y).mean() == 1.0
    assert abs((oof.argmax(1) == y).mean() - 1 / 3) < 0.1
    assert all(not (set(f.tolist()) & seen) for f, seen in zip(folds, fitted_on))


def test_cross_fitted_lexical_on_unique_tokens_is_at_chance_out_of_fold():
    """The lexical model memorises a per-text token (its refit is right on every fusion text it saw); its
    cross-fitted logits for the same texts carry nothing of their labels."""
    n = 300
    y_fusion, y_base = balanced_labels(n, 4), balanced_labels(150, 5)
    texts = unique_texts(n, "fu")
    folds = make_folds(y_fusion, 5, seed=0, multi_label=False)
    oof, final = cross_fitted_lexical(unique_texts(150, "st"), y_base, texts, y_fusion, folds, multi_label=False,
                                      n_labels=N_LABELS, seed=0)
    assert (final.logits(texts).argmax(1) == y_fusion).mean() >= 0.99
    assert abs((oof.argmax(1) == y_fusion).mean() - 1 / 3) < 0.1
    # Unseen tokens leave only the intercept: every row of one fold gets the same logits.
    for f in folds:
        assert np.allclose(oof[f], oof[f[0]], atol=1e-6)


def test_cross_fitted_lexical_logits_of_a_fold_ignore_that_folds_labels():
    """Relabelling every text of one fold changes nothing in that fold's out-of-fold lexical logits."""
    n = 120
    rng = np.random.default_rng(6)
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    texts = [" ".join(rng.choice(words, 4)) + f" id{i}" for i in range(n)]
    y = balanced_labels(n, 7)
    folds = make_folds(y, 4, seed=1, multi_label=False)
    base_texts, y_base = unique_texts(30, "st"), balanced_labels(30, 8)
    kw = {"multi_label": False, "n_labels": N_LABELS, "seed": 0}
    before, _ = cross_fitted_lexical(base_texts, y_base, texts, y, folds, **kw)
    relabelled = y.copy()
    relabelled[folds[0]] = (y[folds[0]] + 1) % N_LABELS
    after, _ = cross_fitted_lexical(base_texts, y_base, texts, relabelled, folds, **kw)
    np.testing.assert_array_equal(before[folds[0]], after[folds[0]])
    assert not np.array_equal(before[folds[1]], after[folds[1]])  # the other folds did learn from those labels


@pytest.mark.parametrize("multi_label", [False, True])
def test_choose_combiner_out_of_fold_logits_ignore_the_folds_own_labels(multi_label, one_torch_thread):
    """For every candidate (MLPs, stackers, each part alone, calibrator inside the folds), the out-of-fold logits
    of one fold are bit-identical when that fold's labels are all changed."""
    n = 100
    rng = np.random.default_rng(9)
    if multi_label:
        y = (rng.random((n, N_LABELS)) < 0.4).astype(np.int64)
        changed = lambda t, f: np.where(np.isin(np.arange(n), f)[:, None], 1 - t, t)  # noqa: E731
    else:
        y = balanced_labels(n, 9)
        changed = lambda t, f: np.where(np.isin(np.arange(n), f), (t + 1) % N_LABELS, t)  # noqa: E731
    signal = y if multi_label else np.eye(N_LABELS)[y]
    ml = (signal + rng.normal(0, 1.0, (n, N_LABELS))).astype(np.float32)
    lexical = (signal + rng.normal(0, 1.0, (n, N_LABELS))).astype(np.float32)
    raw = rng.dirichlet(np.ones(N_LABELS), n).astype(np.float32)
    if multi_label:
        raw = rng.random((n, N_LABELS)).astype(np.float32)
    folds = make_folds(y if not multi_label else y[:, 0], 4, seed=2, multi_label=multi_label)

    def run(targets: np.ndarray):
        return choose_combiner(ml, lexical, raw, targets, folds=folds, multi_label=multi_label,
                               labels=["a", "b", "c"], fusion=FUSION, lexical_mode="auto", seed=0,
                               calibrator_factory=lambda r, t: fit_calibrator(r, t, multi_label))

    before, after = run(y), run(changed(y, folds[0]))
    assert {r.name for r in before.results} == set(CANDIDATES)
    for b, a in zip(before.results, after.results):
        np.testing.assert_array_equal(b.oof_logits[folds[0]], a.oof_logits[folds[0]], err_msg=b.name)
        np.testing.assert_array_equal(b.oof_no_llm_logits[folds[0]], a.oof_no_llm_logits[folds[0]], err_msg=b.name)
    moved = [b.name for b, a in zip(before.results, after.results)
             if not np.array_equal(b.oof_logits[folds[1]], a.oof_logits[folds[1]])]
    assert moved, "the other folds' models learn from fold 0's labels"


def test_repeated_cross_fitting_averages_the_splits_and_keeps_the_first_splits_predictions(one_torch_thread):
    """cv_repeats: each candidate's log-loss is its mean over the random splits (the first one being `folds`),
    the choice reads that mean, and the out-of-fold predictions kept are the first split's, bit for bit."""
    from textclassify.train.crossfit import choose

    y, ml, lexical, raw = noisy_parts(90, 11, ml_sd=1.2, lexical_sd=1.5)
    folds = make_folds(y, 3, seed=4, multi_label=False)

    def run(repeats: int):
        return choose_combiner(ml, lexical, raw, y, folds=folds, multi_label=False, labels=["a", "b", "c"],
                               fusion=FUSION, lexical_mode="auto", seed=0, repeats=repeats,
                               calibrator_factory=lambda r, t: fit_calibrator(r, t, False))

    one, three = run(1), run(3)
    assert one.repeats == 1 and three.repeats == 3
    for a, b in zip(one.results, three.results):
        assert len(b.split_log_losses) == 3 and b.split_log_losses[0] == a.log_loss, b.name
        assert b.log_loss == pytest.approx(np.mean(b.split_log_losses)), b.name
        np.testing.assert_array_equal(a.oof_logits, b.oof_logits, err_msg=b.name)
        np.testing.assert_array_equal(a.oof_no_llm_logits, b.oof_no_llm_logits, err_msg=b.name)
    np.testing.assert_array_equal(one.oof_calibrated, three.oof_calibrated)
    # The later splits are other folds: the parts alone (no fitting noise) score differently on them.
    assert len(set(three.result("lexical").split_log_losses)) == 3
    assert three.name == choose(three.results).name
    assert "cv_log_loss_sd" in three.table()[0] and "cv_log_loss_sd" not in one.table()[0]


def test_the_cv_table_gives_each_candidate_its_paired_margin_over_the_one_that_serves():
    """cv_log_loss_vs_serving is the row-by-row log-loss difference against the serving candidate, averaged over
    the splits: its mean is the difference of the two CV log-losses, its SE the rows' spread over sqrt(n)."""
    from textclassify.train.crossfit import paired_difference, row_log_losses

    n = 90
    rng = np.random.default_rng(5)
    y = balanced_labels(n, 5)
    ml = (3 * np.eye(N_LABELS)[y] + rng.normal(0, 1.0, (n, N_LABELS))).astype(np.float32)
    raw = rng.dirichlet(np.ones(N_LABELS), n).astype(np.float32)  # an LLM that knows nothing
    choice = choose_combiner(ml, None, raw, y, folds=make_folds(y, 3, seed=1, multi_label=False), multi_label=False,
                             labels=["a", "b", "c"], fusion=FUSION, lexical_mode="auto", seed=0, repeats=2,
                             calibrator_factory=lambda r, t: fit_calibrator(r, t, False))
    table = {r["combiner"]: r for r in choice.table()}
    served = choice.result(choice.name)
    assert "cv_log_loss_vs_serving" not in table[choice.name]
    for name, row in table.items():
        if name == choice.name:
            continue
        other = choice.result(name)
        assert row["cv_log_loss_vs_serving"] == pytest.approx(other.log_loss - served.log_loss, abs=2e-5), name
        d = other.row_losses - served.row_losses
        assert row["cv_log_loss_vs_serving_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(n), abs=2e-5), name
    # the LLM alone is at chance: far worse than what serves, by many standard errors
    assert table["llm"]["cv_log_loss_vs_serving"] > 5 * table["llm"]["cv_log_loss_vs_serving_se"] > 0
    # the rows' losses are the per-row terms of the log-loss, in both modes
    z = rng.normal(0, 2, (7, N_LABELS))
    expected = log_loss(y[:7], softmax(z, axis=1), labels=[0, 1, 2])
    assert row_log_losses(z, y[:7], False).mean() == pytest.approx(expected)
    multi = (rng.random((7, N_LABELS)) < 0.5).astype(int)
    expected = np.mean([log_loss(multi[:, j], 1 / (1 + np.exp(-z[:, j])), labels=[0, 1]) for j in range(N_LABELS)])
    assert row_log_losses(z, multi, True).mean() == pytest.approx(expected)
    assert paired_difference(np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0])) == pytest.approx(
        (4 / 3, np.std([0, 1, 3], ddof=1) / np.sqrt(3)))


def test_mlp_candidates_sit_out_when_each_folds_mlp_would_early_stop_on_fewer_than_ten_rows():
    """60 rows in 5 folds: every fold's MLP trains on 48 and early-stops on 10, so it competes; 59 rows leave one
    fold 47 (9 to early-stop on), and the MLPs sit out, recorded with the reason; the other candidates still compete."""
    from textclassify.train.crossfit import MIN_MLP_VAL_ROWS, left_out_lines, mlp_left_out

    assert mlp_left_out(60, make_folds(balanced_labels(60, 0)[:60], 5, seed=0, multi_label=False)) is None
    why = mlp_left_out(59, make_folds(balanced_labels(60, 0)[:59], 5, seed=0, multi_label=False))
    assert why is not None and "59" in why and "9 rows" in why and str(MIN_MLP_VAL_ROWS) in why

    y, ml, lexical, raw = noisy_parts(30, 3, ml_sd=1.0, lexical_sd=1.0)
    choice = choose_combiner(ml, lexical, raw, y, folds=make_folds(y, 5, seed=0, multi_label=False),
                             multi_label=False, labels=["a", "b", "c"], fusion=FUSION, lexical_mode="auto", seed=0,
                             calibrator_factory=lambda r, t: fit_calibrator(r, t, False))
    assert set(choice.left_out) == {"mlp", "mlp+lexical"}
    assert {r.name for r in choice.results} == set(CANDIDATES) - {"mlp", "mlp+lexical"}
    line, = left_out_lines({"left_out": choice.left_out})
    assert line.startswith("  not compared: mlp, mlp+lexical (too few fusion rows (30)")
    assert left_out_lines({"left_out": {}}) == []
