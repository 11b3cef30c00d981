"""What the automatic stage 1 costs on the demo: fit wall time with it against the demo's fixed schedule.

The demo's config sets its stage 1 (`ml.num_epochs` 2, `ml.learning_rate` 1e-4), so `make demo` trains as it
did before the automatic schedule existed. This benchmark fits the demo's data (1,200 training rows, 300 test
rows, the embedded SmolLM2 through the same local server) three times in one process, all with one LLM cache:

1. the demo's config, which fills the cache (its time includes the LLM calls: reported, not compared);
2. the same config without `ml.num_epochs` and `ml.learning_rate`: fit chooses the rate and length itself;
3. the demo's config again.

It prints each fit's wall time and stage-1 time and the ratio automatic / fixed (fits 2 and 3, both on a warm
cache), against the target of at most 2x.

    python benchmarks/stage1_cost.py            # about 10 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 2.0


def fit_once(config: dict[str, Any], train: Any, test: Any) -> dict[str, Any]:
    from textclassify import AutoFusionClassifier

    start = time.perf_counter()
    clf = AutoFusionClassifier(config).fit(train, eval_data=test, progress=False)
    wall = time.perf_counter() - start
    meta = clf.metadata_
    return {"fit_s": wall, "stage1_s": float(meta["timings"]["stage1_s"]),
            "steps": meta["stage1"].get("steps_run"), "lr": meta["stage1"]["plan"]["learning_rate"],
            "macro_f1": {k: float(v["macro_f1"]) for k, v in meta["metrics"].items() if k in ("ml", "fused")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)

    import torch

    from textclassify.train.demo import TEST_ROWS, TRAIN_ROWS, demo_config, load_movie_reviews, stratified_sample
    from textclassify.train.demo_assets import fetch_demo_assets, minilm_path

    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    paths = fetch_demo_assets(ROOT)  # the GGUF and the corpus, as `make demo` fetches them (once)
    train, test = stratified_sample(load_movie_reviews(paths.corpus), TRAIN_ROWS, TEST_ROWS)
    work = Path(tempfile.mkdtemp(prefix="stage1-cost-"))
    fixed = demo_config(minilm_path(), output_dir=str(work / "fixed"), cache_dir=str(work / "cache"))
    auto = copy.deepcopy(fixed)
    auto["output_dir"] = str(work / "auto")
    for key in ("num_epochs", "learning_rate"):
        auto["ml"].pop(key)
    print(f"stage-1 cost on the demo: {len(train)} training rows, {len(test)} test rows, torch threads "
          f"{args.threads}; work dir {work}", flush=True)
    runs = []
    for label, config in (("fixed, cold LLM cache", fixed), ("automatic", auto), ("fixed", fixed)):
        run = fit_once(config, train, test)
        runs.append(run)
        print(f"  {label:<22} fit {run['fit_s']:7.1f} s  stage 1 {run['stage1_s']:7.1f} s  steps {run['steps']}  "
              f"lr {run['lr']:.2g}  macro-F1 encoder {run['macro_f1']['ml']:.3f} fused {run['macro_f1']['fused']:.3f}",
              flush=True)
    ratio = runs[1]["fit_s"] / runs[2]["fit_s"]
    print(f"\nautomatic / fixed fit wall time: {ratio:.2f}x (stage 1 alone "
          f"{runs[1]['stage1_s'] / runs[2]['stage1_s']:.2f}x); target <= {TARGET_RATIO:g}x -> "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
