"""The cascade at serving time: the per-row gate, llm_gate, the no-LLM head, and the format-2 manifest checks."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from tests.support.toy_bundle import (
    ToyWeights,
    read_manifest,
    toy_no_llm,
    toy_reference,
    write_manifest,
    write_toy_bundle,
)
from textclassify.runtime import load_bundle
from textclassify.runtime.decoding import logits_to_probabilities
from textclassify.runtime.errors import BundleError, ConfigError, LLMError
from textclassify.runtime.gate import confidence
from textclassify.runtime.llm import LLMScorer
from textclassify.runtime.tokenization import BundleTokenizer

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1", "temperature": 0.0,
       "max_concurrency": 8, "timeout_s": 5.0, "max_retries": 0, "score_method": "json", "prompt_version": "v1"}
TEXTS = [t for t, _ in make_tickets(30, seed=21)]


def _write(out: Path, tokenizer_json: Path, multi_label: bool = False, gate: float | None = None) -> ToyWeights:
    return write_toy_bundle(out, tokenizer_json, labels=LABELS, multi_label=multi_label, llm=LLM, max_length=32,
                            thresholds=[0.3, 0.5, 0.7] if multi_label else None, gate_threshold=gate)


@pytest.fixture(scope="module")
def tokenizer_json(tiny_roberta_dir: str) -> Path:
    return Path(tiny_roberta_dir) / "tokenizer.json"


def _no_llm_and_fused(out: Path, w: ToyWeights, texts: list[str], raw: np.ndarray,
                      multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    tok = BundleTokenizer(Tokenizer.from_file(str(out / "tokenizer.json")), 32, 1)
    ids, mask = tok(texts)
    _, fused = toy_reference(w, ids, mask, raw)
    return (logits_to_probabilities(toy_no_llm(w, ids, mask), multi_label),
            logits_to_probabilities(fused, multi_label))


def _raw(server: FakeLLMServer, texts: list[str], multi_label: bool, cache: Path) -> np.ndarray:
    with LLMScorer(server.settings(score_method="json", max_retries=0), LABELS, multi_label,
                   cache_dir=cache) as scorer:
        return scorer.score(texts)


def _median_confidence(out: Path, w: ToyWeights, multi_label: bool) -> float:
    no_llm, _ = _no_llm_and_fused(out, w, TEXTS, np.full((len(TEXTS), 3), 1 / 3, np.float32), multi_label)
    thr = [0.3, 0.5, 0.7] if multi_label else None
    return float(np.median(confidence(no_llm, multi_label, thr)))


@pytest.mark.parametrize("multi_label", [False, True])
def test_gated_rows_send_no_request(tokenizer_json: Path, llm_server: FakeLLMServer, tmp_path: Path,
                                    multi_label: bool) -> None:
    """Rows whose no-LLM confidence reaches the manifest's threshold skip the LLM: the fake server counts
    exactly the others, the skipped rows carry the no-LLM answer and the rest the fused one."""
    probe = tmp_path / "probe"
    w = _write(probe, tokenizer_json, multi_label)
    threshold = _median_confidence(probe, w, multi_label)
    out = tmp_path / "gated"
    w = _write(out, tokenizer_json, multi_label, gate=threshold)
    with load_bundle(out, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c") as bundle:
        assert bundle.gate_threshold == threshold
        result = bundle.predict(TEXTS)
    thr = [0.3, 0.5, 0.7] if multi_label else None
    raw_all = _raw(llm_server, TEXTS, multi_label, tmp_path / "ref")
    no_llm, fused = _no_llm_and_fused(out, w, TEXTS, raw_all, multi_label)
    conf = confidence(no_llm, multi_label, thr)
    skipped = [i for i in range(len(TEXTS)) if conf[i] >= threshold]
    assert 0 < len(skipped) < len(TEXTS)
    assert result.metadata["llm_skipped"] == skipped
    asked = len(TEXTS) - len(skipped)
    assert result.metadata["llm_usage"]["requests"] == asked
    assert llm_server.requests == asked + len(TEXTS)  # the gated bundle's, then the reference scorer's
    rest = [i for i in range(len(TEXTS)) if i not in skipped]
    np.testing.assert_allclose(result.probabilities[skipped], no_llm[skipped], atol=1e-5)
    np.testing.assert_allclose(result.probabilities[rest], fused[rest], atol=1e-5)


def test_an_all_gated_batch_sends_nothing(tokenizer_json: Path, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """Threshold 0 gates every row: no LLM request at all, and every row answered without the LLM."""
    out = tmp_path / "b"
    w = _write(out, tokenizer_json, gate=0.0)
    with load_bundle(out, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c") as bundle:
        result = bundle.predict(TEXTS)
        assert bundle.llm_usage["requests"] == 0
    assert llm_server.requests == 0 and result.metadata["llm_usage"] == {}
    assert result.metadata["llm_skipped"] == list(range(len(TEXTS))) and result.metadata["degraded"] == []
    no_llm, _ = _no_llm_and_fused(out, w, TEXTS, np.zeros((len(TEXTS), 3), np.float32), False)
    np.testing.assert_allclose(result.probabilities, no_llm, atol=1e-5)


def test_gate_off_gives_exactly_the_always_llm_answers(tokenizer_json: Path, llm_server: FakeLLMServer,
                                                      tmp_path: Path) -> None:
    """llm_gate="off" on a gated bundle equals, bit for bit, the same bundle exported without a gate."""
    gated, plain = tmp_path / "gated", tmp_path / "plain"
    _write(gated, tokenizer_json, gate=0.0)
    _write(plain, tokenizer_json, gate=None)
    with load_bundle(gated, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c", llm_gate="off") as b:
        off = b.predict(TEXTS)
        assert b.gate_threshold is None
    with load_bundle(plain, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c") as b:
        always = b.predict(TEXTS)
    np.testing.assert_array_equal(off.probabilities, always.probabilities)
    assert off.predictions == always.predictions and off.metadata["llm_skipped"] == []
    assert off.metadata["llm_usage"]["requests"] == len(TEXTS)  # the second bundle answered from the cache


def test_llm_gate_number_overrides_and_bad_values_are_refused(tokenizer_json: Path, llm_server: FakeLLMServer,
                                                              tmp_path: Path) -> None:
    """A number replaces the manifest's threshold (0.0: everything gated); anything else is a ConfigError."""
    out = tmp_path / "b"
    _write(out, tokenizer_json, gate=None)
    with load_bundle(out, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c", llm_gate=0.0) as b:
        assert b.predict(TEXTS[:5]).metadata["llm_skipped"] == [0, 1, 2, 3, 4]
    assert llm_server.requests == 0
    for bad in (1.5, -0.1, "always", True, None):
        with pytest.raises(ConfigError, match=r"^'llm_gate' must be 'manifest', 'off' or a threshold in \[0, 1\]"):
            load_bundle(out, llm_gate=bad)


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_ml_only_answers_with_the_no_llm_head(tokenizer_json: Path, tmp_path: Path) -> None:
    """With the LLM down, ml_only serves the fusion head's llm_present=0 answer, not the raw encoder logits."""
    out = tmp_path / "b"
    w = _write(out, tokenizer_json)
    with load_bundle(out, llm_base_url=_dead_url(), cache_dir=tmp_path / "c", on_llm_error="ml_only") as b:
        result = b.predict(TEXTS)
    tok = BundleTokenizer(Tokenizer.from_file(str(out / "tokenizer.json")), 32, 1)
    ids, mask = tok(TEXTS)
    head = logits_to_probabilities(toy_no_llm(w, ids, mask), False)
    encoder_alone = logits_to_probabilities(toy_reference(w, ids, mask, np.ones((len(TEXTS), 3)))[0], False)
    np.testing.assert_allclose(result.probabilities, head, atol=1e-5)
    assert np.abs(result.probabilities - encoder_alone).max() > 0.05
    assert result.metadata["degraded"] == list(range(len(TEXTS)))


def test_outage_with_the_gate_on(tokenizer_json: Path, tmp_path: Path) -> None:
    """LLM down, gate on: gated rows are answered as usual; the others follow on_llm_error."""
    probe = tmp_path / "probe"
    w = _write(probe, tokenizer_json)
    threshold = _median_confidence(probe, w, False)
    out = tmp_path / "b"
    _write(out, tokenizer_json, gate=threshold)
    with load_bundle(out, llm_base_url=_dead_url(), cache_dir=tmp_path / "c", on_llm_error="ml_only") as b:
        result = b.predict(TEXTS)
    skipped = result.metadata["llm_skipped"]
    assert 0 < len(skipped) < len(TEXTS)
    assert result.metadata["degraded"] == [i for i in range(len(TEXTS)) if i not in skipped]
    with load_bundle(out, llm_base_url=_dead_url(), cache_dir=tmp_path / "c") as b:
        with pytest.raises(LLMError):
            b.predict(TEXTS)
        gated_only = [TEXTS[i] for i in skipped]
        assert b.predict(gated_only).metadata["llm_skipped"] == list(range(len(gated_only)))


@pytest.fixture
def toy(tokenizer_json: Path, tmp_path: Path) -> Path:
    out = tmp_path / "toy"
    _write(out, tokenizer_json, gate=0.9)
    return out


@pytest.fixture
def no_sessions(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    import onnxruntime

    opened: list[object] = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: opened.append(a))
    return opened


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["gate"].update(threshold=1.5),
     "manifest.json: 'gate.threshold' must be a number in [0, 1] or null (got 1.5)."),
    (lambda m: m["gate"].update(threshold=-0.2),
     "manifest.json: 'gate.threshold' must be a number in [0, 1] or null (got -0.2)."),
    (lambda m: m["pipeline"][2].update(file="missing.onnx"),
     "missing.onnx (pipeline[2].file) is not listed in manifest.json 'files'; refusing an unverified file."),
    (lambda m: m["pipeline"][2]["inputs"].pop("llm_present"),
     "manifest.json: 'pipeline[2].inputs' of the fusion graph must read 'llm.present' and the calibrator's output."),
    (lambda m: m["pipeline"][2]["inputs"]["llm_present"].update(**{"from": "encoder.nothing"}),
     "manifest.json: 'pipeline[2].inputs.llm_present.from' 'encoder.nothing' is not something this step can read "
     "(a fusion reads earlier graphs outputs and llm.present)."),
    (lambda m: m.update(pipeline=[m["pipeline"][0], m["pipeline"][2], m["pipeline"][1]]),
     "manifest.json: 'pipeline[1].inputs.llm_scores.from' 'calibrator.llm_scores' is not something this step can "
     "read (a fusion reads earlier graphs outputs and llm.present)."),
    (lambda m: m["pipeline"][0].update(file="fusion.onnx"),
     "manifest.json: 'variants.fp32' ('encoder.onnx') must be the file of the pipeline's 'encoder' graph "
     "(got 'fusion.onnx')."),
    (lambda m: m["pipeline"][2]["outputs"].update(fused_logits={"dtype": "float32", "shape": ["batch", 4]}),
     "manifest.json: 'pipeline[2].outputs.fused_logits.shape' must be ['batch', 3] (got ['batch', 4])."),
])
def test_bad_pipeline_or_gate_refused_before_any_session(toy: Path, no_sessions: list[object], change,
                                                        message: str) -> None:
    """Each manifest fault is a BundleError naming the file and the field; ONNX Runtime opens nothing."""
    m = read_manifest(toy)
    change(m)
    write_manifest(toy, m)
    with pytest.raises(BundleError) as e:
        load_bundle(toy, cache_dir=None)
    assert str(e.value) == message
    assert no_sessions == []


def test_graph_io_differing_from_the_manifest_refused_before_any_session(toy: Path, no_sessions: list[object]) -> None:
    """fusion.onnx whose inputs are not the manifest's (it is the encoder graph) is refused by name and field."""
    shutil.copyfile(toy / "encoder.onnx", toy / "fusion.onnx")
    write_manifest(toy, read_manifest(toy))
    with pytest.raises(BundleError) as e:
        load_bundle(toy, cache_dir=None)
    assert str(e.value) == ("fusion.onnx: the graph's inputs ['attention_mask', 'input_ids'] differ from "
                            "manifest.json 'pipeline[2].inputs' ['llm_present', 'llm_scores', 'ml_logits'].")
    assert no_sessions == []


def test_format_1_bundle_refused_with_the_reexport_command(toy: Path, no_sessions: list[object]) -> None:
    """A round-1 bundle (format_version 1) is refused; the message names the command that re-exports it."""
    m = read_manifest(toy)
    m["format_version"] = 1
    write_manifest(toy, m)
    with pytest.raises(BundleError) as e:
        load_bundle(toy, cache_dir=None)
    assert "fusion-export --model MODEL_DIR --output BUNDLE_DIR" in str(e.value)
    assert str(e.value).startswith("manifest.json: format_version 1 is an older bundle format")
    assert no_sessions == []
