"""serve.app while draining: readiness goes false first and new inference gets 503, liveness stays (in-process)."""
from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.support.llm_server import FakeLLMServer
from tests.support.toy_bundle import write_toy_bundle
from textclassify.runtime import load_bundle
from textclassify.serve.app import create_app
from textclassify.serve.settings import ServeSettings

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1", "temperature": 0.0,
       "max_concurrency": 8, "timeout_s": 5.0, "max_retries": 0, "score_method": "json", "prompt_version": "v1"}


@pytest.fixture
def client(tiny_roberta_dir: str, tmp_path: Path, llm_server: FakeLLMServer):
    out = tmp_path / "tickets"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False, llm=LLM,
                     max_length=32)
    with load_bundle(out, llm_base_url=llm_server.base_url, cache_dir=tmp_path / "c") as bundle:
        app = create_app({"tickets": bundle}, ServeSettings())
        with TestClient(app) as test_client:
            yield test_client, app.state.serve


def test_draining_turns_readiness_false_and_refuses_new_inference(client) -> None:
    """Before the drain: ready and answering. After begin_drain: ready 503, model ready 503, both inference
    endpoints 503 with Retry-After, live still 200."""
    http, state = client
    assert http.get("/v2/health/ready").status_code == 200
    assert http.post("/v1/models/tickets/predict", json={"texts": ["refund please"]}).status_code == 200
    state.begin_drain()
    assert http.get("/v2/health/ready").status_code == 503
    assert http.get("/v2/models/tickets/ready").status_code == 503
    assert http.get("/v2/health/live").status_code == 200
    plain = http.post("/v1/models/tickets/predict", json={"texts": ["refund please"]})
    v2 = http.post("/v2/models/tickets/infer", json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                                 "data": ["refund please"]}]})
    for r in (plain, v2):
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"error": "the server is shutting down"}
