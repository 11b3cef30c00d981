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
