"""Ray Data batch scoring against single-process fusion-predict, on the same cores, in one run.

    .venv/bin/python benchmarks/ray_scale.py [--bundle DIR] [--texts 20000] [--workers 2] [--batch-size 64]

Without --bundle, a toy bundle is written from the test fixtures (a tiny tokenizer and a one-matmul encoder:
it measures the overhead around inference, the worst case for Ray); `benchmarks/serve_load.py --build-minilm
DIR` builds the demo's MiniLM int8 bundle (DIR/bundle), where inference dominates as it does in production.

1. --texts synthetic tickets, every one distinct, written to one CSV; their LLM scores are put in the cache
   first (a loopback LLM), so the timed runs measure scoring, not the LLM.
2. Single process: (a) `fusion-predict` as a subprocess, end to end (Python start, load, read, write);
   (b) the same bundle in this process, `predict` on fusion-predict's 512-row chunks after loading:
   the steady-state throughput.
3. Ray Data, --workers actors, on a local Ray with the machine's CPUs: ray.init, actor start (actor
   processes + bundle load + first block read) and steady-state throughput (rows over the span from the
   first batch's start to the last batch's end) reported apart, and the end-to-end wall time.
4. Split caches (one cache_dir per node): a workload of --split-rows rows drawn from --split-distinct texts
   (tickets repeat), cut into two halves as Ray spreads blocks over two nodes; the requests the loopback
   LLM receives with two caches against one shared cache, and on a rerun where the halves swap nodes,
   before and after `fusion-cache merge`.
5. A projection from the measured per-actor throughput for 4 nodes with 1 GPU each (needs --gpu-texts-per-s,
   a GPU figure measured elsewhere; omitted otherwise) and for 16 CPU nodes of --cores-per-node cores, with
   the LLM rate limit as the bound for texts new to the cache: --llm-concurrency / --llm-latency-s requests
   per second.
The machine may be shared: the load average is printed with the figures.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textclassify.runtime import constants as K  # noqa: E402


def toy_bundle(work: Path) -> Path:
    """A bundle from the test fixtures (tiny BPE tokenizer, toy ONNX graphs), pointed at a placeholder LLM."""
    from tests.support.data import make_tickets
    from tests.support.tiny_model import build_tiny_roberta
    from tests.support.toy_bundle import write_toy_bundle

    tiny = build_tiny_roberta([t for t, _ in make_tickets(400, seed=1)], work / "tiny")
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1",
           "score_method": "json", "max_retries": 0, "timeout_s": 10.0, "max_concurrency": 16}
    out = work / "toy_bundle"
    write_toy_bundle(out, Path(tiny) / "tokenizer.json", labels=["billing", "shipping", "technical"],
                     multi_label=False, llm=llm)
    return out


def write_input(path: Path, texts: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        w.writerows(enumerate(texts))


def fill_cache(bundle: Path, texts: list[str], llm_url: str, cache: Path) -> float:
    from textclassify.runtime import load_bundle

    t0 = time.perf_counter()
    with load_bundle(bundle, llm_base_url=llm_url, cache_dir=cache, llm_gate="off") as b:
        for start in range(0, len(texts), 2048):
            b.predict(texts[start:start + 2048])
    return time.perf_counter() - t0


def single_process_steady(bundle: Path, texts: list[str], llm_url: str, cache: Path, batch: int) -> dict:
    from textclassify.runtime import load_bundle

    t0 = time.perf_counter()
    with load_bundle(bundle, llm_base_url=llm_url, cache_dir=cache, batch_size=batch) as b:
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for start in range(0, len(texts), K.PREDICT_CHUNK_ROWS):
            b.predict(texts[start:start + K.PREDICT_CHUNK_ROWS])
        seconds = time.perf_counter() - t1
        usage = b.usage["serving"]
    return {"load_s": load_s, "seconds": seconds, "texts_per_s": len(texts) / seconds, "requests": usage["requests"]}


def fusion_predict_cli(bundle: Path, src: Path, out: Path, llm_url: str, cache: Path, batch: int) -> dict:
    import resource

    cmd = [str(Path(sys.executable).parent / "fusion-predict"), "--bundle", str(bundle), "--input", str(src),
           "--output", str(out), "--llm-base-url", llm_url, "--cache-dir", str(cache), "--batch-size", str(batch)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"fusion-predict failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(Path(str(out) + ".summary.json").read_text(encoding="utf-8"))
    return {"wall_s": wall, "summary_s": summary["seconds"], "rows": summary["rows"], "cpu_s": cpu_s,
            "last_lines": proc.stderr.strip().splitlines()[-2:]}


def _tree_cpu_s() -> float:
    """CPU seconds of this process and every process below it (raylet, GCS, Ray workers and actors)."""
    import psutil

    me = psutil.Process()
    total = time.process_time()
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def ray_run(bundle: Path, src: Path, out: Path, llm_url: str, cache: Path, workers: int, batch: int) -> dict:
    """predict_dataset on a local Ray started here (timed apart), with the CPU seconds the whole run used."""
    import ray

    from textclassify.serve.ray_data import LOCAL_RAY_SYSTEM_CONFIG, predict_dataset

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    init_s = time.perf_counter() - t0
    try:
        cpu0, t1 = _tree_cpu_s(), time.perf_counter()
        summary = predict_dataset(str(bundle), str(src), str(out), workers=workers, batch_size=batch,
                                  load_options={"llm_base_url": llm_url, "cache_dir": str(cache)}, progress=False)
        summary["wall_s"] = time.perf_counter() - t1
        summary["cpu_s"] = _tree_cpu_s() - cpu0  # actors that exited before this are missed: a lower bound
    finally:
        ray.shutdown()
    summary["ray"]["ray_init_s"] = init_s
    return summary


def split_cache_experiment(bundle: Path, work: Path, rows: int, distinct: int, seed: int = 11) -> dict:
    """LLM requests (counted by the loopback server) with one cache per node against one shared cache."""
    import random
    import shutil

    from tests.support.data import make_tickets
    from tests.support.llm_server import FakeLLMServer
    from textclassify.runtime import load_bundle
    from textclassify.runtime.llm.cache import ScoreCache

    pool = [f"{t} (split {i})" for i, (t, _) in enumerate(make_tickets(distinct, seed=seed))]
    rng = random.Random(seed)
    workload = [rng.choice(pool) for _ in range(rows)]
    halves = workload[: rows // 2], workload[rows // 2:]

    def requests(server: FakeLLMServer, cache: Path, texts: list[str]) -> int:
        before = server.requests
        with load_bundle(bundle, llm_base_url=server.base_url, cache_dir=cache, llm_gate="off") as b:
            b.predict(texts)
        return server.requests - before

    with FakeLLMServer() as server:
        shared = requests(server, work / "shared", halves[0]) + requests(server, work / "shared", halves[1])
        split = requests(server, work / "node_a", halves[0]) + requests(server, work / "node_b", halves[1])
        # The rerun: the same file again, the halves on the other nodes (copies of day 1's caches).
        shutil.copytree(work / "node_a", work / "node_a2")
        shutil.copytree(work / "node_b", work / "node_b2")
        swapped = requests(server, work / "node_a2", halves[1]) + requests(server, work / "node_b2", halves[0])
        shutil.copytree(work / "node_a", work / "node_a3")
        shutil.copytree(work / "node_b", work / "node_b3")
        a3, b3 = ScoreCache(work / "node_a3"), ScoreCache(work / "node_b3")
        a3.merge_from(work / "node_b")
        b3.merge_from(work / "node_a")
        a3.close()
        b3.close()
        merged = requests(server, work / "node_a3", halves[1]) + requests(server, work / "node_b3", halves[0])
    return {"rows": rows, "distinct": len(set(workload)), "shared": shared, "split": split,
            "rerun_swapped": swapped, "rerun_after_merge": merged}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="bundle directory (default: a toy bundle from the test fixtures)")
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-in-process", action="store_true", help="skip run 2b (the CLI run gives 2a)")
    parser.add_argument("--split-only", action="store_true", help="run only the split-cache experiment (4)")
    parser.add_argument("--split-rows", type=int, default=4000, help="0 skips the split-cache experiment")
    parser.add_argument("--split-distinct", type=int, default=2000)
    parser.add_argument("--cores-per-node", type=int, default=16, help="for the 16-CPU-node projection")
    parser.add_argument("--gpu-texts-per-s", type=float, default=None, help="one GPU actor's measured throughput")
    parser.add_argument("--llm-concurrency", type=int, default=64, help="provider's cap for the LLM bound")
    parser.add_argument("--llm-latency-s", type=float, default=0.5, help="LLM answer time for the LLM bound")
    args = parser.parse_args()

    from tests.support.data import make_tickets
    from tests.support.llm_server import FakeLLMServer

    work = Path(tempfile.mkdtemp(prefix="ray_scale_"))
    bundle = Path(args.bundle) if args.bundle else toy_bundle(work)
    if args.split_only:
        print(f"bundle {bundle}; split caches only")
        _print_split(split_cache_experiment(bundle, work / "split", args.split_rows, args.split_distinct))
        return
    texts = [t for t, _ in make_tickets(args.texts, seed=7)]
    src = work / "texts.csv"
    write_input(src, texts)
    cache = work / "cache"  # filled in this run: the loopback LLM's URL (its port) is part of every cache key
    print(f"bundle {bundle}; {len(texts):,} distinct texts; {os.cpu_count()} CPUs; load average {load_average()}")
    with FakeLLMServer() as llm:
        fill_s = fill_cache(bundle, texts, llm.base_url, cache)
        print(f"cache filled in {fill_s:.1f} s ({llm.requests:,} LLM requests); every timed run below is cached")
        seen = llm.requests
        cli = fusion_predict_cli(bundle, src, work / "single.csv", llm.base_url, cache, args.batch_size)
        steady = None if args.skip_in_process else single_process_steady(bundle, texts, llm.base_url, cache,
                                                                          args.batch_size)
        rs = ray_run(bundle, src, work / "ray_out", llm.base_url, cache, args.workers, args.batch_size)
        assert llm.requests == seen, f"a timed run asked the LLM ({llm.requests - seen} requests)"
    r = rs["ray"]
    ray_steady = r["steady_texts_per_second"]
    per_actor = ray_steady / args.workers
    print(f"\nload average {load_average()}")
    print("| run | rows | wall s | start s | steady texts/s |")
    print("|---|---|---|---|---|")
    print(f"| fusion-predict (one process, CLI) | {cli['rows']:,} | {cli['wall_s']:.1f} | - | "
          f"{cli['rows'] / cli['summary_s']:.0f} (whole run) |")
    if steady is not None:
        print(f"| same bundle in-process, 512-row chunks | {len(texts):,} | "
              f"{steady['load_s'] + steady['seconds']:.1f} | {steady['load_s']:.2f} (load) | "
              f"{steady['texts_per_s']:.0f} |")
    print(f"| Ray Data, {args.workers} actors | {rs['rows']:,} | {rs['wall_s']:.1f} (after ray.init) | ray.init "
          f"{r['ray_init_s']:.1f}, actors {r.get('actor_start_s', float('nan')):.1f} (bundle load max "
          f"{r['worker_load_s_max']:.2f}) | {ray_steady:.0f} |")
    single_steady = steady["texts_per_s"] if steady is not None else cli["rows"] / cli["summary_s"]
    print(f"\nRay Data steady state / single process: {ray_steady / single_steady:.0%} (target >= 80%); per actor "
          f"{per_actor:.0f} texts/s; Ray scan {r['scan_s']:.1f} s, run {r['run_s']:.1f} s, {r['batches']} batches")
    single_cpu, ray_cpu = 1000 * cli["cpu_s"] / cli["rows"], 1000 * rs["cpu_s"] / rs["rows"]
    print(f"CPU seconds per 1,000 texts (all processes; fair on a shared machine, where two processes get a larger "
          f"share of the CPU than one): fusion-predict {single_cpu:.2f}, Ray Data {ray_cpu:.2f} "
          f"(single / Ray = {single_cpu / ray_cpu:.0%} of single-process efficiency)")
    print(f"fusion-predict's own lines: {' | '.join(cli['last_lines'])}")

    if args.split_rows:
        _print_split(split_cache_experiment(bundle, work / "split", args.split_rows, args.split_distinct))
    _print_projection(args, per_actor)


def _print_split(split: dict) -> None:
    if split is not None:
        print(f"\nsplit caches: {split['rows']:,} rows, {split['distinct']:,} distinct texts, two halves on two nodes")
        print(f"  LLM requests, one shared cache: {split['shared']:,}; one cache per node: {split['split']:,} "
              f"(+{split['split'] - split['shared']:,} duplicates, "
              f"{(split['split'] - split['shared']) / split['shared']:.0%} more)")
        print(f"  rerun with the halves swapped: {split['rerun_swapped']:,} requests; after fusion-cache merge both "
              f"ways: {split['rerun_after_merge']:,}")


def _print_projection(args: argparse.Namespace, per_actor: float) -> None:
    llm_bound = args.llm_concurrency / args.llm_latency_s
    cpu_nodes = 16 * args.cores_per_node * per_actor
    print(f"\nprojection (linear in actors, from {per_actor:.0f} texts/s per 1-CPU actor measured here):")
    print(f"  16 CPU nodes x {args.cores_per_node} actors: {cpu_nodes:,.0f} texts/s with cached LLM scores "
          f"({10_000_000 / cpu_nodes / 60:.1f} min for 10 M texts)")
    if args.gpu_texts_per_s:
        gpu = 4 * args.gpu_texts_per_s
        print(f"  4 GPU nodes x 1 actor at {args.gpu_texts_per_s:,.0f} texts/s: {gpu:,.0f} texts/s cached "
              f"({10_000_000 / gpu / 60:.1f} min for 10 M texts)")
    print(f"  texts new to the cache: bound by the LLM at --llm-concurrency {args.llm_concurrency} / "
          f"{args.llm_latency_s:g} s = {llm_bound:,.0f} texts/s for the whole cluster (divided by the share of rows "
          f"the gate sends to the LLM), however many nodes run")


if __name__ == "__main__":
    main()
