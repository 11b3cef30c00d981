"""A real exported bundle served by the runtime gives what AutoFusionClassifier.predict gives (fp32, 1e-4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.support.data import LABELS, make_tickets
from tests.support.fitted_model import make_fitted_model
from tests.support.llm_server import FakeLLMServer
from textclassify.runtime import load_bundle
from textclassify.runtime.llm.settings import LLMSettings


@pytest.fixture(scope="module")
def server():
    with FakeLLMServer() as s:
        yield s


def _classifier(tiny_roberta_dir: str, server: FakeLLMServer, multi_label: bool, cache: Path):
    """An AutoFusionClassifier holding make_fitted_model's state, assembled the way `load` assembles one."""
    import torch

    from textclassify import AutoFusionClassifier
    from textclassify.train.config import validate_config

    torch.set_num_threads(1)
    fitted = make_fitted_model(tiny_roberta_dir, LABELS, multi_label)
    config = {**server.config_overrides(), "label_columns": LABELS if multi_label else ["topic"],
              "multi_label": multi_label, "ml_model": tiny_roberta_dir, "cache_dir": str(cache),
              "llm": {"score_method": "json", "max_retries": 0}, "ml": {"max_length": fitted.max_length_}}
    clf = AutoFusionClassifier(config)
    clf.config_ = validate_config(config)
    clf.labels_, clf.multi_label_ = fitted.labels_, fitted.multi_label_
    clf.thresholds_, clf.max_length_ = fitted.thresholds_, fitted.max_length_
    clf.model_, clf.tokenizer_, clf.calibrator_ = fitted.model_, fitted.tokenizer_, fitted.calibrator_
    clf.llm_settings_ = LLMSettings(provider="openai-compatible", model="fake", base_url=server.base_url,
                                    score_method="json", max_retries=0)
    clf.validation_, clf.metrics_ = fitted.validation_, fitted.metrics_
    clf.metadata_ = {"metrics": clf.metrics_, "llm_usage": {}}
    clf._scorer = None
    return clf


@pytest.mark.parametrize("multi_label", [False, True], ids=["multi_class", "multi_label"])
def test_bundle_equals_classifier(tiny_roberta_dir: str, server: FakeLLMServer, tmp_path: Path,
                                  multi_label: bool) -> None:
    """Same labels, probabilities within 1e-4, and no extra LLM request (shared cache key)."""
    clf = _classifier(tiny_roberta_dir, server, multi_label, tmp_path / "cache")
    bundle_dir = clf.export(tmp_path / "bundle", progress=False)
    texts = [t for t, _ in make_tickets(40, seed=77, multi_label=multi_label)] + ["", "refund " * 100]
    want = clf.predict(texts)
    requests = server.requests
    with load_bundle(bundle_dir, cache_dir=tmp_path / "cache", batch_size=7) as bundle:
        got = bundle.predict(texts)
        assert bundle.variant == "fp32" and bundle.labels == LABELS
    assert server.requests == requests, "the runtime must hit the training-time cache entries"
    assert got.predictions == want.predictions
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-4)
