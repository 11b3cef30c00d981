"""K-fold cross-fitting: out-of-fold predictions, and the cross-validated choice of the combiner that serves.

Every row of the fusion split gets predictions from models that never saw its label; all candidates
(the fusion MLP, the logistic-regression stacker, each component alone) are compared on the same
folds by log-loss, the best is kept (a tie goes to the simpler), then refitted on the whole split.
Choosing on a 60-text fusion-val slice, as before, picked the wrong model often enough to ship a
fused model below the stacker. The k-fold comparison is repeated over a few random splits and the
log-losses averaged: on 84 rows one split's luck decided between near-tied candidates.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TIE_TOLERANCE = 0.002  # CV log-loss differences below this are a tie (the simpler combiner wins)
REPEAT_SEED_STRIDE = 1000  # split r > 0 of a repeated cross-fitting draws its folds and models from seed + r * this


def make_folds(targets: np.ndarray, k: int, seed: int, multi_label: bool) -> list[np.ndarray]:
    """k disjoint test-index arrays covering every row: stratified by class where each class has k rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(targets)
    k = max(2, min(k, n))
    rows = np.zeros(n)
    if not multi_label:
        counts = np.bincount(targets)
        present = counts[counts > 0]
        if len(present) > 1 and present.min() >= k:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            return [test for _, test in splitter.split(rows, targets)]
    splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(rows)]


def complement(test_idx: np.ndarray, n: int) -> np.ndarray:
    return np.setdiff1d(np.arange(n), test_idx)


def out_of_fold(fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int,
                folds: Sequence[np.ndarray]) -> np.ndarray:
    """Rows predicted by `fit_predict(train_idx, test_idx)` fitted without them; [n, ...] in row order."""
    out: np.ndarray | None = None
    for test_idx in folds:
        pred = np.asarray(fit_predict(complement(test_idx, n), test_idx))
        if out is None:
            out = np.zeros((n, *pred.shape[1:]), dtype=pred.dtype)
        out[test_idx] = pred
    assert out is not None
    return out


def row_log_losses(logits: np.ndarray, targets: np.ndarray, multi_label: bool) -> np.ndarray:
    """Each row's cross-entropy (softmax), or its binary cross-entropy averaged over the labels (sigmoid); [n]."""
    z = np.asarray(logits, dtype=np.float64)
    if multi_label:
        y = np.asarray(targets, dtype=np.float64)
        return np.mean(np.logaddexp(0, z) - y * z, axis=1)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(z)), targets]


def log_loss_of_logits(logits: np.ndarray, targets: np.ndarray, multi_label: bool) -> float:
    """Mean cross-entropy (softmax) or mean binary cross-entropy per label (sigmoid) of logits."""
    return float(row_log_losses(logits, targets, multi_label).mean())


def paired_difference(losses: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean of the row-by-row log-loss differences against `reference`, and its standard error over the rows.

    A paired estimate, like the `se_diff` of the R package loo's `loo_compare` for cross-validated log scores:
    both candidates scored the same rows. A margin of less than about two of them is within what another draw of
    as many rows could undo.
    """
    d = np.asarray(losses, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se


@dataclass
class CVResult:
    """One candidate's cross-fitted predictions and scores."""

    name: str
    complexity: int
    oof_logits: np.ndarray
    oof_no_llm_logits: np.ndarray | None
    log_loss: float  # mean over the repeated splits
    accuracy: float
    macro_f1: float
    row_losses: np.ndarray  # each row's log-loss, averaged over the splits; its mean is log_loss
    extra: dict[str, Any] = field(default_factory=dict)
    split_log_losses: list[float] = field(default_factory=list)  # one per split; [0] is the oof_logits' split

    @property
    def kind(self) -> str:
        return CANDIDATES[self.name][2] if self.name in CANDIDATES else "other"

    def row(self) -> dict[str, Any]:
        row = {"combiner": self.name, "cv_log_loss": round(self.log_loss, 5), "cv_accuracy": round(self.accuracy, 5),
               "cv_macro_f1": round(self.macro_f1, 5)}
        if len(self.split_log_losses) > 1:
            row["cv_log_loss_sd"] = round(float(np.std(self.split_log_losses)), 5)  # across the repeated splits
        return row


def average_over_splits(splits: Sequence[CVResult]) -> CVResult:
    """One candidate's results on several fold splits: scores averaged, predictions of the first split kept
    (the thresholds, the gate and the held-out report read those, with the folds they came from)."""
    first = splits[0]
    return CVResult(first.name, first.complexity, first.oof_logits, first.oof_no_llm_logits,
                    float(np.mean([r.log_loss for r in splits])), float(np.mean([r.accuracy for r in splits])),
                    float(np.mean([r.macro_f1 for r in splits])), np.mean([r.row_losses for r in splits], axis=0),
                    dict(first.extra), [r.log_loss for r in splits])


def score_logits(name: str, complexity: int, logits: np.ndarray, no_llm: np.ndarray | None, targets: np.ndarray,
                 multi_label: bool, labels: Sequence[str]) -> CVResult:
    from textclassify.runtime.metrics import classification_metrics

    pred = (logits >= 0).astype(np.int64) if multi_label else logits.argmax(axis=1)
    m = classification_metrics(targets, pred, list(labels), multi_label)
    acc = m["subset_accuracy"] if multi_label and "subset_accuracy" in m else m["accuracy"]
    losses = row_log_losses(logits, targets, multi_label)
    return CVResult(name, complexity, logits, no_llm, float(losses.mean()), float(acc), float(m["macro_f1"]), losses)


def repeats_note(repeats: Any) -> str:
    """', mean of 3 random splits' where the cross-fitting was repeated, else '': for the CV table's header."""
    repeats = int(repeats or 1)
    return f", mean of {repeats} random splits" if repeats > 1 else ""


VS_SERVING_HEADER = "log-loss vs serving ± SE"
VS_SERVING_NOTE = ("log-loss vs serving: each candidate's margin over the combiner that serves, row by row on the "
                   "fusion rows, ± its standard error; within about 2 SE, another draw of as many rows could "
                   "reverse the choice")


def vs_serving_key(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """The line that explains the margin column, where the table has margins (tables from before them do not)."""
    return [f"  ({VS_SERVING_NOTE})"] if any("cv_log_loss_vs_serving" in r for r in table) else []


def left_out_lines(combiner: Mapping[str, Any]) -> list[str]:
    """'  not compared: mlp, mlp+lexical (why)' for the CV table, where candidates sat out (else nothing)."""
    left_out = combiner.get("left_out") or {}
    reasons = sorted(set(left_out.values()))
    return [f"  not compared: {', '.join(left_out)} ({'; '.join(reasons)})"] if left_out else []


def vs_serving(row: Mapping[str, Any]) -> str:
    """'<- serves' for the chosen row, '+0.0064 ± 0.0089' for the others (blank where the table predates it)."""
    if row.get("chosen"):
        return "<- serves"
    if row.get("cv_log_loss_vs_serving") is None:
        return ""
    return f"{row['cv_log_loss_vs_serving']:+.4f} ± {row.get('cv_log_loss_vs_serving_se', float('nan')):.4f}"


def choose(results: Sequence[CVResult]) -> CVResult:
    """Lowest CV log-loss; candidates within TIE_TOLERANCE of it go to the simplest."""
    best = min(r.log_loss for r in results)
    tied = [r for r in results if r.log_loss <= best + TIE_TOLERANCE]
    return min(tied, key=lambda r: (r.complexity, r.log_loss))


# ------------------------------------------------------------------------------- combiner choice
# name -> (complexity, components it reads, kind); a tie in CV log-loss goes to the lowest complexity.
CANDIDATES: dict[str, tuple[int, tuple[str, ...], str]] = {
    "encoder": (0, ("ml",), "select"),
    "lexical": (0, ("ml", "lexical"), "select"),
    "llm": (0, ("ml",), "select"),
    "tied": (1, ("ml",), "tied"),
    "tied+lexical": (2, ("ml", "lexical"), "tied"),
    "stacker": (3, ("ml",), "stacker"),
    "stacker+lexical": (4, ("ml", "lexical"), "stacker"),
    "mlp": (5, ("ml",), "mlp"),
    "mlp+lexical": (6, ("ml", "lexical"), "mlp"),
}
MLP_INNER_VAL = 0.2  # share of the MLP's training rows kept for its early stopping
# The MLP candidates compete only where each fold's MLP early-stops on at least this many rows: about 60 fusion
# rows at 5 folds (every benchmark and demo fit has 84 or more). Below it, a 64x32 network chosen on a
# handful of validation rows is noise, and its 200-epoch warm-ups were nearly all of a tiny fit's wall time.
MIN_MLP_VAL_ROWS = 10


def candidate_names(has_lexical: bool, lexical_mode: str) -> list[str]:
    """Which candidates compete: lexical 'off' drops the lexical ones, 'on' the ones without it."""
    names = []
    for name, (_, components, _) in CANDIDATES.items():
        uses = "lexical" in components
        if uses and (not has_lexical or lexical_mode == "off"):
            continue
        if not uses and lexical_mode == "on" and has_lexical and name in ("tied", "stacker", "mlp"):
            continue
        names.append(name)
    return names


def mlp_left_out(n_rows: int, folds: Sequence[np.ndarray]) -> str | None:
    """Why the MLP candidates sit out a comparison over these folds, or None when they compete."""
    fewest = n_rows - max(len(f) for f in folds)
    val_rows = max(1, int(round(MLP_INNER_VAL * fewest)))
    if val_rows >= MIN_MLP_VAL_ROWS:
        return None
    return (f"too few fusion rows ({n_rows}): each fold's MLP would early-stop on {val_rows} rows, fewer than "
            f"{MIN_MLP_VAL_ROWS}")


def _features(components: tuple[str, ...], ml: np.ndarray, lexical: np.ndarray | None, cal: np.ndarray) -> np.ndarray:
    parts = [ml] + ([lexical] if "lexical" in components else []) + [cal]
    return np.hstack(parts).astype(np.float32)


def fit_combiner(name: str, ml: np.ndarray, lexical: np.ndarray | None, cal: np.ndarray, targets: np.ndarray, *,
                 multi_label: bool, fusion: dict[str, Any], seed: int) -> Any:
    """One candidate fitted on these rows (component logits, calibrated scores), in the head signature."""
    from textclassify.train.combiners import ComponentSelector, LinearStacker

    _, components, kind = CANDIDATES[name]
    n_labels = ml.shape[1]
    if kind == "select":
        component = {"encoder": "ml", "lexical": "lexical", "llm": "llm"}[name]
        source = {"ml": ml, "lexical": lexical, "llm": cal}[component]
        return ComponentSelector(n_labels, component, multi_label, components).fit(source, targets, ml_logits=ml)
    feats = _features(components, ml, lexical, cal)
    dropout = float(fusion.get("llm_dropout", 0.0))
    if kind == "stacker":
        return LinearStacker(n_labels, components).fit(feats, targets, multi_label=multi_label, llm_dropout=dropout,
                                                       seed=seed)
    if kind == "tied":
        return LinearStacker(n_labels, components).fit_tied(feats, targets, multi_label=multi_label,
                                                            llm_dropout=dropout, seed=seed)
    return _fit_mlp(components, feats, targets, multi_label=multi_label, fusion=fusion, seed=seed)


def _fit_mlp(components: tuple[str, ...], feats: np.ndarray, targets: np.ndarray, *, multi_label: bool,
             fusion: dict[str, Any], seed: int) -> Any:
    import torch

    from textclassify.train.fusion_model import FusionMLP
    from textclassify.train.fusion_training import FusionHistory, warm_up_mlp

    n_labels = feats.shape[1] // (len(components) + 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(feats))
    n_val = max(1, int(round(MLP_INNER_VAL * len(feats))))
    val, train = order[:n_val], order[n_val:]
    torch.manual_seed(seed)
    mlp = FusionMLP((len(components) + 1) * n_labels, n_labels, fusion["hidden_dims"], fusion["dropout"],
                    components=components)
    warm_up_mlp(mlp, feats[train], targets[train], feats[val], targets[val], multi_label=multi_label,
                lr=fusion["fusion_lr"], epochs=fusion["warmup_epochs"], batch_size=fusion["batch_size"], seed=seed,
                history=FusionHistory(), llm_dropout=float(fusion.get("llm_dropout", 0.0)))
    return mlp.eval()


@dataclass
class CombinerChoice:
    """The cross-fitted comparison and the chosen combiner refitted on every row."""

    name: str
    head: Any
    results: list[CVResult]
    folds: int
    oof_calibrated: np.ndarray | None = None  # the LLM scores each row got from its fold's calibrator
    repeats: int = 1  # fold splits the log-losses are averaged over
    left_out: dict[str, str] = field(default_factory=dict)  # candidates not compared, and why

    def table(self) -> list[dict[str, Any]]:
        """One row a candidate; the others also carry their log-loss margin over the one that serves
        (`cv_log_loss_vs_serving`, positive when worse) and that margin's standard error over the fusion rows."""
        served = self.result(self.name).row_losses
        rows = []
        for r in self.results:
            row = {**r.row(), "chosen": r.name == self.name}
            if r.name != self.name:
                diff, se = paired_difference(r.row_losses, served)
                row.update(cv_log_loss_vs_serving=round(diff, 5), cv_log_loss_vs_serving_se=round(se, 5))
            rows.append(row)
        return rows

    def result(self, name: str) -> CVResult:
        return next(r for r in self.results if r.name == name)


def choose_combiner(ml: np.ndarray, lexical: np.ndarray | None, raw_llm: np.ndarray, targets: np.ndarray, *,
                    folds: Sequence[np.ndarray], multi_label: bool, labels: Sequence[str], fusion: dict[str, Any],
                    lexical_mode: str, seed: int, calibrator_factory: Callable[[np.ndarray, np.ndarray], Any],
                    repeats: int = 1) -> CombinerChoice:
    """Compare every candidate on the same folds (calibrator fitted inside each fold), keep the best, refit it.

    With `repeats` > 1 the comparison runs again on repeats - 1 further random splits into as many folds, and each
    candidate's log-loss is its mean over the splits; the out-of-fold predictions kept are those of `folds`.
    `ml` and `lexical` must already be out-of-sample for every row (stage-1 logits; cross-fitted lexical).
    """
    names = candidate_names(lexical is not None, lexical_mode)
    why = mlp_left_out(len(targets), folds)
    left_out = {name: why for name in names if why and CANDIDATES[name][2] == "mlp"}
    names = [name for name in names if name not in left_out]
    if left_out:
        log.info("not compared: %s (%s)", ", ".join(left_out), why)
    per_split: list[list[CVResult]] = []
    oof_cal: np.ndarray | None = None  # the first split's, like the out-of-fold logits kept
    for r in range(max(1, int(repeats))):
        split_seed = seed + r * REPEAT_SEED_STRIDE
        split = folds if r == 0 else make_folds(targets, len(folds), split_seed, multi_label)
        results, cal = _cross_fit_split(names, ml, lexical, raw_llm, targets, folds=split, multi_label=multi_label,
                                        labels=labels, fusion=fusion, seed=split_seed,
                                        calibrator_factory=calibrator_factory)
        per_split.append(results)
        if r == 0:
            oof_cal = cal
    results = [average_over_splits([split[i] for split in per_split]) for i in range(len(names))]
    best = choose(results)
    log.info("combiner chosen by %d-fold cross-fitting over %d split(s): %s (log-loss %.4f)", len(folds),
             len(per_split), best.name, best.log_loss)
    return CombinerChoice(best.name, None, results, len(folds), oof_cal, len(per_split), left_out)


def _cross_fit_split(names: Sequence[str], ml: np.ndarray, lexical: np.ndarray | None, raw_llm: np.ndarray,
                     targets: np.ndarray, *, folds: Sequence[np.ndarray], multi_label: bool, labels: Sequence[str],
                     fusion: dict[str, Any], seed: int, calibrator_factory: Callable[[np.ndarray, np.ndarray], Any]
                     ) -> tuple[list[CVResult], np.ndarray]:
    """Every candidate's out-of-fold predictions and scores on one split, and the out-of-fold calibrated scores."""
    from textclassify.train.combiners import head_logits

    n = len(targets)
    oof = {name: np.zeros((n, ml.shape[1]), dtype=np.float32) for name in names}
    oof_no = {name: np.zeros((n, ml.shape[1]), dtype=np.float32) for name in names}
    oof_cal = np.zeros(raw_llm.shape, dtype=np.float32)
    for k, test in enumerate(folds):
        train = complement(test, n)
        cal = calibrator_factory(raw_llm[train], targets[train])
        cal_tr, cal_te = cal.transform(raw_llm[train]), cal.transform(raw_llm[test])
        oof_cal[test] = cal_te
        lex_tr = None if lexical is None else lexical[train]
        lex_te = None if lexical is None else lexical[test]
        for name in names:
            head = fit_combiner(name, ml[train], lex_tr, cal_tr, targets[train], multi_label=multi_label,
                                fusion=fusion, seed=seed + k)
            oof[name][test] = head_logits(head, ml[test], lex_te, cal_te)
            oof_no[name][test] = head_logits(head, ml[test], lex_te, None)
    results = [score_logits(name, CANDIDATES[name][0], oof[name], oof_no[name], targets, multi_label, labels)
               for name in names]
    return results, oof_cal
