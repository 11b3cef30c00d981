"""Bad input through the public API: training data into AutoFusionClassifier.fit (and fusion-train --data),
prediction input into AutoFusionClassifier.predict and a loaded bundle alike.

Every training-data error names the row/column/value and comes before any LLM request (the loopback
server counts zero); a 100,000-character text trains and predicts; prediction input has one contract
for the classifier and the bundle (the single-string choice: rejected, "pass [text] instead").
"""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from textclassify import AutoFusionClassifier
from textclassify.runtime import load_bundle
from textclassify.runtime.constants import LLM_MAX_TEXT_CHARS
from textclassify.runtime.decoding import softmax
from textclassify.runtime.errors import DataError, LLMError
from textclassify.runtime.types import ClassificationType, TrainingData
from textclassify.train.cli import main as train_main
from textclassify.train.combiners import head_logits
from textclassify.train.encoder import encoder_logits

LONG = 100_000
LABELS = ["billing", "shipping", "technical"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_config(server: FakeLLMServer, model_dir: str, tmp: Path, **extra) -> dict:
    return {**server.config_overrides(), "label_columns": ["topic"], "ml_model": model_dir,
            "cache_dir": str(tmp / "cache"), "output_dir": str(tmp / "out"), "fusion_split": 0.4,
            "llm": {"score_method": "json", "timeout_s": 5, "max_retries": 1},
            "ml": {"num_epochs": 1, "max_length": 32, "batch_size": 16, "learning_rate": 1e-3},
            "fusion": {"num_epochs": 1, "warmup_epochs": 5}, **extra}


def frame(n: int = 60, seed: int = 3) -> pd.DataFrame:
    return pd.DataFrame([{"text": t, "topic": ls[0]} for t, ls in make_tickets(n, seed=seed)])


def long_text(i: int, keyword: str) -> str:
    """A 100,000-character ticket whose keyword sits at the start (inside what the encoder keeps)."""
    head = f"ticket L{i}: {keyword} please help "
    return (head + "the order was not working again " * (LONG // 30))[:LONG]


# ------------------------------------------------------------------------------------ training data
def _bad(df_change, message: str, **config):
    return pytest.param(df_change, message, config, id=message[:40])


def _set(row: int, col: str, value):
    def change(df: pd.DataFrame) -> pd.DataFrame:
        df = df.astype({col: object})
        df.at[row, col] = value
        return df
    return change


def one_hot(df: pd.DataFrame, dtype: type = int) -> pd.DataFrame:
    """The same rows with one 0/1 column per label instead of the class-name column."""
    return pd.DataFrame({"text": df.text, **{lab: (df.topic == lab).astype(dtype) for lab in LABELS}})


BAD_FRAMES = [
    _bad(_set(2, "text", "  \t\n "), "column 'text', row 2: text is empty or only whitespace ('  \\t\\n ')."),
    _bad(_set(4, "text", ""), "column 'text', row 4: text is empty or only whitespace ('')."),
    _bad(_set(1, "text", None), "column 'text', row 1: expected a non-empty string, got None (NoneType)."),
    _bad(_set(5, "text", 12345), "column 'text', row 5: expected a non-empty string, got 12345 (int)."),
    _bad(lambda df: df.assign(topic=[i % 3 for i in range(len(df))]),
         "column 'topic', row 0: expected a class name (string), got 0 (int); the LLM is prompted with class names, "
         "so map codes to words."),
    _bad(lambda df: df.assign(topic=[float(i % 2) for i in range(len(df))]),
         "column 'topic', row 0: expected a class name (string), got 0.0 (float); the LLM is prompted with class "
         "names, so map codes to words."),
    _bad(_set(7, "topic", np.nan), "column 'topic', row 7: label is missing (NaN)."),
    _bad(_set(8, "topic", "   "), "column 'topic', row 8: class name is empty."),
    _bad(lambda df: df.set_axis(["text", "text"], axis=1),
         "columns: duplicate column names ['text']; each column name must appear once."),
    _bad(lambda df: df.rename(columns={"topic": "label"}),
         "column 'topic': not found in the data (columns: ['text', 'label'])."),
    _bad(lambda df: df.assign(topic="billing"),
         "columns ['topic']: only one class ('billing') in the data; a classifier needs at least 2."),
    _bad(lambda df: df.iloc[:0], "data: 0 rows; training needs labelled rows."),
    _bad(lambda df: pd.DataFrame({"text": pd.Series([], dtype=object), "topic": pd.Series([], dtype=object)}),
         "data: 0 rows; training needs labelled rows."),
    _bad(_set(9, "topic", "refunds"),
         "columns ['topic']: label 'refunds' is seen 1 time(s); each label needs at least 2 examples."),
    _bad(lambda df: df.iloc[:20],
         "data: 20 rows is too few for fusion_split=0.4, ml.val_split=0.1 and fusion.val_split=0.25 with 3 labels; "
         "at least 50 rows are needed."),
    _bad(lambda df: one_hot(df).assign(shipping=1),
         "columns ['billing', 'shipping', 'technical'], row 0: multi-class one-hot row has several classes "
         "['billing', 'shipping']; exactly one must be 1.", label_columns=LABELS),
    _bad(lambda df: one_hot(df).assign(technical=0),
         "columns ['billing', 'shipping', 'technical'], row 1: multi-class one-hot row has no class; exactly one "
         "must be 1.", label_columns=LABELS),
    _bad(lambda df: one_hot(df).assign(billing="yes"),
         "column 'billing', row 0: expected 0 or 1, got 'yes'.", label_columns=LABELS, multi_label=True),
    _bad(lambda df: _set(3, "shipping", np.nan)(one_hot(df, float)),
         "column 'shipping', row 3: label is missing (NaN).", label_columns=LABELS, multi_label=True),
]


@pytest.mark.parametrize("change, message, config", BAD_FRAMES)
def test_bad_training_frame_fails_before_any_llm_request(server, tiny_roberta_dir, tmp_path, change, message,
                                                         config):
    """Each bad DataFrame is a DataError naming row/column/value, and the LLM server sees no request."""
    before = server.requests
    clf = AutoFusionClassifier(make_config(server, tiny_roberta_dir, tmp_path, **config))
    with pytest.raises(DataError) as info:
        clf.fit(change(frame()), progress=False)
    assert str(info.value) == message
    assert server.requests == before
    assert not hasattr(clf, "model_") and not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("data, message", [
    (TrainingData(texts=["a", "  ", "c", "d"], labels=["x", "y", "x", "y"],
                  classification_type=ClassificationType.MULTI_CLASS, label_names=["x", "y"]),
     "texts[1]: expected a non-empty string, got '  '."),
    (TrainingData(texts=["a", "b", "c", "d"], labels=["x", "y", "x", "z"],
                  classification_type=ClassificationType.MULTI_CLASS, label_names=["x", "y"]),
     "labels[3]: unknown label 'z'; label_names are ['x', 'y']."),
    ("not a frame", "data: expected a pandas DataFrame or TrainingData, got str."),
])
def test_bad_training_data_objects(server, tiny_roberta_dir, tmp_path, data, message):
    """TrainingData built by hand and non-frames get the same checks, before any LLM request."""
    before = server.requests
    with pytest.raises(DataError) as info:
        AutoFusionClassifier(make_config(server, tiny_roberta_dir, tmp_path)).fit(data, progress=False)
    assert str(info.value) == message and server.requests == before


def test_bad_eval_data_fails_before_any_llm_request(server, tiny_roberta_dir, tmp_path):
    """eval_data is checked as strictly as the training data, before any request."""
    before = server.requests
    bad = frame(20, seed=4).astype({"text": object})
    bad.at[3, "text"] = "   "
    with pytest.raises(DataError, match=r"^column 'text', row 3: text is empty or only whitespace \('   '\)\.$"):
        AutoFusionClassifier(make_config(server, tiny_roberta_dir, tmp_path)).fit(frame(), eval_data=bad,
                                                                                   progress=False)
    assert server.requests == before


def test_eval_data_with_an_unknown_label(server, tiny_roberta_dir, tmp_path):
    """A label in eval_data that training never saw is a DataError naming eval_data's column and row."""
    before = server.requests
    bad = frame(20, seed=4)
    bad.at[3, "topic"] = "refunds"
    with pytest.raises(DataError, match=r"^eval_data: column 'topic', row 3: unknown label 'refunds'"):
        AutoFusionClassifier(make_config(server, tiny_roberta_dir, tmp_path)).fit(frame(), eval_data=bad,
                                                                                   progress=False)
    assert server.requests == before


def test_unknown_label_in_test_data_through_fusion_train(server, tiny_roberta_dir, tmp_path):
    """fusion-train --test-data with a label training never saw: one `Error:` line naming the row, exit 1."""
    frame(60).to_csv(tmp_path / "train.csv", index=False)
    test = frame(20, seed=4)
    test.at[3, "topic"] = "refunds"
    test.to_csv(tmp_path / "test.csv", index=False)
    before = server.requests
    result = CliRunner().invoke(train_main, [
        "--data", str(tmp_path / "train.csv"), "--test-data", str(tmp_path / "test.csv"), "--label-columns", "topic",
        "--ml-model", tiny_roberta_dir, "--llm-provider", "openai-compatible", "--llm-base-url", server.base_url,
        "--llm-model", "fake", "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert server.requests == before
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stderr.startswith("Error: eval_data: column 'topic', row 3: unknown label 'refunds'")


@pytest.mark.parametrize("payload, where", [
    (b"text,topic\nok invoice,billing\ncaf\xe9 parcel,shipping\n", "at byte 33 (line 3): b'\\xe9'"),
    (b"text,topic\n\xff\xfeinvoice,billing\n", "at byte 11 (line 2): b'\\xff'"),
    (b"text,topic\ncut \xe2\x82,billing\n", "at byte 15 (line 2): b'\\xe2'"),
])
def test_non_utf8_csv_through_fusion_train(server, tiny_roberta_dir, tmp_path, payload, where):
    """fusion-train --data bad.csv: one `Error:` line naming the file, byte and line; exit 1; no LLM request."""
    path = tmp_path / "bad.csv"
    path.write_bytes(payload)
    before = server.requests
    result = CliRunner().invoke(train_main, [
        "--data", str(path), "--label-columns", "topic", "--ml-model", tiny_roberta_dir,
        "--llm-provider", "openai-compatible", "--llm-base-url", server.base_url, "--llm-model", "fake",
        "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert result.stderr == f"Error: {path}: not valid UTF-8 {where}; re-save the file as UTF-8.\n"
    assert "Traceback" not in result.output and server.requests == before
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- a fit with 100k-char texts
@pytest.fixture(scope="module")
def fitted(server, tiny_roberta_dir, tmp_path_factory):
    """A real tiny fit whose data holds six 100,000-character texts; its exported bundle beside it."""
    tmp = tmp_path_factory.mktemp("reliability_input")
    df = frame(120, seed=3)
    longs = pd.DataFrame([{"text": long_text(i, kw), "topic": lab}
                          for i, (kw, lab) in enumerate([("invoice", "billing"), ("parcel", "shipping"),
                                                         ("crash", "technical")] * 2)])
    df = pd.concat([df, longs], ignore_index=True)
    before = len(server.bodies)
    clf = AutoFusionClassifier(make_config(server, tiny_roberta_dir, tmp)).fit(df, progress=False)
    fit_bodies = server.bodies[before:]
    bundle_dir = clf.export(tmp / "bundle", progress=False)
    bundle = load_bundle(bundle_dir, providers="cpu", cache_dir=tmp / "cache")
    yield clf, bundle, fit_bodies, tmp
    bundle.close()


def _user_texts(bodies: list[dict]) -> list[str]:
    return [next(m["content"] for m in b["messages"] if m["role"] == "user") for b in bodies]


def test_long_texts_train_and_predict(fitted, server):
    """100,000-character texts are truncated for the encoder: fit, predict and the bundle all answer."""
    clf, bundle, bodies, _ = fitted
    assert clf.max_length_ == 32
    sent = [len(t) for t in _user_texts(bodies)]
    assert max(sent) > LLM_MAX_TEXT_CHARS, "a long text is in the fusion split, so the LLM was asked about it"
    texts = [long_text(10, "refund"), long_text(11, "courier"), "ticket 1: short one invoice"]
    a, b = clf.predict(texts), bundle.predict(texts)
    assert a.probabilities.shape == (3, 3) and np.isfinite(a.probabilities).all()
    assert a.predictions == b.predictions
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
    assert b.metadata["degraded"] == []


def test_long_text_prompt_is_capped(fitted, server):
    """The LLM is not sent 100,000 characters of one text: the prompt's text is capped."""
    clf, _, bodies, _ = fitted
    assert max(len(t) for t in _user_texts(bodies)) < 20_000


# ------------------------------------------------------------------------------------ prediction input
PREDICT_ERRORS = [
    ("one text", "texts: expected a list of strings, got a single str; pass [text] instead."),
    (b"one text", "texts: expected a list of strings, got a single bytes; pass [text] instead."),
    (None, "texts: expected a list of strings, got None."),
    (42, "texts: expected a list of strings, got int."),
    (["fine", None], "texts[1]: expected a string, got None (NoneType)."),
    (["fine", "also fine", 3.5], "texts[2]: expected a string, got 3.5 (float)."),
    ([b"bytes"], "texts[0]: expected a string, got b'bytes' (bytes)."),
    ([["nested"]], "texts[0]: expected a string, got ['nested'] (list)."),
    (["ok", np.nan], "texts[1]: expected a string, got nan (float)."),
]


@pytest.mark.parametrize("which", ["classifier", "bundle"])
@pytest.mark.parametrize("texts, message", PREDICT_ERRORS, ids=[repr(t)[:20] for t, _ in PREDICT_ERRORS])
def test_prediction_input_errors(fitted, server, which, texts, message):
    """predict and predict_proba refuse bad input with one message (index named), before any LLM request."""
    clf, bundle, _, _ = fitted
    model = clf if which == "classifier" else bundle
    before = server.requests
    with pytest.raises(DataError) as info:
        model.predict(texts)
    assert str(info.value) == message
    with pytest.raises(DataError) as info:
        model.predict_proba(texts)
    assert str(info.value) == message
    assert server.requests == before


@pytest.mark.parametrize("which", ["bundle", "classifier"])
def test_unknown_true_label_at_prediction(fitted, server, which):
    """predict(texts, labels=...) with a label the model does not know: a DataError naming it, no LLM request."""
    clf, bundle, _, _ = fitted
    model = clf if which == "classifier" else bundle
    before = server.requests
    with pytest.raises(DataError, match=r"^labels\[1\]: unknown label 'refunds'; expected one of \['billing', "
                                        r"'shipping', 'technical'\]\.$"):
        model.predict(["ticket 1: invoice", "ticket 2: parcel"], labels=["billing", "refunds"])
    assert server.requests == before


@pytest.mark.parametrize("which", ["classifier", "bundle"])
def test_empty_prediction_input(fitted, server, which):
    """An empty list (or tuple) gives an empty result of shape (0, C) and no LLM request."""
    clf, bundle, _, _ = fitted
    model = clf if which == "classifier" else bundle
    before = server.requests
    result = model.predict([])
    assert result.predictions == [] and result.probabilities.shape == (0, 3) and result.labels == LABELS
    assert model.predict_proba(()).shape == (0, 3)
    assert server.requests == before


@pytest.mark.parametrize("which", ["classifier", "bundle"])
def test_sequence_kinds_are_accepted(fitted, which):
    """A tuple, a pandas Series and a numpy array of strings are lists of texts too, with equal answers."""
    clf, bundle, _, _ = fitted
    model = clf if which == "classifier" else bundle
    texts = [t for t, _ in make_tickets(5, seed=21)]
    want = model.predict(texts).probabilities
    for kind in (tuple(texts), pd.Series(texts), np.array(texts)):
        np.testing.assert_array_equal(model.predict(kind).probabilities, want)


def test_blank_text_at_prediction_is_answered(fitted):
    """An empty or whitespace-only text at prediction time is answered (not a crash), the same by both."""
    clf, bundle, _, _ = fitted
    texts = ["", "   ", "ticket 3: invoice"]
    a, b = clf.predict(texts), bundle.predict(texts)
    assert a.predictions == b.predictions
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)


# ------------------------------------------------------------------------------- LLM down at serving
def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_llm_down_ml_only_serves_the_no_llm_head(fitted, tmp_path):
    """Nothing listening: ml_only answers every row with the combiner's no-LLM answer (= PyTorch's head with
    llm_present=0, to 1e-4), flags each row as degraded with its reason; 'raise' is an LLMError that names the
    way out. Every row asks the LLM (llm_gate="off"), so every row degrades."""
    clf, _, _, tmp = fitted
    texts = [t for t, _ in make_tickets(6, seed=51)] + [long_text(20, "crash")]
    ml = encoder_logits(clf.model_.encoder, clf.tokenizer_, texts, clf.max_length_)
    lexical = clf.lexical_.logits(texts) if getattr(clf, "lexical_", None) is not None else None
    no_llm = head_logits(clf.model_.mlp, ml, lexical, None)
    url = _dead_url()
    with load_bundle(tmp / "bundle", providers="cpu", cache_dir=tmp_path, llm_base_url=url,
                     on_llm_error="ml_only", llm_gate="off") as bundle:
        result = bundle.predict(texts)
    np.testing.assert_allclose(result.probabilities, softmax(no_llm), atol=1e-4)
    assert result.metadata["degraded"] == list(range(7))
    assert all(reason.startswith(f"LLM request for text {i} ") and (
        "connection failed" in reason or "failed 7 times in a row" in reason)  # or the circuit breaker opened
        for i, reason in result.metadata["degraded_reasons"].items())
    with load_bundle(tmp / "bundle", providers="cpu", cache_dir=tmp_path, llm_base_url=url, llm_gate="off") as bundle:
        with pytest.raises(LLMError) as info:
            bundle.predict(texts[:2])
    assert str(info.value).startswith("LLM request for text 0 ")
    assert str(info.value).endswith("load it with on_llm_error='ml_only' to answer without the LLM (the no-LLM "
                                    "head) when the LLM cannot be reached.")
