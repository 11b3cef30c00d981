"""The seed's examples/ run offline: both scripts and fusion-train with examples/config/fusion_config.yaml.

Offline stand-ins, all reached the way a user's setup would be: the LLM is the loopback fake server,
named by DEEPSEEK_BASE_URL (the seed's provider is deepseek) or TEXTCLASSIFY_LLM_PROVIDER; the encoder
"roberta-base" is a local folder of that name holding the tiny test RoBERTa (Hugging Face loads a local
folder before it looks at the hub); HOME is a temporary folder, so the LLM cache lands there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.support.llm_server import FakeLLMServer
from tests.support.seed_data import sentiment_rows

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent

# The seed README's "Command Line Training" block, verbatim (its first command, then the other three).
SEED_CREATE_CONFIG = "python train_fusion.py --create-config fusion_config.yaml\n"
SEED_TRAIN_COMMANDS = """\
# Train with configuration file
python train_fusion.py --config fusion_config.yaml

# Quick training with command line args
python train_fusion.py \\
    --data data/train.csv \\
    --ml-model roberta-base \\
    --llm-provider deepseek \\
    --llm-model deepseek-chat \\
    --output fusion_output

# Training with evaluation
python train_fusion.py \\
    --config fusion_config.yaml \\
    --test-data data/test.csv
"""

@pytest.fixture(scope="module")
def llm():
    with FakeLLMServer() as server:
        yield server


def _workdir(tmp_path: Path, tiny_roberta_dir: str) -> Path:
    (tmp_path / "roberta-base").symlink_to(tiny_roberta_dir, target_is_directory=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "data").mkdir()
    return tmp_path


def _env(workdir: Path, server: FakeLLMServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    env.update(HOME=str(workdir / "home"), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               DEEPSEEK_BASE_URL=server.base_url, DEEPSEEK_API_KEY="sk-test", TEXTCLASSIFY_LLM_PROVIDER="deepseek",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def _run(command: list[str], workdir: Path, env: dict[str, str], timeout: int = 900) -> str:
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.timeout(1200)
def test_fusion_ensemble_example_runs(tmp_path, tiny_roberta_dir, llm):
    """examples/fusion_ensemble_example.py trains and evaluates both tasks and asks the LLM set by the environment."""
    workdir = _workdir(tmp_path, tiny_roberta_dir)
    before = llm.requests
    out = _run([sys.executable, str(EXAMPLES / "fusion_ensemble_example.py")], workdir, _env(workdir, llm))
    assert "=== Multi-class: sentiment ===" in out and "=== Multi-label: movie genres ===" in out
    accuracy = float(out.split("Accuracy: ")[1].split()[0])
    subset = float(out.split("Subset accuracy: ")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0 and 0.0 <= subset <= 1.0
    for task in ("sentiment", "genres"):
        metrics = json.loads((workdir / "fusion_output" / task / "metrics.json").read_text())
        assert metrics["llm_usage"]["requests"] > 0
    assert llm.requests > before
    assert {b["model"] for b in llm.bodies} == {"deepseek-chat"}
    assert (workdir / "home" / ".cache" / "textclassify").is_dir()


@pytest.mark.timeout(1800)
def test_train_fusion_runs_the_seed_commands(tmp_path, tiny_roberta_dir, llm):
    """The seed's four train_fusion.py commands run in order, the config edited between as a user would."""
    workdir = _workdir(tmp_path, tiny_roberta_dir)
    shutil.copy(EXAMPLES / "train_fusion.py", workdir / "train_fusion.py")
    rows = sentiment_rows()
    frame = pd.DataFrame(rows, columns=["text", "label"])
    frame.to_csv(workdir / "data" / "train.csv", index=False)
    frame.iloc[::3].to_csv(workdir / "data" / "test.csv", index=False)
    env = _env(workdir, llm)
    out = _run(["bash", "-ec", SEED_CREATE_CONFIG], workdir, env)
    assert "Wrote the default config to fusion_config.yaml" in out
    config = workdir / "fusion_config.yaml"
    text = config.read_text(encoding="utf-8")
    assert "  train_path: null\n" in text
    config.write_text(text.replace("  train_path: null\n", "  train_path: data/train.csv\n"), encoding="utf-8")
    out = _run(["bash", "-ec", SEED_TRAIN_COMMANDS], workdir, env, timeout=1700)
    assert out.count("/fusion_output/model\n") == 3
    report = json.loads((workdir / "fusion_output" / "report" / "metrics.json").read_text())
    assert report["labels"] == ["negative", "neutral", "positive"]
    assert report["n_held_out"] == len(rows[::3])  # the last command's --test-data


@pytest.mark.timeout(1200)
def test_fusion_train_with_the_seed_config_file(tmp_path, tiny_roberta_dir, llm):
    """`fusion-train --config examples/config/fusion_config.yaml` trains on data/train.csv (one-hot labels)."""
    workdir = _workdir(tmp_path, tiny_roberta_dir)
    labels = ["positive", "neutral", "negative"]
    pd.DataFrame([{"text": t, **{lab: int(lab == y) for lab in labels}} for t, y in sentiment_rows()]).to_csv(
        workdir / "data" / "train.csv", index=False)
    before = llm.requests
    proc = subprocess.run([str(BIN / "fusion-train"), "--config", str(EXAMPLES / "config" / "fusion_config.yaml"),
                           "--quiet"], cwd=workdir, env=_env(workdir, llm), capture_output=True, text=True,
                          timeout=1100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "models.llm.max_completion_tokens: accepted for compatibility and ignored" in proc.stderr
    assert "/fusion_output/model\n" in proc.stdout
    assert llm.requests > before
    report = json.loads((workdir / "fusion_output" / "report" / "metrics.json").read_text())
    assert report["labels"] == labels
    from textclassify import AutoFusionClassifier

    config = AutoFusionClassifier.load(workdir / "fusion_output" / "model").config_
    assert (config["fusion"]["ml_lr"], config["fusion"]["fusion_lr"]) == (1e-5, 1e-3)  # the seed's aliases
    assert (config["ml"]["max_length"], config["llm"]["temperature"], config["llm_model"]) == (512, 0.1,
                                                                                               "deepseek-chat")
