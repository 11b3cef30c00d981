"""Hostile bundles and inputs at the runtime: each becomes one clear BundleError or DataError naming the file and
field or the text index, and fusion-predict prints it as one `Error:` line, never a traceback.

The bundle is a real fp32 export of the tiny fitted model; each test copies it and adds one defect
(tests/support/hostile.py re-hashes the files, so the defect itself is what the runtime meets).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer

from tests.support import hostile
from tests.support.llm_server import FakeLLMServer
from textclassify.runtime import load_bundle
from textclassify.runtime.errors import BundleError, DataError
from textclassify.runtime.predict_cli import main as predict_main
from textclassify.runtime.tokenization import BundleTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = ["my invoice is wrong", "the parcel never arrived", "the app crashes at login"]


@pytest.fixture(scope="module")
def exported(tiny_roberta_dir, tmp_path_factory) -> Path:
    return hostile.export_small_bundle(tiny_roberta_dir, tmp_path_factory.mktemp("hostile") / "bundle")


@pytest.fixture
def bundle_copy(exported, tmp_path) -> Path:
    return hostile.copy_bundle(exported, tmp_path / "bundle")


def run_cli(bundle: Path, tmp_path: Path, server: FakeLLMServer, *extra: str, rows: list[str] | None = None,
            suffix: str = ".jsonl", raw: str | None = None):
    source = tmp_path / f"in{suffix}"
    if raw is not None:
        source.write_text(raw, encoding="utf-8", errors="surrogatepass")
    else:
        source.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows or TEXTS), encoding="utf-8")
    args = ["--bundle", str(bundle), "--input", str(source), "--output", str(tmp_path / "out.csv"),
            "--llm-base-url", server.base_url, "--cache-dir", str(tmp_path / "cache"), *extra]
    return CliRunner().invoke(predict_main, args)


def one_error_line(result) -> str:
    """The CLI failed with exactly one `Error: ...` line on stderr (no traceback) -- returns it."""
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------ 11: deep manifest
def test_deeply_nested_manifest_is_a_bundle_error(bundle_copy, tmp_path, llm_server) -> None:
    """200,000 nested arrays: BundleError 'manifest.json: nested too deeply.' (was RecursionError)."""
    (bundle_copy / "manifest.json").write_text("[" * 200_000 + "]" * 200_000, encoding="utf-8")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy, cache_dir=None)
    assert str(info.value) == "manifest.json: nested too deeply."
    assert one_error_line(run_cli(bundle_copy, tmp_path, llm_server)) == "Error: manifest.json: nested too deeply."


# ------------------------------------------------------------------------------------ 12: tokenizer regex
def test_catastrophic_regex_is_refused_at_load(bundle_copy) -> None:
    """A pre-tokenizer regex that backtracks without bound is found at load, not on a user's text."""
    hostile.catastrophic_regex(bundle_copy)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy, cache_dir=None)
    assert str(info.value).startswith("tokenizer.json: a regular expression of the tokenizer ('(a+)+$') fails on "
                                      "ordinary text (Onig: Regex search error: retry-limit-in-match over")


def test_tokenizer_panic_is_a_data_error_naming_the_text(exported) -> None:
    """A panic inside the tokenizers library (a BaseException) is a DataError naming the text's index."""
    data = json.loads((exported / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated",
                             "invert": False}
    tokenizer = BundleTokenizer(Tokenizer.from_str(json.dumps(data)), 64, 1)
    with pytest.raises(DataError) as info:
        tokenizer.encode(["fine", "a" * 40 + "!", "also fine"])
    assert str(info.value).startswith("texts[1]: the bundle's tokenizer failed on this text (Onig: Regex search "
                                      "error: retry-limit-in-match over")


# ------------------------------------------------------------------------------------ 13: huge texts
@pytest.mark.timeout(60)
def test_huge_text_is_cut_before_tokenising(exported, llm_server) -> None:
    """A 5 MB text is cut to max_text_chars (100,000 by default) before tokenising: same answer as the cut text."""
    huge = "refund my invoice please " * 220_000
    with load_bundle(exported, llm_base_url=llm_server.base_url, cache_dir=None) as bundle:
        start = time.monotonic()
        full = bundle.predict_proba([huge])
        elapsed = time.monotonic() - start
        np.testing.assert_allclose(full, bundle.predict_proba([huge[:100_000]]), rtol=0, atol=1e-6)
    print(f"5.5 MB text answered in {elapsed:.2f} s")


def test_huge_text_refused_when_configured(exported, llm_server) -> None:
    """long_texts='raise' refuses a text over max_text_chars, naming its index, before any LLM request."""
    with load_bundle(exported, llm_base_url=llm_server.base_url, cache_dir=None, max_text_chars=1000,
                     long_texts="raise") as bundle:
        with pytest.raises(DataError) as info:
            bundle.predict(["short", "x" * 1001])
    assert str(info.value) == ("texts[1]: 1001 characters is more than max_text_chars 1000; shorten it, or load "
                               "the bundle with long_texts='truncate'.")
    assert llm_server.requests == 0


# ------------------------------------------------------------------------------------ 14: wrong containers
@pytest.mark.parametrize("texts,message", [
    (pd.DataFrame({"text": TEXTS}), "texts: expected a list of strings, got a DataFrame; iterating it would give "
                                    "its column names. Pass one column as a list, e.g. df[\"text\"].tolist()."),
    ({"a": "my invoice"}, "texts: expected a list of strings, got a dict (a mapping would give its keys); pass "
                          "list(d.values()) or the texts themselves as a list."),
    (set(TEXTS), "texts: expected a list of strings, got a set, which has no order to match the answers to; pass "
                 "a list (e.g. sorted(texts))."),
])
def test_dataframe_mapping_and_set_are_refused(exported, llm_server, texts, message) -> None:
    """A DataFrame classified its column name, a dict its keys, a set came back in arbitrary order: all refused."""
    with load_bundle(exported, llm_base_url=llm_server.base_url, cache_dir=None) as bundle:
        with pytest.raises(DataError) as info:
            bundle.predict(texts)
    assert str(info.value) == message
    assert llm_server.requests == 0


# ------------------------------------------------------------------------------------ 15: NaN logits
def test_nan_logits_raise_naming_the_text(bundle_copy, llm_server) -> None:
    """A graph giving NaN: DataError in 'raise' mode, never the first label with NaN probabilities."""
    hostile.nan_fusion(bundle_copy)
    with load_bundle(bundle_copy, llm_base_url=llm_server.base_url, cache_dir=None) as bundle:
        with pytest.raises(DataError) as info:
            bundle.predict(TEXTS)
        with pytest.raises(DataError):
            bundle.predict_proba(TEXTS)
    assert str(info.value).startswith("texts[0]: the model gave non-finite scores (NaN or infinity) for this text "
                                      "(3 of 3 texts affected); no label is given.")


def test_nan_logits_are_degraded_rows_without_a_label(bundle_copy, llm_server, tmp_path) -> None:
    """ml_only: each NaN row has prediction None and is degraded; the CLI summary names them, counts no label."""
    hostile.nan_fusion(bundle_copy)
    with load_bundle(bundle_copy, llm_base_url=llm_server.base_url, cache_dir=None,
                     on_llm_error="ml_only") as bundle:
        result = bundle.predict(TEXTS)
    assert result.predictions == [None, None, None]
    assert result.metadata["degraded"] == [0, 1, 2]
    assert result.metadata["degraded_reasons"][1] == ("the model gave non-finite scores (NaN or infinity) for this "
                                                      "text; no label is given")
    res = run_cli(bundle_copy, tmp_path, llm_server, "--on-llm-error", "ml_only")
    assert res.exit_code == 0, res.stderr
    summary = json.loads((tmp_path / "out.csv.summary.json").read_text(encoding="utf-8"))
    assert summary["errors"] == [0, 1, 2] and summary["error_rows"] == 3
    assert sum(summary["prediction_counts"].values()) == 0


# ------------------------------------------------------------------------------------ 16: raw exceptions
def _pad_token_list(bundle: Path) -> None:
    def change(m):
        m["tokenizer"]["pad_token"] = ["x"]
        m["tokenizer"].pop("pad_token_id", None)
    hostile.rehash(bundle, change)


def _hot_temperature(bundle: Path) -> None:
    hostile.rehash(bundle, lambda m: m["llm"].update(temperature="hot"))


@pytest.mark.parametrize("defect,expected", [
    (hostile.four_labels, "Error: calibrator.onnx: ONNX Runtime refused the warm-up run ([ONNXRuntimeError] : 2 : "
                          "INVALID_ARGUMENT : Got invalid dimensions for input: llm_scores_raw for the following "
                          "indices index: 1 Got: 4 Expected: 3"),
    (hostile.wide_calibrator, "Error: calibrator.onnx, fusion.onnx: ONNX Runtime refused the warm-up run"),
    (_pad_token_list, "Error: manifest.json: 'tokenizer.pad_token' must be a string (got ['x'])."),
    (_hot_temperature, "Error: manifest.json 'llm': llm.temperature: expected a number in [0, 2], got 'hot'."),
    (hostile.token_past_embedding, "Error: encoder.onnx: ONNX Runtime failed on texts[1] ([ONNXRuntimeError] : 2 : "
                                   "INVALID_ARGUMENT : Non-zero status code returned while running Gather node."),
], ids=["four_labels", "wide_calibrator", "pad_token_list", "temperature_hot", "token_past_embedding"])
def test_broken_bundles_give_one_error_line(bundle_copy, tmp_path, llm_server, defect, expected) -> None:
    """Each defect is a BundleError at load or predict, and fusion-predict prints it as one `Error:` line."""
    defect(bundle_copy)
    with pytest.raises(BundleError) as info:
        with load_bundle(bundle_copy, llm_base_url=llm_server.base_url, cache_dir=None) as bundle:
            bundle.predict(["my invoice", "zzqq zzqq", "parcel"])
    assert ("Error: " + " ".join(str(info.value).split())).startswith(expected)
    line = one_error_line(run_cli(bundle_copy, tmp_path, llm_server, rows=["my invoice", "zzqq zzqq", "parcel"]))
    assert line.startswith(expected)


def test_lone_surrogate_text_is_a_data_error(exported, llm_server, tmp_path) -> None:
    """'\\ud800' in a text (TypeError with no index before) and in a JSONL line: DataError naming index / line."""
    with load_bundle(exported, llm_base_url=llm_server.base_url, cache_dir=None) as bundle:
        with pytest.raises(DataError) as info:
            bundle.predict(["fine", "bad \ud800 text"])
    assert str(info.value) == ("texts[1]: not valid Unicode (a lone surrogate '\\ud800' at character 4); fix or drop "
                               "this text.")
    raw = '{"text": "fine"}\n{"text": "bad \\ud800 text"}\n'
    line = one_error_line(run_cli(exported, tmp_path, llm_server, raw=raw))
    assert line == (f"Error: {tmp_path / 'in.jsonl'} line 2: 'text': not valid Unicode (a lone surrogate '\\ud800' "
                    "at character 4); fix or drop this text.")
