"""runtime.recheck: margins, the margin-change bound, and the int8 bundle answering close calls with fp32."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from tests.support.toy_bundle import build_encoder, read_manifest, toy_weights, write_manifest, write_toy_bundle
from textclassify.runtime import constants as K
from textclassify.runtime import load_bundle
from textclassify.runtime.decoding import logits_to_probabilities
from textclassify.runtime.errors import BundleError, ConfigError
from textclassify.runtime.gate import confidence, skips_llm
from textclassify.runtime.recheck import decision_margins, margin_change, rows_near_gate, rows_to_recheck

LABELS = ["billing", "shipping", "technical"]
TEXTS = [t for t, _ in make_tickets(40, seed=5)]


def test_margins_multi_class_and_multi_label():
    """Top-two gap for multi-class; nearest distance of a logit to its threshold's logit for multi-label."""
    logits = np.array([[2.0, 1.5, -1.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(decision_margins(logits, False), [0.5, 3.0])
    # thresholds 0.5 -> logit 0; 0.731... -> logit 1
    np.testing.assert_allclose(decision_margins(logits, True, [0.5, 1 / (1 + np.exp(-1.0)), 0.5]), [0.5, 0.0],
                               atol=1e-9)
    assert decision_margins(np.zeros((0, 3)), False).shape == (0,)
    assert list(rows_to_recheck(logits, 1.0, False)) == [0]


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_flipped_decision_is_always_within_the_margin_change(multi_label):
    """Whenever a perturbation changes a row's decision, that row's margin (either side) is below the change."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        ref = rng.normal(size=(64, 4))
        other = ref + rng.normal(scale=0.3, size=ref.shape)
        change = margin_change(ref, other, multi_label)
        if multi_label:
            flipped = ((ref >= 0) != (other >= 0)).any(axis=1)
        else:
            flipped = ref.argmax(1) != other.argmax(1)
        assert (decision_margins(other, multi_label)[flipped] <= change).all()
        assert (decision_margins(ref, multi_label)[flipped] <= change).all()


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_flipped_gate_decision_is_always_near_the_gate(multi_label):
    """Whenever a perturbation moves a row across the gate threshold, rows_near_gate lists that row, judged from
    either side of the change."""
    rng = np.random.default_rng(1)
    thresholds = [0.3, 0.5, 0.7, 0.5] if multi_label else None
    for _ in range(200):
        ref = rng.normal(scale=2.0, size=(64, 4))
        other = ref + rng.normal(scale=0.3, size=ref.shape)
        change = margin_change(ref, other, multi_label)
        gate = float(rng.uniform(0.05, 0.45) if multi_label else rng.uniform(0.3, 0.95))
        skip = [skips_llm(confidence(logits_to_probabilities(z, multi_label), multi_label, thresholds), gate)
                for z in (ref, other)]
        flipped = np.flatnonzero(skip[0] != skip[1])
        for z in (ref, other):
            assert set(flipped) <= set(rows_near_gate(z, gate, change, multi_label, thresholds))
    assert len(rows_near_gate(ref, None, 1e9, multi_label, thresholds)) == 0


def _int8_toy(tmp_path: Path, tokenizer_json: Path, multi_label: bool, margin: float | None, llm: dict,
              margin_ml: float | None = None) -> Path:
    """A toy bundle whose encoder.int8.onnx is a different graph, so rechecked rows are visible in the output."""
    out = tmp_path / ("ml" if multi_label else "mc")
    write_toy_bundle(out, tokenizer_json, labels=LABELS, multi_label=multi_label, llm=llm, max_length=32,
                     extra_variants=("int8",), thresholds=[0.3, 0.5, 0.7] if multi_label else None)
    weights = toy_weights(_vocab_size(tokenizer_json), len(LABELS), seed=9)
    onnx.save(build_encoder(weights), str(out / K.ENCODER_INT8_FILE))
    manifest = read_manifest(out)
    int8 = {} if margin is None else {"recheck_margin": margin}
    int8.update({} if margin_ml is None else {"recheck_margin_ml": margin_ml})
    manifest["parity"] = {"int8": int8} if int8 else {}
    write_manifest(out, manifest)
    return out


def _vocab_size(tokenizer_json: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)


@pytest.mark.parametrize("multi_label", [False, True])
def test_int8_rows_within_the_margin_come_from_fp32(tiny_roberta_dir, llm_server: FakeLLMServer, tmp_path,
                                                     multi_label):
    """Rechecked rows carry fp32's answer, the others int8's; margin 0 rechecks nothing, a huge one everything."""
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": llm_server.base_url, "temperature": 0.0,
           "max_concurrency": 8, "timeout_s": 5.0, "max_retries": 0, "score_method": "json", "prompt_version": "v1"}
    tokenizer_json = Path(tiny_roberta_dir) / "tokenizer.json"
    kw = {"cache_dir": tmp_path / "cache", "providers": "cpu"}
    probs = {}
    for name, variant, recheck in (("fp32", "fp32", True), ("int8", "int8", False)):
        path = _int8_toy(tmp_path / name, tokenizer_json, multi_label, 0.5, llm)
        with load_bundle(path, variant=variant, int8_recheck=recheck, **kw) as bundle:
            result = bundle.predict(TEXTS)
            assert result.metadata["rechecked"] == [] and bundle.int8_recheck_margin is None
            probs[name] = result.probabilities
    assert np.abs(probs["fp32"] - probs["int8"]).max() > 0.05  # the two graphs really differ

    thresholds = [0.3, 0.5, 0.7] if multi_label else None
    # logits up to a per-row constant (softmax) or exactly (sigmoid): the same decision margins
    int8_logits = np.log(probs["int8"] / (1 - probs["int8"])) if multi_label else np.log(probs["int8"])
    assert 0 < len(rows_to_recheck(int8_logits, 0.5, multi_label, thresholds)) < len(TEXTS)
    for margin, expected_count in ((0.0, 0), (0.5, None), (1e9, len(TEXTS))):
        path = _int8_toy(tmp_path / f"m{margin}", tokenizer_json, multi_label, margin, llm)
        with load_bundle(path, variant="int8", **kw) as bundle:
            assert bundle.int8_recheck_margin == margin
            result = bundle.predict(TEXTS)
        rechecked = result.metadata["rechecked"]
        assert rechecked == list(rows_to_recheck(int8_logits, margin, multi_label, thresholds))
        assert expected_count is None or len(rechecked) == expected_count
        want = probs["int8"].copy()
        want[rechecked] = probs["fp32"][rechecked]
        np.testing.assert_allclose(result.probabilities, want, atol=1e-5)


def test_rows_near_the_gate_are_settled_by_fp32_before_the_gate(tiny_roberta_dir, tmp_path):
    """With a gate, the rows rechecked before it are those near a flip of their answer or of the gate; a huge
    margin rechecks every row, so the rows skipping the LLM are exactly the fp32 bundle's."""
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0,
           "timeout_s": 1.0}
    tokenizer_json = Path(tiny_roberta_dir) / "tokenizer.json"
    kw = {"cache_dir": tmp_path / "cache", "providers": "cpu", "on_llm_error": "ml_only"}
    base = _int8_toy(tmp_path / "base", tokenizer_json, False, 0.0, llm, margin_ml=0.0)
    with load_bundle(base, variant="int8", int8_recheck=False, llm_gate=0.0, **kw) as bundle:
        int8_no_llm = np.log(bundle.predict(TEXTS).probabilities)  # every row skips: the no-LLM answers
    with load_bundle(base, variant="fp32", llm_gate=0.0, **kw) as bundle:
        fp32_conf = bundle.predict(TEXTS).probabilities.max(1)
    gate = float(np.median(np.exp(int8_no_llm).max(1)))
    near = rows_near_gate(int8_no_llm, gate, 0.2, False)
    assert 0 < len(near) < len(TEXTS)
    path = _int8_toy(tmp_path / "near", tokenizer_json, False, 0.0, llm, margin_ml=0.2)
    with load_bundle(path, variant="int8", llm_gate=gate, **kw) as bundle:
        before_gate = bundle.predict(TEXTS).metadata["rechecked"]
    assert before_gate == sorted(set(near) | set(rows_to_recheck(int8_no_llm, 0.2, False)))
    path = _int8_toy(tmp_path / "all", tokenizer_json, False, 0.0, llm, margin_ml=1e9)
    with load_bundle(path, variant="int8", llm_gate=gate, **kw) as bundle:
        result = bundle.predict(TEXTS)
    assert result.metadata["llm_skipped"] == list(np.flatnonzero(fp32_conf >= gate))


def _spinning(model) -> str | None:
    try:
        return model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # noqa: BLE001 -- ORT raises a plain error for an unset key: the default, spinning
        return None


def test_int8_and_its_recheck_graph_open_without_spinning_threads(tiny_roberta_dir, tmp_path):
    """The int8/fp32 pair takes turns on the cores, so neither spins; a single graph keeps ORT's default.
    The calibrator runs on one thread (no intra-op pool of its own)."""
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1",
           "score_method": "json", "prompt_version": "v1"}
    path = _int8_toy(tmp_path / "b", Path(tiny_roberta_dir) / "tokenizer.json", False, 0.5, llm)
    kw = {"cache_dir": tmp_path / "cache", "providers": "cpu", "intra_op_num_threads": 2}
    with load_bundle(path, variant="int8", **kw) as bundle:
        assert [_spinning(bundle._model), _spinning(bundle._recheck_model)] == ["0", "0"]
        assert bundle._graphs["calibrator"].session.get_session_options().intra_op_num_threads == 1
    for variant, recheck in (("int8", False), ("fp32", True)):
        with load_bundle(path, variant=variant, int8_recheck=recheck, **kw) as bundle:
            assert _spinning(bundle._model) is None and bundle._recheck_model is None
            assert bundle._model.session.get_session_options().intra_op_num_threads == 2


def test_rows_without_llm_scores_use_the_ml_margin(tiny_roberta_dir, tmp_path):
    """Degraded rows (answered without the LLM) are rechecked against recheck_margin_ml, not the fused one."""
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0,
           "timeout_s": 1.0}
    tokenizer_json = Path(tiny_roberta_dir) / "tokenizer.json"
    for fused, ml, expected in ((1e9, 0.0, []), (0.0, 1e9, list(range(len(TEXTS))))):
        path = _int8_toy(tmp_path / f"{fused}-{ml}", tokenizer_json, False, fused, llm, margin_ml=ml)
        with load_bundle(path, variant="int8", on_llm_error="ml_only", cache_dir=tmp_path / "cache") as bundle:
            result = bundle.predict(TEXTS)
        assert result.metadata["degraded"] == list(range(len(TEXTS)))  # nothing listens on port 9
        assert result.metadata["rechecked"] == expected


def test_a_bad_recheck_margin_and_a_bad_flag_are_refused(tiny_roberta_dir, tmp_path):
    """A negative or non-numeric recheck margin is a BundleError; int8_recheck must be a bool."""
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1"}
    tokenizer_json = Path(tiny_roberta_dir) / "tokenizer.json"
    for bad in (-1.0, "0.3"):
        path = _int8_toy(tmp_path / str(bad), tokenizer_json, False, bad, llm)
        with pytest.raises(BundleError, match=r"'parity\.int8\.recheck_margin' must be a finite number >= 0"):
            load_bundle(path, variant="int8", cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="'int8_recheck' must be True or False"):
        load_bundle(path, variant="int8", int8_recheck="yes", cache_dir=tmp_path / "cache")
