"""bundle.predict from 8 threads at once vs 1 thread on the same bundle: same answers, throughput ratio.

    .venv/bin/python benchmarks/threads_predict.py [--bundle DIR] [--threads 8] [--texts 2048] [--chunk 32]

Without --bundle it exports a small bundle first (the tests' tiny RoBERTa, 2 layers, hidden 64, with a
trained fusion MLP). LLM scores come from a loopback fake server and are cached by a warm-up pass, so
the timed runs measure the runtime itself (tokenisation, ONNX Runtime, cache look-ups). Each timed
configuration runs the same chunks once sequentially from one thread and once split over N threads
started together, and prints texts/s of each, their ratio, and whether every answer is identical.
It does so for ONNX Runtime's default intra-op thread pool and for intra_op_num_threads=1.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.data import LABELS, make_tickets  # noqa: E402
from tests.support.llm_server import FakeLLMServer  # noqa: E402
from textclassify.runtime import load_bundle  # noqa: E402


def build_tiny_bundle(workdir: Path) -> Path:
    """Export the tests' small fitted model (tiny RoBERTa + trained MLP + calibrator) to a bundle."""
    import torch

    from tests.support.fitted_model import make_fitted_model
    from tests.support.tiny_model import build_tiny_roberta
    from textclassify.export import export_bundle

    torch.set_num_threads(1)
    texts = [t for t, _ in make_tickets(400, seed=1)]
    model_dir = build_tiny_roberta(texts, workdir / "tiny_roberta")
    return export_bundle(make_fitted_model(model_dir, LABELS, multi_label=False), workdir / "bundle",
                         progress=False)


def sequential(bundle, chunks: list[list[str]]) -> tuple[float, list]:
    start = time.perf_counter()
    results = [bundle.predict(chunk) for chunk in chunks]
    return time.perf_counter() - start, results


def threaded(bundle, chunks: list[list[str]], n_threads: int) -> tuple[float, list]:
    """Each thread takes every n-th chunk; all threads start at one barrier; wall time of the slowest."""
    results: list = [None] * len(chunks)
    barrier = threading.Barrier(n_threads + 1)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(k, len(chunks), n_threads):
            results[i] = bundle.predict(chunks[i])

    with ThreadPoolExecutor(n_threads) as pool:
        futures = [pool.submit(work, k) for k in range(n_threads)]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - start
    return wall, results


def compare(a: list, b: list) -> tuple[bool, float]:
    same_labels = all(x.predictions == y.predictions for x, y in zip(a, b))
    diff = max(float(np.abs(x.probabilities - y.probabilities).max()) for x, y in zip(a, b))
    return same_labels, diff


def run_config(bundle_dir: Path, base_url: str, cache_dir: str, chunks: list[list[str]], n_threads: int,
               intra_op: int | None, repeats: int) -> dict:
    with load_bundle(bundle_dir, providers="cpu", llm_base_url=base_url, cache_dir=cache_dir,
                     intra_op_num_threads=intra_op) as bundle:
        sequential(bundle, chunks[: n_threads])  # warm-up: sessions, connection, cache handle
        before = bundle.llm_usage["requests"]
        seq_times, thr_times = [], []
        reference = None
        worst = (True, 0.0)
        for _ in range(repeats):
            t_seq, seq_results = sequential(bundle, chunks)
            t_thr, thr_results = threaded(bundle, chunks, n_threads)
            seq_times.append(t_seq)
            thr_times.append(t_thr)
            reference = reference or seq_results
            for other in (seq_results, thr_results):
                same, diff = compare(reference, other)
                worst = (worst[0] and same, max(worst[1], diff))
        degraded = sum(len(r.metadata["degraded"]) for r in reference)
        requests = bundle.llm_usage["requests"] - before
    return {"seq": statistics.median(seq_times), "thr": statistics.median(thr_times), "same": worst[0],
            "diff": worst[1], "degraded": degraded, "requests": requests}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="a bundle directory (default: export a tiny one)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=32, help="texts per predict call")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median shown)")
    args = parser.parse_args()

    texts = [t for t, _ in make_tickets(args.texts, seed=77)]
    chunks = [texts[i:i + args.chunk] for i in range(0, len(texts), args.chunk)]
    with tempfile.TemporaryDirectory() as tmp, FakeLLMServer() as server:
        bundle_dir = args.bundle or build_tiny_bundle(Path(tmp))
        cache_dir = str(Path(tmp) / "cache")
        with load_bundle(bundle_dir, providers="cpu", llm_base_url=server.base_url, cache_dir=cache_dir) as b:
            b.predict(texts)  # fills the LLM cache: the timed runs send no request
            labels, providers = b.labels, b.providers
        print(f"bundle             {bundle_dir} (labels {labels}, providers {providers})")
        print(f"work               {len(texts)} texts in {len(chunks)} predict calls of {args.chunk}; LLM scores "
              f"cached beforehand ({server.requests} requests to fill the cache)")
        print(f"machine            {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
        ok = True
        for intra_op in (None, 1):
            r = run_config(bundle_dir, server.base_url, cache_dir, chunks, args.threads, intra_op, args.repeats)
            name = "ORT default pool" if intra_op is None else f"intra_op_num_threads={intra_op}"
            print(f"\n[{name}] median of {args.repeats}")
            print(f"  1 thread          {r['seq']:.3f} s = {len(texts) / r['seq']:.0f} texts/s")
            print(f"  {args.threads} threads         {r['thr']:.3f} s = {len(texts) / r['thr']:.0f} texts/s")
            print(f"  ratio             {r['seq'] / r['thr']:.2f}x the single-thread throughput")
            print(f"  same answers      {'yes' if r['same'] else 'NO'} (labels identical, max |prob diff| "
                  f"{r['diff']:.1e}); degraded rows {r['degraded']}; LLM requests during timing {r['requests']}")
            ok = ok and r["same"] and r["diff"] == 0.0 and r["degraded"] == 0 and r["requests"] == 0
        print(f"\nmachine load average {os.getloadavg()[0]:.1f} at the end")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
