"""Answer tokens asked for with score_method logprobs: demo reviews scored per second at 8 tokens against 4.

    .venv/bin/python benchmarks/answer_tokens.py [--texts 200] [--rounds 2]

Sends the same --texts movie reviews (the demo's corpus and the product's own logprobs prompt) through the
embedded llama.cpp server and the openai SDK, 4 at a time as the demo does, at temperature 0, alternating
8 and 4 answer tokens --rounds times in one process (the machine's speed drifts, so each pair is compared
back to back). Only the first answer token with visible text is read (runtime/llm/parsing.py); the script
prints where it fell and how many answers named a label at each length. Needs `make demo`'s assets.
"""
from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from textclassify.runtime import constants as K
from textclassify.runtime.llm import parsing as P
from textclassify.runtime.llm.local_server import usable_cores
from textclassify.runtime.llm.prompts import LOGPROBS, build_messages

LABELS = ["fresh", "rotten", "plot"]
ROOT = Path(__file__).resolve().parents[1]


def score_all(client, model: str, texts: list[str], max_tokens: int) -> tuple[float, Counter, int]:
    """texts/s, where the first visible answer token fell, and how many answers named a label."""
    def one(text: str) -> tuple[int | None, bool]:
        response = client.chat.completions.create(
            model=model, temperature=0, max_tokens=max_tokens, logprobs=True, top_logprobs=K.TOP_LOGPROBS,
            messages=build_messages(text, LABELS, multi_label=False, method=LOGPROBS))
        choice = response.model_dump()["choices"][0]
        tokens = [entry["token"] for entry in (choice.get("logprobs") or {}).get("content") or []]
        first = next((i for i, token in enumerate(tokens) if token.strip(P._TOKEN_STRIP)), None)
        pairs = P.first_token_logprobs(choice)
        return first, pairs is not None and P.logprob_scores(pairs, LABELS, None) is not None

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, texts))
    return len(texts) / (time.perf_counter() - start), Counter(r[0] for r in results), sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=200, help="reviews scored per run (default 200)")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs, 8 then 4 tokens (default 2)")
    args = parser.parse_args()
    os.environ.setdefault(K.LOCAL_THREADS_ENV, str(usable_cores()))  # as in make demo: the LLM runs alone
    from openai import OpenAI

    from textclassify.runtime.llm.local_server import ensure_local_server
    from textclassify.train.demo import load_movie_reviews
    from textclassify.train.demo_assets import DemoPaths

    reviews = load_movie_reviews(DemoPaths(ROOT).corpus).sample(args.texts, random_state=2)["text"].tolist()
    base_url, model = ensure_local_server()
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    print(f"answer tokens: {args.texts} demo reviews, 4 requests at a time, "
          f"{os.environ[K.LOCAL_THREADS_ENV]} server threads")
    for _ in range(args.rounds):
        rates = []
        for max_tokens in (8, 4):
            rate, first, usable = score_all(client, model, reviews, max_tokens)
            rates.append(rate)
            where = dict(sorted(first.items(), key=str))
            print(f"  {max_tokens} tokens {rate:5.2f} texts/s, first visible token at {where}, naming a label {usable}")
        print(f"  4 / 8 tokens: {rates[1] / rates[0]:.2f}x")


if __name__ == "__main__":
    main()
