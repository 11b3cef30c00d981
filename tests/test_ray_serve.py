"""textclassify.serve.ray: fusion-serve's API on Ray Serve, with @serve.batch merging concurrent requests."""
from __future__ import annotations

import re
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from ray import serve  # noqa: E402

from tests.support.data import make_tickets  # noqa: E402
from tests.support.llm_server import FakeLLMServer  # noqa: E402
from tests.support.toy_bundle import write_toy_bundle  # noqa: E402
from textclassify.runtime import load_bundle  # noqa: E402
from textclassify.runtime.errors import ConfigError  # noqa: E402
from textclassify.serve.ray import app, parse_arguments  # noqa: E402
from textclassify.serve.settings import encoder_run_rows  # noqa: E402

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1",
       "score_method": "json", "max_retries": 0, "timeout_s": 10.0}
TEXTS = [t for t, _ in make_tickets(24, seed=21)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory):
    """One local Ray (2 CPUs), Serve on a free port, the app over a toy bundle; all shut down afterwards."""
    tmp = tmp_path_factory.mktemp("ray_serve")
    bundle_dir = tmp / "tickets"
    write_toy_bundle(bundle_dir, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False, llm=LLM)
    port = _free_port()
    with FakeLLMServer(delay_s=0.3) as llm:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(app({"bundle": str(bundle_dir), "llm_base_url": llm.base_url, "cache_dir": str(tmp / "cache"),
                           "cpus_per_replica": "0.5", "max_batch_size": "16", "batch_wait_timeout_ms": "100"}),
                      name="textclassify", route_prefix="/")
            yield {"url": f"http://127.0.0.1:{port}", "bundle": bundle_dir, "llm": llm, "cache": tmp / "cache2"}
        finally:
            serve.shutdown()
            ray.shutdown()


def _expected(served: dict, texts: list[str]):
    with load_bundle(served["bundle"], llm_base_url=served["llm"].base_url, cache_dir=served["cache"]) as bundle:
        return bundle.predict(texts)


def _batch_histogram(url: str) -> tuple[float, float]:
    """Batches run and rows in them so far, from the Prometheus histogram (absent before the first batch)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = [re.search(rf'^textclassify_batch_size_{part}{{model="tickets"}} (\S+)$', text, re.M)
             for part in ("count", "sum")]
    return (float(found[0].group(1)), float(found[1].group(1))) if all(found) else (0.0, 0.0)


def test_plain_and_v2_endpoints_batch_concurrent_requests(served: dict) -> None:
    """16 concurrent one-text requests (plain and v2) answer as Bundle.predict does, in batches of more than one."""
    url = served["url"]
    assert httpx.get(f"{url}/v2/health/ready", timeout=30).json() == {"ready": True}
    meta = httpx.get(f"{url}/v2/models/tickets", timeout=30).json()
    assert meta["name"] == "tickets" and meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    before = _batch_histogram(url)
    texts = TEXTS[:16]

    def ask(i: int) -> tuple[str, list[float]]:
        if i % 2:
            body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [texts[i]]}]}
            r = httpx.post(f"{url}/v2/models/tickets/infer", json=body, timeout=60)
            assert r.status_code == 200, r.text
            out = {o["name"]: o for o in r.json()["outputs"]}
            return out["label"]["data"][0], out["probabilities"]["data"]
        r = httpx.post(f"{url}/v1/models/tickets/predict", json={"texts": [texts[i]]}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0], r.json()["probabilities"][0]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    want = _expected(served, texts)
    assert [a[0] for a in answers] == want.predictions
    np.testing.assert_allclose(np.array([a[1] for a in answers]), want.probabilities, atol=1e-6)
    count, total = _batch_histogram(url)
    batches, rows = count - before[0], total - before[1]
    assert rows == 16 and batches < 16, (batches, rows)  # @serve.batch merged rows of different requests


def test_errors_are_fusion_serve_errors(served: dict) -> None:
    """The app is fusion-serve's: an unknown model is its 404 message, an empty text its 400."""
    r = httpx.post(f"{served['url']}/v1/models/nope/predict", json={"texts": ["a"]}, timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "model 'nope' is not served here (models: ['tickets'])"
    r = httpx.post(f"{served['url']}/v1/models/tickets/predict", json={"texts": [5]}, timeout=30)
    assert r.status_code == 400 and "texts[0]" in r.json()["error"], r.text


def test_arguments_are_checked_before_any_replica(tmp_path: Path) -> None:
    """Unknown keys, bad numbers and a missing bundle are ConfigErrors naming the argument."""
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['replicas'\]"):
        parse_arguments({"bundle": "b", "replicas": "2"})
    with pytest.raises(ConfigError, match="max_replicas must be int \\(got 'many'\\)"):
        parse_arguments({"bundle": "b", "max_replicas": "many"})
    with pytest.raises(ConfigError, match="needs bundle=DIR"):
        parse_arguments({})
    assert parse_arguments({"bundle": "b", "gpus-per-replica": "1"})["gpus_per_replica"] == 1.0
    with pytest.raises(ConfigError, match=r"encoder_batch_size must be at least 1 \(got 0\)"):
        parse_arguments({"bundle": "b", "encoder_batch_size": "0"})
    assert parse_arguments({"bundle": "b", "encoder_batch_size": "4"})["encoder_batch_size"] == 4


def test_encoder_runs_follow_fusion_serve() -> None:
    """Replicas and fusion-serve share one rule: the override, else the whole batch on CUDA, else 8 rows on the CPU."""
    assert encoder_run_rows(["CPUExecutionProvider"], 32) == 8
    assert encoder_run_rows(["CPUExecutionProvider"], 4) == 4
    assert encoder_run_rows(["CUDAExecutionProvider", "CPUExecutionProvider"], 32) == 32
    assert encoder_run_rows(["CPUExecutionProvider"], 32, 16) == 16


def test_scaling_doc_config_is_a_serve_deploy_config() -> None:
    """The `serve deploy` file in docs/scaling.md parses as Ray Serve's schema and its args as ours."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    page = (Path(__file__).resolve().parents[1] / "docs" / "scaling.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", page, re.S).group(1)
    config = ServeDeploySchema.model_validate(yaml.safe_load(block))
    (application,) = config.applications
    assert application.import_path == "textclassify.serve.ray:app"
    args = parse_arguments(application.args)
    assert args["max_replicas"] == 8 and args["gpus_per_replica"] == 1.0
