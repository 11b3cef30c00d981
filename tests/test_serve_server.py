"""fusion-serve end to end: the real server in a subprocess, tritonclient for the v2 protocol, httpx for the rest."""
from __future__ import annotations

import asyncio
import gzip
import json
import re
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from tests.support.serve_process import ServeProcess
from tests.support.toy_bundle import write_toy_bundle
from textclassify.runtime import load_bundle

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1", "temperature": 0.0,
       "max_concurrency": 8, "timeout_s": 5.0, "max_retries": 0, "score_method": "json", "prompt_version": "v1"}
TEXTS = [t for t, _ in make_tickets(40, seed=5)]
MAX_TEXTS = 16
MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def toy_dir(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve_toy") / "tickets"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False, llm=LLM,
                     max_length=32)
    return out


@pytest.fixture(scope="module")
def tags_dir(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve_tags") / "bundle"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=True, llm=LLM,
                     max_length=32, thresholds=[0.3, 0.5, 0.7], seed=3)
    return out


@pytest.fixture(scope="module")
def expected(toy_dir: Path, server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """text -> (label, probabilities) from the same bundle in-process, one text at a time."""
    cache = tmp_path_factory.mktemp("expected_cache")
    with load_bundle(toy_dir, llm_base_url=server.base_url, cache_dir=cache) as bundle:
        result = bundle.predict(TEXTS)
    return {t: (result.predictions[i], result.probabilities[i]) for i, t in enumerate(TEXTS)}


@pytest.fixture(scope="module")
def serve(toy_dir: Path, tags_dir: Path, server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory):
    """fusion-serve over two toy bundles: "tickets" (the folder name) and "tags" (multi-label, NAME=DIR); the
    LLM endpoint overridden to the fake."""
    tmp = tmp_path_factory.mktemp("serve_main")
    proc = ServeProcess(["--bundle", str(toy_dir), "--bundle", f"tags={tags_dir}", "--llm-base-url", server.base_url,
                         "--cache-dir", str(tmp / "c"),
                         "--max-texts", str(MAX_TEXTS), "--max-request-bytes", "64KiB", "--max-delay-ms", "20"],
                        tmp / "serve.log")
    with proc:
        yield proc


def _client(serve: ServeProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(serve.host_port, network_timeout=30.0, connection_timeout=10.0)


def _bytes_input(texts: list[str], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return tensor


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus exposition `text` (0.0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                return float(value)
    return 0.0


def test_health_and_metadata_through_tritonclient(serve: ServeProcess) -> None:
    """Live, ready, model ready, server and model metadata (labels and providers in parameters)."""
    client = _client(serve)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tickets") and not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "textclassify" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("tickets")
    assert model["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in model["outputs"]} == {
        "label": ("BYTES", [-1]), "probabilities": ("FP32", [-1, 3]), "degraded": ("BOOL", [-1])}
    assert json.loads(model["parameters"]["labels"]) == LABELS
    assert model["parameters"]["providers"] == "CPUExecutionProvider"
    assert model["parameters"]["variant"] == "fp32"
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "404" and "'nope' is not served here" in err.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_through_tritonclient_matches_in_process(serve: ServeProcess, expected: dict, binary: bool) -> None:
    """tritonclient's infer (binary tensors and plain JSON) gives the in-process bundle's answers, in order."""
    texts = TEXTS[:7] + [TEXTS[0]]  # a repeated text answers twice
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities", "degraded")]
    result = _client(serve).infer("tickets", [_bytes_input(texts, binary)], outputs=outputs, request_id="r-1")
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [expected[t][0] for t in texts]
    np.testing.assert_allclose(result.as_numpy("probabilities"), np.stack([expected[t][1] for t in texts]),
                               atol=1e-5)
    assert result.as_numpy("degraded").tolist() == [False] * len(texts)
    assert result.get_response()["id"] == "r-1"


def test_infer_defaults_and_gzip(serve: ServeProcess, expected: dict) -> None:
    """No outputs named: all three come back as binary; a gzip request body and gzip response work."""
    texts = TEXTS[7:10]
    result = _client(serve).infer("tickets", [_bytes_input(texts)], request_compression_algorithm="gzip",
                                  response_compression_algorithm="gzip")
    assert [x.decode() for x in result.as_numpy("label")] == [expected[t][0] for t in texts]
    assert result.as_numpy("probabilities").shape == (3, 3)


def test_multi_label_model_in_the_same_process(serve: ServeProcess, tags_dir: Path, server: FakeLLMServer,
                                               tmp_path: Path) -> None:
    """The second bundle: v2 'label' joins the predicted labels with commas, the plain endpoint gives lists."""
    texts = TEXTS[20:26]
    with load_bundle(tags_dir, llm_base_url=server.base_url, cache_dir=tmp_path) as bundle:
        want = bundle.predict(texts)
    assert all(len(p) >= 2 for p in want.predictions)  # every row needs the join: the test reads commas
    result = _client(serve).infer("tags", [_bytes_input(texts)])
    assert [x.decode() for x in result.as_numpy("label")] == [",".join(p) for p in want.predictions]
    np.testing.assert_allclose(result.as_numpy("probabilities"), want.probabilities, atol=1e-5)
    body = httpx.post(f"{serve.url}/v1/models/tags/predict", json={"texts": texts}, timeout=30).json()
    assert body["predictions"] == want.predictions
    meta = _client(serve).get_model_metadata("tags")
    assert meta["parameters"]["multi_label"] is True and json.loads(meta["parameters"]["thresholds"]) == [0.3, 0.5,
                                                                                                        0.7]


def test_plain_endpoint(serve: ServeProcess, expected: dict) -> None:
    """POST /v1/models/NAME/predict returns predictions, probabilities, labels, degraded, llm_skipped, usage."""
    texts = TEXTS[10:14]
    r = httpx.post(f"{serve.url}/v1/models/tickets/predict", json={"texts": texts}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == [expected[t][0] for t in texts]
    np.testing.assert_allclose(body["probabilities"], np.stack([expected[t][1] for t in texts]), atol=1e-5)
    assert body["labels"] == LABELS and body["degraded"] == [] and body["llm_skipped"] == []
    assert body["usage"]["texts"] == 4 and body["usage"]["batches"] >= 1
    assert set(body["usage"]["llm"]) >= {"requests", "cache_hits"}
    empty = httpx.post(f"{serve.url}/v1/models/tickets/predict", json={"texts": []}, timeout=30)
    assert empty.status_code == 200 and empty.json()["predictions"] == []


def test_llm_base_url_override_reaches_the_given_server(serve: ServeProcess, server: FakeLLMServer) -> None:
    """The manifest names a dead port; --llm-base-url sends the LLM requests to the fake server instead."""
    text = "a text the llm has not seen yet: llm-base-url"
    before = server.texts_seen.count(text)
    r = httpx.post(f"{serve.url}/v1/models/tickets/predict", json={"texts": [text]}, timeout=30)
    assert r.status_code == 200 and server.texts_seen.count(text) == before + 1


def test_concurrent_requests_are_batched_and_keep_their_rows(serve: ServeProcess, expected: dict,
                                                             server: FakeLLMServer) -> None:
    """40 concurrent requests: batches larger than 1 in /metrics, each response holds exactly its own rows."""
    before = httpx.get(f"{serve.url}/metrics", timeout=10).text
    requests = [TEXTS[(3 * i) % 40:(3 * i) % 40 + 1 + i % 3] for i in range(40)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=serve.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.post("/v1/models/tickets/predict", json={"texts": texts})
                                          for texts in requests))

    server.delay_s = 0.05  # LLM answers take a moment, so requests pile up behind the running batches
    try:
        responses = asyncio.run(run())
    finally:
        server.delay_s = 0.0
    for texts, r in zip(requests, responses):
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == [expected[t][0] for t in texts]
        np.testing.assert_allclose(r.json()["probabilities"], np.stack([expected[t][1] for t in texts]), atol=1e-5)
    after = httpx.get(f"{serve.url}/metrics", timeout=10).text
    batches = _metric(after, "textclassify_batch_size_count") - _metric(before, "textclassify_batch_size_count")
    rows = _metric(after, "textclassify_batch_size_sum") - _metric(before, "textclassify_batch_size_sum")
    singles = (_metric(after, "textclassify_batch_size_bucket", le="1.0")
               - _metric(before, "textclassify_batch_size_bucket", le="1.0"))
    assert batches < rows and singles < batches  # some batch held more than one row
    # Texts repeated across concurrent requests: those in flight together ran once (a text sent again after
    # its row finished runs again, so the exact count depends on timing).
    sent = sum(len(texts) for texts in requests)
    deduplicated = (_metric(after, "textclassify_deduplicated_rows_total")
                    - _metric(before, "textclassify_deduplicated_rows_total"))
    assert deduplicated > 0 and rows + deduplicated == sent
    assert _metric(after, "textclassify_requests_total", endpoint="v1_predict", status="200") >= 40
    assert _metric(after, "textclassify_stage_seconds_count", stage="queue") > 0
    assert _metric(after, "textclassify_stage_seconds_count", stage="total") > 0
    assert _metric(after, "textclassify_llm_events_total", event="calls") > 0


def _post_v2(serve: ServeProcess, body: bytes | dict, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{serve.url}/v2/models/tickets/infer", content=content, headers=headers or {}, timeout=30)


def _v2(texts: list, **tensor: object) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts, **tensor}]}


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "request body: not valid JSON"),
    ({"inputs": []}, "inputs: expected a non-empty list"),
    ({"outputs": []}, "inputs: expected a non-empty list"),
    (_v2(["a"], datatype="FP32"), "inputs[0].datatype: 'text' is BYTES (got 'FP32')"),
    (_v2(["a"], name="input_ids"), "inputs[0].name: the model has one input, 'text'"),
    (_v2(["a", "b"], shape=[1, 2]), "inputs[0].shape: expected [N] (or [N, 1])"),
    (_v2(["a", "b"], shape=[3]), "inputs[0].data: 2 elements but the shape says 3"),
    (_v2(["a", 5]), "inputs[0].data[1]: expected a string (got int)"),
    ({**_v2(["a"]), "outputs": [{"name": "logits"}]}, "outputs[0].name: expected one of"),
], ids=["json", "no-inputs", "missing-inputs", "datatype", "input-name", "shape", "count", "element", "output"])
def test_malformed_v2_requests_are_400_naming_the_field(serve: ServeProcess, body, field: str) -> None:
    """Each malformed request gets 400 with the field in the message; the server answers afterwards."""
    r = _post_v2(serve, body)
    assert r.status_code == 400 and field in r.json()["error"], r.text
    assert _client(serve).is_server_ready()


def test_malformed_binary_tensor_is_400(serve: ServeProcess) -> None:
    """A binary BYTES element longer than the data left, and a header length past the body, are 400."""
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 6}}]}).encode()
    blob = struct.pack("<I", 50) + b"ab"
    r = _post_v2(serve, header + blob, {"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and "inputs[0]: element 0 says 50 bytes but 2 are left" in r.json()["error"]
    r = _post_v2(serve, header, {"Inference-Header-Content-Length": "99999"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    bad_utf8 = struct.pack("<I", 2) + b"\xff\xfe"
    r = _post_v2(serve, header + bad_utf8, {"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400 and "inputs[0][0]: not valid UTF-8" in r.json()["error"]


@pytest.mark.parametrize(("body", "field"), [
    (b"[1, 2]", 'expected a JSON object {"texts": [...]}'),
    (b'{"texts": "one text"}', "texts: expected a list of strings (got str)"),
    (b'{"texts": ["a", null]}', "texts[1]: expected a string (got NoneType)"),
    (b'{"texts": ["a"], "labels": ["x"]}', "labels: unknown field"),
])
def test_malformed_plain_requests_are_400(serve: ServeProcess, body: bytes, field: str) -> None:
    """The plain endpoint names the field too."""
    r = httpx.post(f"{serve.url}/v1/models/tickets/predict", content=body, timeout=30)
    assert r.status_code == 400 and field in r.json()["error"], r.text


def test_limits_413_name_the_limit(serve: ServeProcess) -> None:
    """Too many texts (both endpoints), too many bytes (declared, and after gzip inflation) get 413."""
    texts = ["short text"] * (MAX_TEXTS + 1)
    r = httpx.post(f"{serve.url}/v1/models/tickets/predict", json={"texts": texts}, timeout=30)
    assert r.status_code == 413 and f"more than max_texts ({MAX_TEXTS})" in r.json()["error"]
    with pytest.raises(InferenceServerException) as err:
        _client(serve).infer("tickets", [_bytes_input(texts)])
    assert err.value.status() == "413" and f"max_texts ({MAX_TEXTS})" in err.value.message()
    big = json.dumps({"texts": ["x" * (MAX_BYTES + 10)]}).encode()
    r = httpx.post(f"{serve.url}/v1/models/tickets/predict", content=big, timeout=30)
    assert r.status_code == 413 and f"max_request_bytes ({MAX_BYTES} bytes)" in r.json()["error"]
    bomb = gzip.compress(big)  # small on the wire, over the limit once inflated
    r = httpx.post(f"{serve.url}/v1/models/tickets/predict", content=bomb, headers={"Content-Encoding": "gzip"},
                   timeout=30)
    assert r.status_code == 413 and f"max_request_bytes ({MAX_BYTES} bytes)" in r.json()["error"]
    assert _client(serve).is_server_ready()


def test_unknown_model_and_route_are_404_json(serve: ServeProcess) -> None:
    """Unknown model (both endpoints), unknown version, unknown path: 404 with a JSON error."""
    r = httpx.post(f"{serve.url}/v1/models/nope/predict", json={"texts": ["a"]}, timeout=30)
    assert r.status_code == 404 and "model 'nope' is not served here (models: ['tags', 'tickets'])" in r.json()["error"]
    with pytest.raises(InferenceServerException) as err:
        _client(serve).infer("nope", [_bytes_input(["a"])])
    assert err.value.status() == "404"
    assert httpx.get(f"{serve.url}/v2/models/tickets/versions/7", timeout=10).status_code == 404
    r = httpx.get(f"{serve.url}/v3/nothing", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    assert _client(serve).is_server_ready()


def test_metrics_exposition(serve: ServeProcess) -> None:
    """/metrics has every family in Prometheus text format, and no text of any request."""
    r = httpx.get(f"{serve.url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for family in ("textclassify_requests_total", "textclassify_batch_size", "textclassify_queue_depth",
                   "textclassify_stage_seconds", "textclassify_llm_events_total", "textclassify_rows_total",
                   "textclassify_degraded_rows_total", "textclassify_deduplicated_rows_total"):
        assert re.search(rf"^# TYPE {family} ", r.text, re.M), family
    assert TEXTS[0] not in r.text


def test_metrics_have_a_latency_histogram_per_stage(serve: ServeProcess) -> None:
    """A request asking the LLM is observed in every stage the bundle ran, plus queue, inference, graphs and total."""
    stages = ("queue", "inference", "tokenise", "encoder", "fusion", "gate", "llm", "calibrator", "graphs", "total")
    before = httpx.get(f"{serve.url}/metrics", timeout=10).text
    r = httpx.post(f"{serve.url}/v1/models/tickets/predict", json={"texts": ["per-stage timing: a fresh text"]},
                   timeout=30)
    assert r.status_code == 200, r.text
    after = httpx.get(f"{serve.url}/metrics", timeout=10).text
    for stage in stages:
        count = (_metric(after, "textclassify_stage_seconds_count", model="tickets", stage=stage)
                 - _metric(before, "textclassify_stage_seconds_count", model="tickets", stage=stage))
        assert count == 1, stage
        assert _metric(after, "textclassify_stage_seconds_sum", model="tickets", stage=stage) >= 0.0
    # the graphs' time is part of the bundle call's time (both summed over every batch so far)
    assert (_metric(after, "textclassify_stage_seconds_sum", model="tickets", stage="graphs")
            <= _metric(after, "textclassify_stage_seconds_sum", model="tickets", stage="inference"))


def test_cpu_encoder_runs_default_to_eight_rows(serve: ServeProcess) -> None:
    """On the CPU a merged batch of up to 32 rows runs the encoder in runs of 8 (the log line says so)."""
    assert "encoder runs of 8 rows" in serve.log()


def test_encoder_batch_size_option(toy_dir: Path, server: FakeLLMServer, tmp_path: Path) -> None:
    """--encoder-batch-size sets the run size; the answers are those of one run per batch."""
    with ServeProcess(["--bundle", str(toy_dir), "--llm-base-url", server.base_url, "--cache-dir", str(tmp_path / "c"),
                       "--encoder-batch-size", "3"], tmp_path / "serve.log") as proc:
        assert "encoder runs of 3 rows" in proc.log()
        r = httpx.post(f"{proc.url}/v1/models/tickets/predict", json={"texts": TEXTS[:10]}, timeout=30)
    assert r.status_code == 200, r.text
    with load_bundle(toy_dir, llm_base_url=server.base_url, cache_dir=tmp_path / "c", batch_size=32) as bundle:
        expected = bundle.predict(TEXTS[:10])
    assert r.json()["predictions"] == expected.predictions
    np.testing.assert_allclose(r.json()["probabilities"], expected.probabilities, atol=1e-5)


def test_device_id_option_reaches_the_sessions(toy_dir: Path, tmp_path: Path) -> None:
    """--device-id is refused below 0 as a usage error, and is what load_bundle's provider plan receives."""
    from click.testing import CliRunner

    from textclassify.runtime.errors import ConfigError
    from textclassify.serve.cli import _load, main

    result = CliRunner().invoke(main, ["--bundle", str(toy_dir), "--device-id", "-1"])
    assert result.exit_code == 2 and "--device-id" in result.output
    with pytest.raises(ConfigError, match=r"'device_id' must be an int >= 0 \(got -1\)"):
        _load({"tickets": toy_dir}, providers="cpu", variant="auto", llm_base_url=None, on_llm_error="raise",
              cache_dir=str(tmp_path), batch_size=8, encoder_batch_size=None, intra_op_threads=None, device_id=-1)
    models = _load({"tickets": toy_dir}, providers="cpu", variant="auto", llm_base_url=None, on_llm_error="raise",
                   cache_dir=str(tmp_path), batch_size=8, encoder_batch_size=None, intra_op_threads=None, device_id=1)
    try:
        assert models["tickets"].providers == ["CPUExecutionProvider"]  # ignored on the CPU
    finally:
        models["tickets"].close()
