"""fit end to end for the cascade: the gate chosen and reported, cost per stage, and the bundle serving the same."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.support.data import make_tickets
from textclassify import AutoFusionClassifier
from textclassify.runtime import load_bundle

PRICE = {"input": 0.5, "output": 1.5}


def _frame(n: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in make_tickets(n, seed=seed)])


@pytest.fixture(scope="module")
def fitted(server, tiny_roberta_dir, tmp_path_factory, one_torch_thread):
    tmp = tmp_path_factory.mktemp("cascade_fit")
    config = {
        **server.config_overrides(), "label_columns": ["topic"], "ml_model": tiny_roberta_dir,
        "cache_dir": str(tmp / "cache"), "output_dir": str(tmp / "out"), "fusion_split": 0.4,
        "llm": {"score_method": "json", "timeout_s": 5, "max_retries": 2, "price_per_million": PRICE},
        "ml": {"num_epochs": 2, "max_length": 16, "learning_rate": 1e-3, "batch_size": 16},
        "fusion": {"num_epochs": 1, "ml_lr": 1e-4, "cv_repeats": 1}, "gate": {"max_accuracy_loss": 0.02},
    }
    before = server.tokens
    clf = AutoFusionClassifier(config).fit(_frame(300, seed=1), eval_data=_frame(120, seed=2), progress=False)
    after = server.tokens
    sent = {k: after[k] - before[k] for k in after}
    return clf, tmp, sent


def test_fit_reports_the_gate_no_llm_accuracy_and_cost(fitted) -> None:
    """metrics.json: the no-LLM head's accuracy, the gate (chosen on the fusion split, effect on held-out data),
    and tokens per stage equal to what the server sent, priced at llm.price_per_million."""
    clf, tmp, sent = fitted
    on_disk = json.loads((tmp / "out" / "metrics.json").read_text())
    assert "fused_no_llm" in on_disk["metrics"]
    gate = on_disk["gate"]
    assert gate["rule"] == "top_probability" and gate["target"] == {"max_accuracy_loss": 0.02}
    held = gate["held_out"]
    assert held["n"] == 120 and held["llm_calls"] + held["llm_calls_saved"] == 120
    assert held["accuracy_cost"] == pytest.approx(held["accuracy_always_llm"] - held["accuracy_gated"])
    stages = on_disk["cost"]["stages"]
    tokens = {k: stages["training_scores"][k] + stages["evaluation"][k] for k in ("prompt_tokens", "completion_tokens")}
    assert tokens == sent
    want = (sent["prompt_tokens"] * PRICE["input"] + sent["completion_tokens"] * PRICE["output"]) / 1e6
    assert stages["training_scores"]["cost_usd"] + stages["evaluation"]["cost_usd"] == pytest.approx(want)
    per = on_disk["cost"]["per_1000_predictions"]
    assert per["always_llm_usd"] > 0 and per["gated_usd"] <= per["always_llm_usd"]
    summary = (tmp / "out" / "report" / "summary.txt").read_text()
    assert "LLM gate:" in summary and "Projected LLM cost of 1,000 predictions" in summary


def test_bundle_serves_the_gate_fit_chose(fitted, server, tmp_path) -> None:
    """The exported manifest holds the fitted gate; the bundle's answers and skipped rows equal predict's."""
    clf, _, _ = fitted
    bundle_dir = clf.export(tmp_path / "bundle", progress=False)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["gate"]["threshold"] == clf.gate_["threshold"] and manifest["format_version"] == 2
    texts = [t for t, _ in make_tickets(60, seed=9)]
    want = clf.predict(texts)
    with load_bundle(bundle_dir, llm_base_url=server.base_url, cache_dir=tmp_path / "c") as bundle:
        got = bundle.predict(texts)
    assert got.metadata["llm_skipped"] == want.metadata["llm_skipped"]
    assert got.predictions == want.predictions
