"""runtime.bundle: load_bundle verifies, then predict tokenises, scores, calibrates and runs the model."""
from __future__ import annotations

import shutil
import socket
import threading
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
from textclassify.runtime.errors import BundleError, ConfigError, DataError, LLMError
from textclassify.runtime.llm import LLMScorer
from textclassify.runtime.tokenization import BundleTokenizer

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1", "temperature": 0.0,
       "max_concurrency": 8, "timeout_s": 5.0, "max_retries": 0, "score_method": "json", "prompt_version": "v1"}
ROWS = make_tickets(24, seed=11)
TEXTS = [t for t, _ in ROWS] + ["hi", "refund " * 80]  # two extra lengths: very short, truncated
TARGETS = [labs[0] for _, labs in ROWS] + ["billing", "billing"]


@pytest.fixture(scope="module")
def toy(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ToyWeights]:
    out = tmp_path_factory.mktemp("toy") / "bundle"
    weights = write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False,
                               llm=LLM, max_length=32, extra_variants=("int8",))
    return out, weights


@pytest.fixture(scope="module")
def toy_multi(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ToyWeights]:
    out = tmp_path_factory.mktemp("toy_multi") / "bundle"
    weights = write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=True,
                               llm=LLM, max_length=32, thresholds=[0.3, 0.5, 0.7], seed=3)
    return out, weights


def _free_port_url() -> str:
    """A loopback URL nothing listens on (port bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _expected(bundle_dir: Path, weights: ToyWeights, texts: list[str], raw: np.ndarray,
              multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Reference probabilities (fused) and the fusion head's no-LLM probabilities, in input order."""
    tok = BundleTokenizer(Tokenizer.from_file(str(bundle_dir / "tokenizer.json")), 32, 1)
    ids, mask = tok(texts)
    _, fused = toy_reference(weights, ids, mask, raw)
    no_llm = toy_no_llm(weights, ids, mask)
    return logits_to_probabilities(fused, multi_label), logits_to_probabilities(no_llm, multi_label)


def _raw_scores(server: FakeLLMServer, texts: list[str], multi_label: bool, cache: Path) -> np.ndarray:
    with LLMScorer(server.settings(score_method="json", max_retries=0), LABELS, multi_label,
                   cache_dir=cache) as scorer:
        return scorer.score(texts)


def test_predict_matches_reference_and_restores_order(toy, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """Length-sorted batches of 5 give the numpy reference computed in input order, to 1e-5."""
    path, weights = toy
    with load_bundle(path, llm_base_url=llm_server.base_url, cache_dir=tmp_path, batch_size=5) as bundle:
        result = bundle.predict(TEXTS)
    raw = _raw_scores(llm_server, TEXTS, False, tmp_path)
    want, _ = _expected(path, weights, TEXTS, raw, False)
    np.testing.assert_allclose(result.probabilities, want, atol=1e-5)
    assert result.predictions == [LABELS[i] for i in want.argmax(axis=1)]
    assert result.labels == LABELS and result.probabilities.shape == (len(TEXTS), 3)
    lengths = [len(r) for r in BundleTokenizer(Tokenizer.from_file(str(path / "tokenizer.json")), 32, 1)
               .encode(TEXTS)]
    assert lengths != sorted(lengths), "the texts must not already be in length order"


def test_metadata_and_metrics(toy, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """metadata names providers, variant, LLM usage, no degraded rows, and metrics when labels are given."""
    with load_bundle(toy[0], llm_base_url=llm_server.base_url, cache_dir=tmp_path) as bundle:
        result = bundle.predict(TEXTS, labels=TARGETS)
        assert bundle.providers == ["CPUExecutionProvider"] and bundle.variant == "fp32"
    md = result.metadata
    assert md["providers"] == ["CPUExecutionProvider"] and md["variant"] == "fp32"
    assert md["degraded"] == [] and md["degraded_reasons"] == {}
    assert md["llm_usage"]["requests"] == len(set(TEXTS)) == llm_server.requests
    correct = sum(p == t for p, t in zip(result.predictions, TARGETS))
    assert md["metrics"]["n"] == len(TEXTS)
    assert md["metrics"]["accuracy"] == pytest.approx(correct / len(TEXTS))


def test_second_predict_served_from_cache(toy, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """The same texts again send no LLM request (same cache key as the scorer)."""
    with load_bundle(toy[0], llm_base_url=llm_server.base_url, cache_dir=tmp_path) as bundle:
        first = bundle.predict(TEXTS[:6])
        again = bundle.predict(TEXTS[:6])
        assert bundle.llm_usage["requests"] == 6 and bundle.llm_usage["cache_hits"] == 6
    np.testing.assert_array_equal(again.probabilities, first.probabilities)
    assert first.metadata["llm_usage"]["requests"] == 6 and again.metadata["llm_usage"]["requests"] == 0
    assert again.metadata["llm_usage"]["cache_hits"] == 6
    assert llm_server.requests == 6


@pytest.mark.parametrize(("texts", "message"), [
    ("one text", "texts: expected a list of strings, got a single str; pass [text] instead."),
    (["a", None, "c"], "texts[1]: expected a string, got None (NoneType)."),
    (("a", "b", 3), "texts[2]: expected a string, got 3 (int)."),
    (None, "texts: expected a list of strings, got None."),
    (5, "texts: expected a list of strings, got int."),
])
def test_input_validation(toy, llm_server: FakeLLMServer, tmp_path: Path, texts, message: str) -> None:
    """Bad input is a DataError naming the index, raised before any LLM request."""
    with load_bundle(toy[0], llm_base_url=llm_server.base_url, cache_dir=tmp_path) as bundle:
        with pytest.raises(DataError) as e:
            bundle.predict(texts)
        with pytest.raises(DataError):
            bundle.predict_proba(texts)
    assert str(e.value) == message and llm_server.requests == 0


def test_label_validation(toy, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """labels of the wrong length or with an unknown name are DataErrors, before any LLM request."""
    with load_bundle(toy[0], llm_base_url=llm_server.base_url, cache_dir=tmp_path) as bundle:
        with pytest.raises(DataError, match=r"^labels: 1 labels for 2 texts; they must match\.$"):
            bundle.predict(["a", "b"], labels=["billing"])
        with pytest.raises(DataError, match=r"^labels\[1\]: unknown label 'refunds'"):
            bundle.predict(["a", "b"], labels=["billing", "refunds"])
    assert llm_server.requests == 0


def test_empty_list(toy, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """An empty list gives an empty result with probabilities of shape (0, C) and no LLM request."""
    with load_bundle(toy[0], llm_base_url=llm_server.base_url, cache_dir=tmp_path) as bundle:
        result = bundle.predict([])
        assert bundle.predict_proba(()).shape == (0, 3)
    assert result.predictions == [] and result.probabilities.shape == (0, 3) and len(result) == 0
    assert llm_server.requests == 0


def test_batch_size_does_not_change_answers(toy, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """batch_size 1 and 64 (one padded batch) agree to float rounding."""
    with load_bundle(toy[0], llm_base_url=llm_server.base_url, cache_dir=tmp_path, batch_size=1) as b1, \
            load_bundle(toy[0], llm_base_url=llm_server.base_url, cache_dir=tmp_path, batch_size=64) as b64:
        np.testing.assert_allclose(b1.predict_proba(TEXTS), b64.predict_proba(TEXTS), atol=1e-6)


def test_ml_only_with_llm_down(toy, tmp_path: Path) -> None:
    """With nothing listening, ml_only answers every row with the head's no-LLM path and flags each as degraded."""
    path, weights = toy
    with load_bundle(path, llm_base_url=_free_port_url(), cache_dir=tmp_path, on_llm_error="ml_only") as bundle:
        result = bundle.predict(TEXTS[:7])
    _, want_ml = _expected(path, weights, TEXTS[:7], np.full((7, 3), 1 / 3, np.float32), False)
    np.testing.assert_allclose(result.probabilities, want_ml, atol=1e-5)
    assert result.metadata["degraded"] == list(range(7))
    assert set(result.metadata["degraded_reasons"]) == set(range(7))
    assert "connection failed" in result.metadata["degraded_reasons"][3]


def test_ml_only_degrades_only_failed_rows(toy, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """One text whose LLM call fails (HTTP 500, no retries) is degraded; the others are fused."""
    path, weights = toy
    texts = TEXTS[:6]
    raw = _raw_scores(llm_server, texts, False, tmp_path / "ref")
    llm_server.inject("500", times=5, text=texts[2])
    with load_bundle(path, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c",
                     on_llm_error="ml_only") as bundle:
        result = bundle.predict(texts)
    want_fused, want_ml = _expected(path, weights, texts, raw, False)
    assert result.metadata["degraded"] == [2]
    assert "status 500" in result.metadata["degraded_reasons"][2]
    np.testing.assert_allclose(result.probabilities[[0, 1, 3, 4, 5]], want_fused[[0, 1, 3, 4, 5]], atol=1e-5)
    np.testing.assert_allclose(result.probabilities[2], want_ml[2], atol=1e-5)


def test_raise_with_llm_down(toy, tmp_path: Path) -> None:
    """With on_llm_error='raise' an unreachable LLM is an LLMError that says how to degrade instead."""
    with load_bundle(toy[0], llm_base_url=_free_port_url(), cache_dir=tmp_path) as bundle:
        with pytest.raises(LLMError) as e:
            bundle.predict(["my card was charged twice"])
    assert e.value.text_index == 0 and e.value.provider == "openai-compatible" and e.value.model == "fake"
    assert "connection failed" in str(e.value)
    assert str(e.value).endswith("load it with on_llm_error='ml_only' to answer without the LLM (the no-LLM head) "
                                 "when the LLM cannot be reached.")


def test_eight_threads_equal_sequential(toy, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """predict from 8 threads at once on one bundle gives exactly the sequential answers."""
    chunks = [TEXTS[i::8] for i in range(8)]
    with load_bundle(toy[0], llm_base_url=llm_server.base_url, cache_dir=tmp_path, batch_size=3) as bundle:
        sequential = [bundle.predict(c).probabilities for c in chunks]
    results: list[np.ndarray | BaseException | None] = [None] * 8
    barrier = threading.Barrier(8)
    with load_bundle(toy[0], llm_base_url=llm_server.base_url, cache_dir=tmp_path / "fresh", batch_size=3) as bundle:
        def work(i: int) -> None:
            try:
                barrier.wait()
                for _ in range(3):
                    results[i] = bundle.predict(chunks[i]).probabilities
            except BaseException as e:  # noqa: BLE001 -- surfaced by the assertion below
                results[i] = e
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for got, want in zip(results, sequential):
        assert isinstance(got, np.ndarray), got
        np.testing.assert_array_equal(got, want)


def test_multi_label_thresholds(toy_multi, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """Multi-label: sigmoid probabilities; a label is predicted where it reaches its manifest threshold."""
    path, weights = toy_multi
    texts = [t for t, _ in make_tickets(12, seed=4, multi_label=True)]
    with load_bundle(path, llm_base_url=llm_server.base_url, cache_dir=tmp_path) as bundle:
        result = bundle.predict(texts)
        assert bundle.multi_label and bundle.thresholds == [0.3, 0.5, 0.7]
    raw = _raw_scores(llm_server, texts, True, tmp_path)
    want, _ = _expected(path, weights, texts, raw, True)
    np.testing.assert_allclose(result.probabilities, want, atol=1e-5)
    thr = np.array([0.3, 0.5, 0.7])
    assert result.predictions == [[LABELS[j] for j in np.flatnonzero(row >= thr)] for row in want]


def test_variants(toy, tmp_path: Path) -> None:
    """auto picks fp32 on CPU; int8 when asked and present; a variant the bundle lacks is a ConfigError."""
    kw = {"llm_base_url": _free_port_url(), "cache_dir": tmp_path}
    with load_bundle(toy[0], **kw) as b:
        assert b.variant == "fp32"
    with load_bundle(toy[0], variant="int8", **kw) as b:
        assert b.variant == "int8"
    with pytest.raises(ConfigError) as e:
        load_bundle(toy[0], variant="fp16", **kw)
    assert str(e.value) == "variant 'fp16' is not in this bundle (it has ['fp32', 'int8'])."


def test_llm_max_concurrency_caps_requests_in_flight(toy, tmp_path: Path) -> None:
    """llm_max_concurrency overrides the manifest's llm.max_concurrency: a slow server never sees more than 2 at once
    (and sees more than 1, so the cap is what holds it); 0 is refused, naming the setting."""
    with FakeLLMServer(delay_s=0.05) as server:
        with load_bundle(toy[0], llm_base_url=server.base_url, cache_dir=tmp_path, llm_gate="off",
                         llm_max_concurrency=2) as bundle:
            bundle.predict([f"{t} #{i}" for i, t in enumerate(TEXTS * 2)])
        assert server.max_in_flight == 2
    with pytest.raises(ConfigError, match="llm.max_concurrency"):
        load_bundle(toy[0], llm_max_concurrency=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"variant": "fp64"}, "'variant' must be one of ['auto', 'fp32', 'int8', 'fp16'] (got 'fp64')."),
    ({"on_llm_error": "ignore"}, "'on_llm_error' must be one of ['raise', 'ml_only'] (got 'ignore')."),
    ({"batch_size": 0}, "'batch_size' must be a positive int (got 0)."),
    ({"batch_size": True}, "'batch_size' must be a positive int (got True)."),
    ({"intra_op_num_threads": -1}, "'intra_op_num_threads' must be None or a positive int (got -1)."),
    ({"llm_base_url": "127.0.0.1:8000"}, "'llm_base_url' must be None or an http(s) URL (got '127.0.0.1:8000')."),
    ({"llm_api_key": ""}, "'llm_api_key' must be None or a non-empty string."),
    ({"providers": "gpu"}, "'providers' must be one of ['auto', 'cpu', 'cuda'] or a list of execution provider "
                           "names (got 'gpu')."),
])
def test_argument_validation(toy, kwargs: dict, message: str) -> None:
    """Each bad keyword argument is a ConfigError naming it, the expectation and the value."""
    with pytest.raises(ConfigError) as e:
        load_bundle(toy[0], **kwargs)
    assert str(e.value) == message


def test_positional_options_refused(toy) -> None:
    """Everything after the path is keyword-only."""
    with pytest.raises(TypeError):
        load_bundle(toy[0], "cpu")  # type: ignore[misc]


def test_tampered_bundle_refused_before_onnxruntime(toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tampered model.onnx is refused without ONNX Runtime opening any session."""
    import onnxruntime

    opened: list[object] = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: opened.append(a))
    bad = tmp_path / "bundle"
    shutil.copytree(toy[0], bad)
    data = bytearray((bad / "encoder.onnx").read_bytes())
    data[100] ^= 0x55
    (bad / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"^encoder.onnx: sha256 differs"):
        load_bundle(bad, cache_dir=tmp_path)
    assert opened == []


def test_llm_settings_come_from_manifest(toy, tmp_path: Path) -> None:
    """A manifest whose llm block is invalid is a BundleError naming manifest.json 'llm'."""
    bad = tmp_path / "bundle"
    shutil.copytree(toy[0], bad)
    m = read_manifest(bad)
    m["llm"]["provider"] = "nope"
    write_manifest(bad, m)
    with pytest.raises(BundleError, match=r"^manifest.json 'llm': llm_provider: expected one of"):
        load_bundle(bad, cache_dir=tmp_path)


def test_wrong_graph_outputs_refused(toy, tmp_path: Path) -> None:
    """An encoder.onnx that is really the calibrator (valid hash) is refused for its inputs, naming the field."""
    bad = tmp_path / "bundle"
    shutil.copytree(toy[0], bad)
    shutil.copyfile(bad / "calibrator.onnx", bad / "encoder.onnx")
    write_manifest(bad, read_manifest(bad))
    with pytest.raises(BundleError) as e:
        load_bundle(bad, cache_dir=tmp_path)
    assert str(e.value) == ("encoder.onnx: the graph's inputs ['llm_scores_raw'] differ from manifest.json "
                            "'pipeline[0].inputs' ['attention_mask', 'input_ids'].")


def test_repr_and_manifest(toy, tmp_path: Path) -> None:
    """repr names path, labels, variant and providers; .manifest is a copy of the JSON."""
    with load_bundle(toy[0], cache_dir=tmp_path) as bundle:
        assert repr(bundle) == (f"Bundle(path={str(toy[0])!r}, labels={LABELS}, multi_label=False, "
                                "variant='fp32', providers=['CPUExecutionProvider'])")
        m = bundle.manifest
        m["labels"] = []
        assert bundle.manifest["labels"] == LABELS and bundle.labels == LABELS


def test_missing_onnxruntime_at_load(toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnxruntime, load_bundle says which extra to install (after verifying the bundle)."""
    import sys

    from textclassify.runtime.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"^onnxruntime is not installed; install textclassify\[cpu\]"):
        load_bundle(toy[0], cache_dir=tmp_path)
