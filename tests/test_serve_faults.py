"""fusion-serve under faults: full queue, timeouts, LLM outages, auth, and SIGTERM/SIGINT drains (real processes)."""
from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.llm_server import FakeLLMServer
from tests.support.serve_process import ServeProcess
from tests.support.toy_bundle import write_toy_bundle
from textclassify.runtime import load_bundle

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1", "temperature": 0.0,
       "max_concurrency": 8, "timeout_s": 5.0, "max_retries": 0, "score_method": "json", "prompt_version": "v1"}
TOKEN = "s3cret-token-7f1d9c2b"


@pytest.fixture(scope="module")
def toy_dir(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve_faults") / "tickets"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False, llm=LLM,
                     max_length=32)
    return out


def _dead_url() -> str:
    """A loopback URL nothing listens on (port bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _predict(url: str, texts: list[str], **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/tickets/predict", json={"texts": texts}, timeout=60, **kwargs)


def _wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# -- queue full and timeouts ------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow(toy_dir: Path, server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory):
    """One worker, batches of one, two rows of queue, 2 s timeout; LLM stalls injected per test."""
    tmp = tmp_path_factory.mktemp("serve_slow")
    proc = ServeProcess(["--bundle", str(toy_dir), "--llm-base-url", server.base_url, "--cache-dir", str(tmp / "c"),
                         "--workers", "1", "--max-batch-size", "1", "--max-queue", "2", "--timeout-s", "2"],
                        tmp / "serve.log")
    with proc:
        # The first LLM call starts the client (about 1 s here); the timings below are about later calls.
        assert _predict(proc.url, ["warm up the llm client"]).status_code == 200
        yield proc


def test_full_queue_is_503_with_retry_after(slow: ServeProcess, server: FakeLLMServer) -> None:
    """8 concurrent texts, each 0.4 s at the LLM: two wait (one more may run), the rest get 503 + Retry-After."""
    server.inject("stall", times=8, text="q503", seconds=0.4)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=slow.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/models/tickets/predict",
                                                      json={"texts": [f"q503 text {i}"]}) for i in range(8)))

    responses = asyncio.run(run())
    codes = sorted(r.status_code for r in responses)
    # Two rows may wait; a third runs once the batch loop has taken the first (arrival order decides).
    assert set(codes) == {200, 503} and codes.count(200) in (2, 3), codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1"
    assert "server busy" in busy.json()["error"] and "at most 2" in busy.json()["error"]
    assert _predict(slow.url, ["after the 503s"]).status_code == 200


def test_timeout_is_504_and_drops_rows_not_started(slow: ServeProcess, server: FakeLLMServer) -> None:
    """A stalls 4.5 s at the LLM (timeout 2 s): A and B (queued behind it) get 504; B never reaches the LLM."""
    server.inject("stall", times=1, text="sleepy-504", seconds=4.5)
    results: dict[str, httpx.Response] = {}
    a = threading.Thread(target=lambda: results.setdefault("a", _predict(slow.url, ["sleepy-504 text"])))
    a.start()
    _wait_for(lambda: "sleepy-504 text" in server.texts_seen)
    b = threading.Thread(target=lambda: results.setdefault("b", _predict(slow.url, ["dropme-504 text"])))
    b.start()
    a.join()
    b.join()
    for key in ("a", "b"):
        assert results[key].status_code == 504, results[key].text
        assert "timed out after timeout_s (2 s)" in results[key].json()["error"]
    _wait_for(lambda: _predict(slow.url, ["after the 504s"]).status_code == 200, 15)
    assert "dropme-504 text" not in server.texts_seen
    metrics = httpx.get(f"{slow.url}/metrics", timeout=10).text
    assert 'textclassify_queue_depth{model="tickets"} 0.0' in metrics


# -- LLM outage, both policies; auth -------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """--token-file, the LLM endpoint dead, --on-llm-error raise; debug logs and the access log on."""
    tmp = tmp_path_factory.mktemp("serve_guarded")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    proc = ServeProcess(["--bundle", str(toy_dir), "--llm-base-url", _dead_url(), "--cache-dir", str(tmp / "c"),
                         "--token-file", str(token_file), "--on-llm-error", "raise", "--access-log",
                         "--log-level", "debug"], tmp / "serve.log")
    with proc:
        yield proc


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_auth_required_except_health(guarded: ServeProcess) -> None:
    """No token or a wrong one: 401 on every endpoint but /v2/health/*; the right one passes."""
    url = guarded.url
    for path in ("/v2", "/v2/models/tickets", "/v2/models/tickets/ready", "/metrics"):
        assert httpx.get(url + path, timeout=10).status_code == 401, path
        assert httpx.get(url + path, headers={"Authorization": f"Bearer {TOKEN}x"}, timeout=10).status_code == 401
        assert httpx.get(url + path, headers={"Authorization": TOKEN}, timeout=10).status_code == 401
        assert httpx.get(url + path, headers=AUTH, timeout=10).status_code == 200, path
    r = _predict(url, ["a"])
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(f"{url}/v2/models/tickets/infer", json={}, timeout=10).status_code == 401
    client = triton.InferenceServerClient(guarded.host_port)
    assert client.is_server_live() and client.is_server_ready()  # health needs no token
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("tickets")
    assert err.value.status() == "401"
    assert client.get_model_metadata("tickets", headers=AUTH)["name"] == "tickets"


def test_llm_outage_with_raise_is_502_naming_the_provider(guarded: ServeProcess) -> None:
    """Both endpoints answer 502 naming the provider, and the server answers afterwards."""
    r = _predict(guarded.url, ["refund my invoice"], headers=AUTH)
    assert r.status_code == 502, r.text
    assert "LLM provider 'openai-compatible' failed" in r.json()["error"]
    assert "--on-llm-error ml_only" in r.json()["error"]
    tensor = triton.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["package lost"], dtype=object))
    client = triton.InferenceServerClient(guarded.host_port)
    with pytest.raises(InferenceServerException) as err:
        client.infer("tickets", [tensor], headers=dict(AUTH))  # a copy: infer adds a header to the dict it is given
    assert err.value.status() == "502" and "'openai-compatible'" in err.value.message()
    assert httpx.get(f"{guarded.url}/v2/health/ready", timeout=10).status_code == 200


def test_token_in_no_log_line_metric_or_error(guarded: ServeProcess) -> None:
    """After every request above (debug logging and access log on), the token is nowhere to be read."""
    _predict(guarded.url, ["one more"], headers={"Authorization": f"Bearer {TOKEN}-wrong"})
    metrics = httpx.get(f"{guarded.url}/metrics", headers=AUTH, timeout=10).text
    bodies = [_predict(guarded.url, ["x"], headers=h).text for h in ({}, AUTH, {"Authorization": "Bearer nope"})]
    assert "GET /metrics" in guarded.log()  # the access log is on: the check below reads real request lines
    for where in (guarded.log(), metrics, *bodies):
        assert TOKEN not in where
    assert "refund my invoice" not in guarded.log()  # texts are not logged either


@pytest.fixture(scope="module")
def degraded(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve_ml_only")
    proc = ServeProcess(["--bundle", str(toy_dir), "--llm-base-url", _dead_url(), "--cache-dir", str(tmp / "c"),
                         "--on-llm-error", "ml_only"], tmp / "serve.log")
    with proc:
        yield proc


def test_llm_outage_with_ml_only_answers_degraded_rows(degraded: ServeProcess, toy_dir: Path,
                                                         tmp_path: Path) -> None:
    """Every row degraded (with its reason), probabilities equal to the in-process ml_only answer."""
    texts = ["refund my invoice", "package lost in transit", "app crashes on login"]
    r = _predict(degraded.url, texts)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["degraded"] == [0, 1, 2] and set(body["degraded_reasons"]) == {"0", "1", "2"}
    with load_bundle(toy_dir, llm_base_url=_dead_url(), on_llm_error="ml_only", cache_dir=tmp_path) as bundle:
        want = bundle.predict(texts)
    assert body["predictions"] == want.predictions
    np.testing.assert_allclose(body["probabilities"], want.probabilities, atol=1e-5)
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(texts[:2], dtype=object))
    result = triton.InferenceServerClient(degraded.host_port).infer("tickets", [tensor])
    assert result.as_numpy("degraded").tolist() == [True, True]
    metrics = httpx.get(f"{degraded.url}/metrics", timeout=10).text
    assert 'textclassify_degraded_rows_total{model="tickets"} 5.0' in metrics


# -- graceful shutdown ---------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_requests_and_exits_0(toy_dir: Path, server: FakeLLMServer, tmp_path: Path,
                                                      sig: int) -> None:
    """Six requests in flight (1.5 s each at the LLM) when the signal comes: all six 200, then exit code 0."""
    tag = f"drain-{sig}"
    server.inject("stall", times=6, text=tag, seconds=1.5)
    proc = ServeProcess(["--bundle", str(toy_dir), "--llm-base-url", server.base_url, "--cache-dir",
                         str(tmp_path / "c"), "--drain-s", "15", "--max-batch-size", "2"], tmp_path / "serve.log")
    with proc:
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda i=i: results.append(_predict(proc.url, [f"{tag} text {i}"])))
                   for i in range(6)]
        for t in threads:
            t.start()
        _wait_for(lambda: any(tag in (t or "") for t in server.texts_seen))
        proc.signal(sig)
        code = proc.wait(30)
        for t in threads:
            t.join()
        assert code == 0, proc.log()
        assert [r.status_code for r in results] == [200] * 6, [r.text for r in results]
        log = proc.log()
        assert f"{signal.Signals(sig).name} received" in log and "drained" in log
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{proc.url}/v2/health/live", timeout=5)
