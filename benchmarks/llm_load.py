"""Load benchmark of the LLM client: 5,000 texts against a loopback server answering after 100 ms.

    .venv/bin/python benchmarks/llm_load.py [--n 5000] [--concurrency 32] [--delay 0.1] [--cache]

Prints wall time, requests/s against the bound concurrency / delay (ratio), whether the server saw
every text exactly once, and the peak RSS of this process sampled during the run. Below 80% of the
bound (or with --profile) it profiles the run with cProfile and prints where the time goes.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import openai
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.data import LABELS, make_tickets  # noqa: E402
from textclassify.runtime.llm import LLMScorer, LLMSettings  # noqa: E402
from textclassify.runtime.llm.prompts import build_messages  # noqa: E402


class RssSampler(threading.Thread):
    """Samples this process's resident set size every `interval_s` until stopped."""

    def __init__(self, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(self.process.memory_info().rss)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def start_server(delay: float) -> tuple[subprocess.Popen, str]:
    """The fake server in its own process (so its threads do not compete with the client for the GIL)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.llm_server", "--port", "0", "--delay", str(delay),
                             "--no-logprobs"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def server_stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url + "/stats", timeout=10) as response:
        return json.loads(response.read())


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def run(args: argparse.Namespace, texts: list[str], base_url: str, cache_dir: str | None, profile: bool,
        server_pid: int) -> dict:
    settings = LLMSettings(provider="openai-compatible", base_url=base_url, model="fake", score_method="json",
                           max_concurrency=args.concurrency, timeout_s=30)
    scorer = LLMScorer(settings, LABELS, False, cache_dir=cache_dir)
    scorer.score(["warm-up text"])  # connection set-up and lazy imports are not part of the load figure
    before = server_stats(base_url)["requests"]
    sampler = RssSampler()
    rss_start = psutil.Process().memory_info().rss
    sampler.start()
    profiler = cProfile.Profile() if profile else None
    me, server = psutil.Process(), psutil.Process(server_pid)
    cpu_start, server_cpu_start = cpu_s(me), cpu_s(server)
    start = time.perf_counter()
    if profiler:  # the requests run on the scorer's event-loop thread: profile that thread
        scorer._runner.loop.call_soon_threadsafe(profiler.enable)
    scores = scorer.score(texts)
    if profiler:
        scorer._runner.run(_disable(profiler))
    wall = time.perf_counter() - start
    client_cpu, server_cpu = cpu_s(me) - cpu_start, cpu_s(server) - server_cpu_start
    sampler.stop()
    usage = scorer.usage
    scorer.close()
    stats = server_stats(base_url)
    return {"wall_s": wall, "scores_shape": scores.shape, "requests": stats["requests"] - before,
            "server": stats, "usage": usage, "rss_start": rss_start, "rss_peak": max(sampler.samples),
            "rss": sampler.samples, "profiler": profiler,
            "client_cpu_s": client_cpu, "server_cpu_s": server_cpu}


async def _disable(profiler: cProfile.Profile) -> None:
    profiler.disable()


def bare_sdk_rate(texts: list[str], base_url: str, concurrency: int) -> float:
    """Requests/s of the bare openai SDK (same prompts, same bound, no LLMScorer) on this machine now."""
    async def go() -> float:
        client = openai.AsyncOpenAI(api_key="not-needed", base_url=base_url, max_retries=0, timeout=30)
        sem = asyncio.Semaphore(concurrency)

        async def one(text: str) -> str:
            async with sem:
                raw = await client.chat.completions.with_raw_response.create(
                    model="fake", messages=build_messages(text, LABELS, multi_label=False, method="json"),
                    temperature=0, max_tokens=196, response_format={"type": "json_object"})
                return raw.text

        await one("warm-up")
        start = time.perf_counter()
        await asyncio.gather(*(one(t) for t in texts))
        wall = time.perf_counter() - start
        await client.close()
        return len(texts) / wall

    return asyncio.run(go())


def _quarters(samples: list[int]) -> list[list[int]]:
    k = max(1, len(samples) // 4)
    return [samples[i * k:(i + 1) * k] or samples[-1:] for i in range(4)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--cache", action="store_true", help="score into a temporary cache (default: no cache)")
    parser.add_argument("--profile", action="store_true", help="profile even when the bound is met")
    args = parser.parse_args()
    texts = [t for t, _ in make_tickets(args.n, seed=123)]
    assert len(set(texts)) == args.n
    bound = args.concurrency / args.delay
    server, base_url = start_server(args.delay)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args, texts, base_url, tmp if args.cache else None, args.profile, server.pid)
            rate = result["requests"] / result["wall_s"]
            ratio = rate / bound
            if ratio < 0.8 and not args.profile:
                print(f"below 80% of the bound ({ratio:.2f}); profiling a second run ...", flush=True)
                server.terminate()
                server.wait()
                server, base_url = start_server(args.delay)
                profiled = run(args, texts, base_url, tmp if args.cache else None, True, server.pid)
                result["profiler"] = profiled["profiler"]
                sample = [t + " (bare SDK)" for t in texts[:2000]]
                result["bare_sdk_rate"] = bare_sdk_rate(sample, base_url, args.concurrency)
    finally:
        server.terminate()
        server.wait()
    stats = result["server"]
    once = stats["unique_texts"] == args.n + 1 and stats["max_count"] == 1  # +1: the warm-up text
    mib = 1024 * 1024
    print(f"texts              {args.n} (cache: {'temporary sqlite' if args.cache else 'none'})")
    print(f"max_concurrency    {args.concurrency}, server delay {args.delay * 1000:.0f} ms -> bound {bound:.0f} req/s")
    print(f"wall time          {result['wall_s']:.2f} s")
    print(f"throughput         {rate:.1f} req/s = {ratio:.1%} of the bound")
    print(f"server             {result['requests']} requests, {stats['unique_texts'] - 1} distinct texts, "
          f"max per text {stats['max_count']}, max in flight {stats['max_in_flight']}")
    print(f"client CPU         {result['client_cpu_s']:.2f} s = {result['client_cpu_s'] * 1000 / args.n:.2f} ms "
          f"per request ({result['client_cpu_s'] / result['wall_s']:.0%} of one core); "
          f"server CPU {result['server_cpu_s'] * 1000 / args.n:.2f} ms per request; "
          f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if "bare_sdk_rate" in result:
        print(f"bare openai SDK    {result['bare_sdk_rate']:.1f} req/s on the same server and bound, without LLMScorer "
              f"(LLMScorer reaches {rate / result['bare_sdk_rate']:.0%} of it)")
    print(f"every text once    {'yes' if once and result['requests'] == args.n else 'NO'}")
    print(f"client usage       {result['usage']}")
    print(f"peak RSS           {result['rss_peak'] / mib:.1f} MiB (at start {result['rss_start'] / mib:.1f} MiB, "
          f"+{(result['rss_peak'] - result['rss_start']) / mib:.1f} MiB, {len(result['rss'])} samples)")
    quarters = [max(q) / mib for q in _quarters(result["rss"])]
    print(f"RSS by quarter     {', '.join(f'{q:.1f}' for q in quarters)} MiB (peak of each quarter of the run)")
    if result["profiler"] is not None:
        out = io.StringIO()
        pstats.Stats(result["profiler"], stream=out).sort_stats("tottime").print_stats(25)
        print("\nwhere the client's time goes (cProfile of the scorer's event-loop thread, by own time):")
        print(out.getvalue())
    return 0 if ratio >= 0.8 and once else 1


if __name__ == "__main__":
    sys.exit(main())
