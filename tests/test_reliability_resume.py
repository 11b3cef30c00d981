"""A fit killed (SIGKILL) in the middle of LLM scoring, then started again: only the texts not yet cached are
requested, and the model equals the one from an uninterrupted fit with the same seed.

The loopback server runs in this test process (so it counts across the child processes) and answers
after 50 ms with at most two requests in flight, so the kill lands mid-scoring.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify import AutoFusionClassifier
from textclassify.runtime import constants as K
from textclassify.runtime.llm.cache import ScoreCache, score_key

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 150
FIT_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
import pandas as pd
from tests.support.data import make_tickets
from textclassify import AutoFusionClassifier
config, n, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
frame = pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in make_tickets(n, seed=3)])
AutoFusionClassifier(config).fit(frame, progress=False).save(out)
"""


def frame() -> pd.DataFrame:
    return pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in make_tickets(N_ROWS, seed=3)])


def make_config(server: FakeLLMServer, model_dir: str, tmp: Path, name: str, concurrency: int) -> dict:
    return {**server.config_overrides(), "label_columns": ["topic"], "ml_model": model_dir, "seed": 7,
            "cache_dir": str(tmp / "cache"), "output_dir": str(tmp / f"out-{name}"), "fusion_split": 0.4,
            "llm": {"score_method": "json", "max_concurrency": concurrency, "timeout_s": 5, "max_retries": 1},
            "ml": {"num_epochs": 1, "max_length": 32, "batch_size": 16, "learning_rate": 1e-3},
            "fusion": {"num_epochs": 1, "warmup_epochs": 5}}


def spawn(config: dict, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", FIT_SCRIPT, json.dumps(config), str(N_ROWS), str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cached(config: dict, texts: list[str]) -> set[str]:
    keys = {score_key(provider="openai-compatible", model="fake", base_url=config["llm_base_url"],
                      prompt_version=K.PROMPT_VERSION, score_method="json", labels=["billing", "shipping", "technical"],
                      multi_label=False, text=t): t for t in texts}
    cache = ScoreCache(config["cache_dir"])
    try:
        return {keys[k] for k in cache.get_many(list(keys), 3)}
    finally:
        cache.close()


def reference_fit_one_thread(config: dict) -> AutoFusionClassifier:
    """An uninterrupted fit with one torch thread (as in the child processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return AutoFusionClassifier(config).fit(frame(), progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.timeout(300)
def test_killed_fit_resumes_and_equals_an_uninterrupted_fit(tiny_roberta_dir, tmp_path):
    """SIGKILL mid-scoring; the rerun asks only for uncached texts and its model matches a clean fit to 1e-6."""
    with FakeLLMServer(delay_s=0.05) as server, FakeLLMServer() as ref_server, ThreadPoolExecutor(1) as pool:
        # 1. The uninterrupted reference, in this process (in a thread, while the child below starts up), with
        #    its own server and cache: it also tells which texts a fit scores.
        reference_fit = pool.submit(reference_fit_one_thread,
                                    make_config(ref_server, tiny_roberta_dir, tmp_path / "ref", "ref", concurrency=8))

        # 2. A fit in a child process, killed once 16 requests have arrived (at most 2 in flight).
        config = make_config(server, tiny_roberta_dir, tmp_path / "run", "run", concurrency=2)
        proc = spawn(config, tmp_path / "never")
        deadline = time.monotonic() + 120
        while server.requests < 16 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err

        reference = reference_fit.result(timeout=240)
        fusion_texts = ref_server.texts_seen
        splits = reference.metadata_["splits"]
        n_fusion = splits["fusion"]
        assert len(fusion_texts) == len(set(fusion_texts)) == n_fusion and 50 <= n_fusion <= 70
        done = cached(config, fusion_texts)
        assert 10 <= len(done) < n_fusion and not (tmp_path / "never").exists()
        assert set(server.texts_seen) <= set(fusion_texts)

        # 3. The same fit again: only the missing texts are requested, each once.
        before = server.requests
        proc = spawn(config, tmp_path / "model")
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        resumed = server.texts_seen[before:]
        assert Counter(resumed) == Counter(set(fusion_texts) - done)
        assert cached(config, fusion_texts) == set(fusion_texts)

        # 4. The resumed model equals the reference.
        model = AutoFusionClassifier.load(tmp_path / "model")
        test_texts = [t for t, _ in make_tickets(30, seed=17)]
        got = model.predict(test_texts)
        want = reference.predict(test_texts)
    print(f"killed after {len(done)} of {n_fusion} texts were cached; the rerun requested {len(resumed)}")
    assert got.predictions == want.predictions
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6, rtol=0)
    saved = json.loads((tmp_path / "model" / "textclassify_model.json").read_text())
    assert saved["calibrator"] == reference.calibrator_.to_dict()
    assert saved["metrics"]["fused"] == reference.metrics_["fused"]
