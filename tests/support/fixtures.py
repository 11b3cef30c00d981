"""Fixtures for the tiny offline models and synthetic data."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.data import make_tickets
from tests.support.tiny_model import build_tiny_roberta


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny RoBERTa + BPE tokenizer saved to a temp dir, trained on synthetic ticket texts."""
    texts = [t for t, _ in make_tickets(400, seed=1)] + [t for t, _ in make_tickets(400, seed=1, multi_label=True)]
    return build_tiny_roberta(texts, Path(tmp_path_factory.mktemp("tiny_roberta")))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two shared cores: one intra-op thread keeps torch from spinning against other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def server():
    """A loopback fake LLM server shared by the tests of one module (fits there reuse its answers)."""
    from tests.support.llm_server import FakeLLMServer

    with FakeLLMServer() as s:
        yield s
