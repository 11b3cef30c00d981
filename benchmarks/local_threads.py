"""The embedded llama.cpp server's thread count: demo reviews scored per second at 1 thread against every core.

    .venv/bin/python benchmarks/local_threads.py [--texts 120] [--busy]

Each thread count runs in a fresh interpreter (the server takes its threads when it starts, once per process)
with $TEXTCLASSIFY_LOCAL_THREADS set, and sends the same --texts movie reviews (the demo's corpus, cut to 400
characters) through the openai SDK, 4 at a time as the demo does (llm.max_concurrency 4, the server's slots),
temperature 0, 4 answer tokens with top logprobs. --busy runs a 2-thread torch matmul loop beside each run: the
case the default of half the cores is for (torch training, or other work, on the same cores). Prints texts/s of
each and the ratio. Needs `make demo`'s assets (the GGUF and the corpus).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from textclassify.runtime import constants as K
from textclassify.runtime.llm.local_server import usable_cores

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "Classify the movie review into one of: fresh, rotten, plot. Answer with the label only."

SCORE = r"""
import sys, time
from concurrent.futures import ThreadPoolExecutor
from openai import OpenAI
from textclassify.runtime.llm.local_server import ensure_local_server
from textclassify.train.demo import load_movie_reviews
from pathlib import Path
from textclassify.train.demo_assets import DemoPaths
n, system, root = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
texts = load_movie_reviews(DemoPaths(root).corpus).sample(n, random_state=0)["text"].str.slice(0, 400).tolist()
base_url, model = ensure_local_server()
client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
def one(text):
    return client.chat.completions.create(
        model=model, temperature=0, max_tokens=4, logprobs=True, top_logprobs=10,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": text}]).usage.prompt_tokens
start = time.perf_counter()
with ThreadPoolExecutor(4) as pool:
    tokens = sum(pool.map(one, texts))
print(f"{len(texts) / (time.perf_counter() - start):.3f} {tokens}")
"""

BURN = r"""
import sys, time, torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = (a @ a).clamp(-1, 1)
"""


def rate(threads: int, n_texts: int, busy: bool) -> tuple[float, int]:
    """texts/s (and prompt tokens) of one fresh process whose server runs `threads` threads."""
    env = {**os.environ, K.LOCAL_THREADS_ENV: str(threads)}
    burner = subprocess.Popen([sys.executable, "-c", BURN]) if busy else None
    try:
        if burner is not None:
            time.sleep(2.0)  # the loop is running before the first request
        out = subprocess.run([sys.executable, "-c", SCORE, str(n_texts), SYSTEM, str(ROOT)], env=env,
                             stdout=subprocess.PIPE, text=True, check=True).stdout.split()
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return float(out[-2]), int(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=120, help="reviews scored per run (default 120)")
    parser.add_argument("--busy", action="store_true", help="a 2-thread torch loop runs beside the server")
    args = parser.parse_args()
    cores = usable_cores()  # what the server accepts at most
    print(f"local server threads: {args.texts} demo reviews, 4 requests at a time, {cores} cores, "
          f"{'beside a 2-thread torch loop' if args.busy else 'idle machine'}")
    one, tokens = rate(1, args.texts, args.busy)
    print(f"  1 thread   {one:6.2f} texts/s  ({tokens:,} prompt tokens)")
    every, _ = rate(cores, args.texts, args.busy)
    print(f"  {cores} threads  {every:6.2f} texts/s")
    print(f"every core / 1 thread: {every / one:.2f}x")


if __name__ == "__main__":
    main()
