"""runtime.bundle: Bundle.predict reports the seconds each pipeline stage took (metadata["timings_s"])."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from tests.support.toy_bundle import ToyWeights, write_toy_bundle
from textclassify.runtime import load_bundle

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1", "temperature": 0.0,
       "max_concurrency": 8, "timeout_s": 5.0, "max_retries": 0, "score_method": "json", "prompt_version": "v1"}
TEXTS = [t for t, _ in make_tickets(12, seed=5)]


@pytest.fixture(scope="module")
def toy(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ToyWeights]:
    out = tmp_path_factory.mktemp("toy_timings") / "bundle"
    weights = write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False,
                               llm=LLM, max_length=32)
    return out, weights


@pytest.fixture(scope="module")
def llm() -> FakeLLMServer:
    with FakeLLMServer() as server:
        yield server


def _check_stages(timings: dict[str, float], expected: set[str]) -> None:
    assert set(timings) == expected | {"total"}
    assert all(isinstance(v, float) and v >= 0.0 for v in timings.values())
    # the stages run one after the other inside the call, so together they fit in its total
    assert sum(v for k, v in timings.items() if k != "total") <= timings["total"]


def test_every_stage_that_ran_is_timed(toy, llm: FakeLLMServer, tmp_path: Path) -> None:
    """Rows asking the LLM: tokenize, encoder, fusion, gate, llm, calibrator and total, each in seconds."""
    with load_bundle(toy[0], llm_base_url=llm.base_url, cache_dir=tmp_path, llm_gate="off") as bundle:
        result = bundle.predict(TEXTS)
    _check_stages(result.metadata["timings_s"], {"tokenize", "encoder", "fusion", "gate", "llm", "calibrator"})


def test_gated_rows_report_no_llm_stage(toy, llm: FakeLLMServer, tmp_path: Path) -> None:
    """When the gate answers every row, no llm or calibrator time is reported (nothing ran) and no request is sent."""
    before = llm.requests
    with load_bundle(toy[0], llm_base_url=llm.base_url, cache_dir=tmp_path, llm_gate=0.0) as bundle:
        result = bundle.predict(TEXTS)
    assert llm.requests == before
    assert result.metadata["llm_skipped"] == list(range(len(TEXTS)))
    _check_stages(result.metadata["timings_s"], {"tokenize", "encoder", "fusion", "gate"})


def test_batch_of_one_and_empty_call(toy, llm: FakeLLMServer, tmp_path: Path) -> None:
    """Each call has its own timings; an empty call reports none."""
    with load_bundle(toy[0], llm_base_url=llm.base_url, cache_dir=tmp_path, llm_gate="off") as bundle:
        one = bundle.predict(TEXTS[:1]).metadata["timings_s"]
        empty = bundle.predict([]).metadata["timings_s"]
    _check_stages(one, {"tokenize", "encoder", "fusion", "gate", "llm", "calibrator"})
    assert empty == {}
