"""Cost accounting against the fake server's own token counts, and the gate's threshold choice (train.gate)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from tests.support.toy_bundle import write_toy_bundle
from textclassify.runtime import load_bundle
from textclassify.runtime.cost import projection, stage_cost
from textclassify.runtime.predict_cli import main as predict_main
from textclassify.train.gate import choose_gate_threshold, expected_skip_loss, gate_curve

LABELS = ["billing", "shipping", "technical"]
PRICE = {"input": 2.0, "output": 8.0}
TEXTS = [t for t, _ in make_tickets(20, seed=31)]


def _bundle(out: Path, tokenizer_json: Path, price: dict | None, gate: float | None = None) -> Path:
    llm = {"provider": "openai-compatible", "model": "fake-unpriced", "base_url": "http://127.0.0.1:9/v1",
           "max_retries": 0, "score_method": "json", "prompt_version": "v1", "price_per_million": price}
    write_toy_bundle(out, tokenizer_json, labels=LABELS, multi_label=False, llm=llm, max_length=32,
                     gate_threshold=gate)
    return out


def test_bundle_usage_equals_the_servers_token_counts(tiny_roberta_dir: str, llm_server: FakeLLMServer,
                                                      tmp_path: Path) -> None:
    """Bundle.usage: requests and tokens are exactly what the server sent; USD at llm.price_per_million."""
    path = _bundle(tmp_path / "b", Path(tiny_roberta_dir) / "tokenizer.json", PRICE)
    with load_bundle(path, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c") as bundle:
        bundle.predict(TEXTS)
        bundle.predict(TEXTS[:5])  # cached: no tokens
        serving = bundle.usage["serving"]
    sent = llm_server.tokens
    assert serving["requests"] == llm_server.requests == len(TEXTS) and serving["cache_hits"] == 5
    assert serving["prompt_tokens"] == sent["prompt_tokens"]
    assert serving["completion_tokens"] == sent["completion_tokens"]
    assert sent["prompt_tokens"] > 0 and serving["total_tokens"] == sum(sent.values())
    want = (sent["prompt_tokens"] * 2.0 + sent["completion_tokens"] * 8.0) / 1_000_000
    assert serving["cost_usd"] == pytest.approx(want, rel=1e-12) and serving["rows"] == len(TEXTS) + 5


def test_unpriced_model_has_no_cost_but_counts_tokens(tiny_roberta_dir: str, llm_server: FakeLLMServer,
                                                     tmp_path: Path) -> None:
    """Without a price (table or override) the cost is None, never a made-up number."""
    path = _bundle(tmp_path / "b", Path(tiny_roberta_dir) / "tokenizer.json", None)
    with load_bundle(path, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c") as bundle:
        bundle.predict(TEXTS[:3])
        serving = bundle.usage["serving"]
    assert serving["cost_usd"] is None and serving["prompt_tokens"] == llm_server.tokens["prompt_tokens"]


def test_fusion_predict_reports_cost_in_summary_and_last_line(tiny_roberta_dir: str, llm_server: FakeLLMServer,
                                                              tmp_path: Path) -> None:
    """fusion-predict: summary.json's cost block and its last stderr line carry the server's token counts."""
    path = _bundle(tmp_path / "b", Path(tiny_roberta_dir) / "tokenizer.json", PRICE, gate=0.5)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(predict_main, ["--bundle", str(path), "--input", str(src), "--output", str(out),
                                               "--llm-base-url", llm_server.base_url,
                                               "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out.csv.summary.json").read_text())
    cost, sent = summary["cost"], llm_server.tokens
    assert cost["requests"] == llm_server.requests and cost["rows"] == len(TEXTS)
    assert cost["llm_skipped_rows"] == len(TEXTS) - llm_server.requests
    assert (cost["prompt_tokens"], cost["completion_tokens"]) == (sent["prompt_tokens"], sent["completion_tokens"])
    last = result.output.strip().splitlines()[-1]
    assert last == (f"LLM cost: {llm_server.requests} requests, 0 cache hits, {cost['llm_skipped_rows']} rows "
                    f"answered without the LLM; {sent['prompt_tokens']:,} prompt + {sent['completion_tokens']:,} "
                    f"completion tokens; ${cost['cost_usd']:.6f}")


def test_projection_per_1000_predictions() -> None:
    """Mean tokens per request times 1,000, and times the gate's LLM share."""
    ref = stage_cost({"requests": 4, "prompt_tokens": 400, "completion_tokens": 40, "total_tokens": 440}, "x",
                     {"input": 1.0, "output": 10.0})
    p = projection(ref, 0.25)
    assert p["tokens_always"] == 110_000 and p["tokens_gated"] == 27_500 and p["llm_calls_gated"] == 250
    assert p["always_llm_usd"] == pytest.approx(1000 * (100 * 1.0 + 10 * 10.0) / 1e6)
    assert p["gated_usd"] == pytest.approx(p["always_llm_usd"] * 0.25)
    assert projection(stage_cost({}, "x"), None)["always_llm_usd"] is None


def _synthetic(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A no-LLM head right mostly where it is confident, and an always-LLM model right more often."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    conf = rng.uniform(0.34, 1.0, n)
    right = rng.uniform(0, 1, n) < conf
    pred = np.where(right, y, (y + 1) % 3)
    no_llm = np.full((n, 3), 0.0)
    no_llm[np.arange(n), pred] = conf
    no_llm[np.arange(n), (pred + 1) % 3] = 1 - conf
    fused = np.full((n, 3), 0.1)
    fused_right = rng.uniform(0, 1, n) < 0.9
    fused[np.arange(n), np.where(fused_right, y, (y + 2) % 3)] = 0.8
    return no_llm, fused, y


def test_threshold_keeps_the_expected_loss_in_budget_and_skips_most_it_can() -> None:
    """The chosen threshold's expected loss (train.gate.expected_skip_loss) is within max_accuracy_loss; the next
    lower candidate would exceed it; a bigger budget skips at least as many rows."""
    no_llm, fused, y = _synthetic()
    gate = choose_gate_threshold(no_llm, fused, y, False, max_accuracy_loss=0.01)
    chosen = gate["chosen_on"]
    assert gate["rule"] == "top_probability" and 0 <= gate["threshold"] <= 1
    assert chosen["expected_accuracy_cost"] <= 0.01 + 1e-12 and 0 < chosen["llm_calls_saved"] < len(y)
    conf = np.max(no_llm, axis=1)
    below = conf[conf < gate["threshold"]].max()
    expected = expected_skip_loss(no_llm, fused, False)
    assert expected[conf >= below].sum() / len(y) > 0.01
    looser = choose_gate_threshold(no_llm, fused, y, False, max_accuracy_loss=1.0)
    assert looser["threshold"] <= below
    strict = choose_gate_threshold(no_llm, fused, y, False, max_accuracy_loss=0.0)
    assert strict["chosen_on"]["expected_accuracy_cost"] == 0.0


def test_expected_loss_is_the_fused_models_view_of_each_skip() -> None:
    """Agreeing rows cost nothing; a disagreeing row costs P(fused answer) - P(no-LLM answer) under the fused
    model; multi-label rows use the probability of the whole label set."""
    no_llm = np.array([[0.9, 0.1, 0.0], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    fused = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.5, 0.4, 0.1]])
    assert expected_skip_loss(no_llm, fused, False) == pytest.approx([0.0, 0.3, 0.1])
    ml_no_llm = np.array([[0.9, 0.2], [0.9, 0.2]])
    ml_fused = np.array([[0.8, 0.1], [0.8, 0.7]])  # row 1: the LLM adds label 1
    loss = expected_skip_loss(ml_no_llm, ml_fused, True, [0.5, 0.5])
    assert loss == pytest.approx([0.0, 0.8 * 0.7 - 0.8 * 0.3])


def test_lucky_rows_do_not_buy_a_lower_threshold() -> None:
    """Rows the no-LLM answer happens to get right where the fused model disagrees (noise on a small held-out set)
    do not offset the rows that need the LLM: the old raw count would skip all 40 rows here at zero measured loss;
    the expected loss stops before the disagreeing rows."""
    n = 40
    conf = np.linspace(0.99, 0.6, n)
    no_llm = np.stack([conf, 1 - conf, np.zeros(n)], axis=1)
    fused = no_llm.copy()
    y = np.zeros(n, dtype=int)
    for i in range(30, 40):  # the fused model prefers class 1 on the ten least confident rows
        fused[i] = [0.2, 0.8, 0.0]
    y[[30, 31, 32, 33, 34]] = 1  # the LLM is right on five of them and wrong on the other five: raw loss 0
    raw_all = choose_gate_threshold(no_llm, fused, y, False, max_accuracy_loss=1.0)["chosen_on"]
    assert raw_all["llm_calls_saved"] == n and raw_all["accuracy_cost"] == 0.0
    gate = choose_gate_threshold(no_llm, fused, y, False, max_accuracy_loss=0.005)
    assert gate["chosen_on"]["llm_calls_saved"] == 30 and gate["threshold"] == pytest.approx(conf[29])


def test_llm_fraction_target_and_gate_off() -> None:
    """gate.llm_fraction sends at most that share to the LLM; gate off stores no threshold."""
    no_llm, fused, y = _synthetic()
    gate = choose_gate_threshold(no_llm, fused, y, False, llm_fraction=0.3)
    assert gate["chosen_on"]["llm_fraction"] <= 0.3 + 1e-9 and gate["target"] == {"llm_fraction": 0.3}
    off = choose_gate_threshold(no_llm, fused, y, False, enabled=False)
    assert off["threshold"] is None and off["chosen_on"]["llm_fraction"] == 1.0
    curve = gate_curve(no_llm, fused, y, False)
    assert curve[0]["llm_fraction"] == 1.0 and curve[-1]["llm_fraction"] == 0.0


def test_multi_label_rule_is_the_label_distance() -> None:
    """Multi-label rows are judged by their label nearest its threshold."""
    p = np.array([[0.95, 0.02, 0.9], [0.55, 0.1, 0.1]])
    y = np.array([[1, 0, 1], [0, 0, 0]])
    fused = np.array([[0.95, 0.02, 0.9], [0.1, 0.1, 0.1]])  # the LLM fixes row 1, whose label 0 sits at 0.55
    gate = choose_gate_threshold(p, fused, y, True, [0.5, 0.5, 0.5], max_accuracy_loss=0.0)
    assert gate["rule"] == "label_distance" and gate["threshold"] == pytest.approx(0.4)


def test_gate_off_in_a_dict_and_in_yaml(tmp_path: Path) -> None:
    """`gate: off` disables the cascade, from a config dict and from a fusion-train YAML file alike."""
    from textclassify.train.config import validate_config
    from textclassify.train.yaml_config import load_config

    assert validate_config({"gate": "off"})["gate"]["enabled"] is False
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train_path: x.csv\nmodels:\n  llm:\n    provider: openai\ngate: off\n")
    assert load_config(path).classifier["gate"] == {"enabled": False, "max_accuracy_loss": 0.005, "llm_fraction": None}
    path.write_text("data:\n  train_path: x.csv\ngate:\n  llm_fraction: 0.4\nmodels:\n  llm:\n    price_per_million: "
                    "{input: 1, output: 2}\n")
    cfg = load_config(path).classifier
    assert cfg["gate"]["llm_fraction"] == 0.4 and cfg["llm"]["price_per_million"] == {"input": 1, "output": 2}
