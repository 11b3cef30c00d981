"""The runtime imports and serves a bundle in a process where torch, transformers, sklearn and pandas cannot load."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from tests.support.toy_bundle import write_toy_bundle
from textclassify.runtime import load_bundle

BLOCKED = ("torch", "transformers", "sklearn", "pandas", "textclassify.train", "textclassify.export")
SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    BLOCKED = {blocked!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    import textclassify.runtime
    from textclassify.runtime import load_bundle

    texts = json.loads(sys.argv[1])
    with load_bundle(sys.argv[2], llm_base_url=sys.argv[3], cache_dir=sys.argv[4]) as bundle:
        result = bundle.predict(texts)
    loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
    print(json.dumps({{"predictions": result.predictions, "probabilities": result.probabilities.tolist(),
                      "loaded": loaded}}))
""").format(blocked=BLOCKED)


def test_predict_without_torch(tiny_roberta_dir: str, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """import + load_bundle + predict succeed with the heavy libraries blocked, and match this process."""
    bundle_dir = tmp_path / "bundle"
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1",
           "score_method": "json", "max_retries": 0}
    write_toy_bundle(bundle_dir, Path(tiny_roberta_dir) / "tokenizer.json", labels=["billing", "shipping",
                     "technical"], multi_label=False, llm=llm)
    texts = [t for t, _ in make_tickets(10, seed=9)]
    with load_bundle(bundle_dir, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c1") as bundle:
        here = bundle.predict(texts)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(texts), str(bundle_dir), llm_server.base_url,
         str(tmp_path / "c2")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["predictions"] == here.predictions
    np.testing.assert_allclose(np.array(out["probabilities"]), here.probabilities, atol=1e-6)


def test_blocker_really_blocks() -> None:
    """The same blocker makes `import torch` fail in the child (so the test above can fail)."""
    probe = SCRIPT.split("import textclassify.runtime")[0] + "import torch\n"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "ImportError: torch is blocked in this test" in proc.stderr
