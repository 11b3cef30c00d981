"""LLM cache across processes: a scoring run killed halfway resumes with only the missing texts, and two
processes scoring the same texts into one cache neither fail, lose rows nor pay twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.support.data import LABELS, keyword_scores, make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify.runtime.llm import LLMScorer
from textclassify.runtime.llm.cache import ScoreCache, score_key

ROOT = Path(__file__).resolve().parents[1]
SCORE_SCRIPT = """
import json, os, sys, time
from pathlib import Path
from tests.support.data import LABELS, make_tickets
from textclassify.runtime.llm import LLMScorer, LLMSettings
url, cache, n, conc, out, barrier = sys.argv[1:]
texts = [t for t, _ in make_tickets(int(n), seed=11)]
settings = LLMSettings(provider="openai-compatible", base_url=url, model="fake", score_method="json",
                       max_concurrency=int(conc))
with LLMScorer(settings, LABELS, False, cache_dir=cache) as scorer:
    if barrier != "-":
        Path(out + ".ready").touch()
        while not Path(barrier).exists():
            time.sleep(0.01)
    scores = scorer.score(texts)
    Path(out).write_text(json.dumps({"scores": scores.tolist(), "usage": scorer.usage}))
"""


def texts_of(n: int) -> list[str]:
    return [t for t, _ in make_tickets(n, seed=11)]


def expected(texts: list[str]) -> np.ndarray:
    return np.array([[keyword_scores(t)[lab] for lab in LABELS] for t in texts], dtype=np.float32)


def spawn(url: str, cache: Path, n: int, conc: int, out: Path, barrier: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", SCORE_SCRIPT, url, str(cache), str(n), str(conc), str(out),
                             str(barrier) if barrier else "-"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cached_texts(cache_dir: Path, base_url: str, texts: list[str]) -> set[str]:
    keys = {score_key(provider="openai-compatible", model="fake", base_url=base_url,
                      prompt_version="v1", score_method="json", labels=LABELS, multi_label=False, text=t): t
            for t in texts}
    cache = ScoreCache(cache_dir)
    try:
        return {keys[k] for k in cache.get_many(list(keys), len(LABELS))}
    finally:
        cache.close()


def test_killed_run_resumes_with_only_missing_texts(tmp_path: Path) -> None:
    """SIGKILL a scoring process mid-run; the rerun requests exactly the texts not cached, and nothing waits
    on the dead process's claims."""
    n = 60
    texts = texts_of(n)
    with FakeLLMServer(delay_s=0.05) as server:
        proc = spawn(server.base_url, tmp_path, n, 2, tmp_path / "out.json")
        deadline = time.monotonic() + 60
        while server.requests < 16 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
        done = cached_texts(tmp_path, server.base_url, texts)
        assert 12 <= len(done) < n
        before = server.requests
        start = time.monotonic()
        with LLMScorer(server.settings(score_method="json"), LABELS, False, cache_dir=tmp_path) as scorer:
            scores = scorer.score(texts)
            assert scorer.usage["cache_hits"] == len(done)
        assert time.monotonic() - start < 10
        resumed = server.texts_seen[before:]
    assert len(resumed) == n - len(done)
    assert set(resumed) == set(texts) - done
    np.testing.assert_array_equal(scores, expected(texts))


def test_two_processes_share_one_cache(tmp_path: Path) -> None:
    """Two processes start scoring the same texts into one cache at the same moment: both succeed with the
    right scores, every row is there once, duplicates stay within the requests in flight."""
    n, conc = 80, 4
    texts = texts_of(n)
    barrier = tmp_path / "go"
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    with FakeLLMServer(delay_s=0.04) as server:
        procs = [spawn(server.base_url, tmp_path / "cache", n, conc, out, barrier) for out in outs]
        deadline = time.monotonic() + 60
        while not all(Path(str(o) + ".ready").exists() for o in outs) and time.monotonic() < deadline:
            time.sleep(0.01)
        barrier.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        requests = server.requests
        seen = server.texts_seen
        url = server.base_url
    results = [json.loads(out.read_text()) for out in outs]
    for result in results:
        np.testing.assert_array_equal(np.array(result["scores"], dtype=np.float32), expected(texts))
        assert result["usage"]["requests"] > 0 and result["usage"]["failures"] == 0
    assert sum(r["usage"]["requests"] for r in results) == requests
    assert len(cached_texts(tmp_path / "cache", url, texts)) == n and set(seen) == set(texts)
    assert n <= requests <= n + conc
