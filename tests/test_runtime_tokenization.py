"""runtime.tokenization: the tokenizers-only tokenizer gives the ids and mask transformers gives in training."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.support.data import make_tickets
from tests.support.toy_bundle import read_manifest, write_manifest, write_toy_bundle
from textclassify.runtime.errors import BundleError, DataError
from textclassify.runtime.manifest import load_manifest
from textclassify.runtime.tokenization import BundleTokenizer

TEXTS = ["", "hi", "refund my card please", " ".join(["parcel late again"] * 40),
         "ünïcödé and emoji 🚀 text", "ticket 7: crash after update, login error urgent"] + \
        [t for t, _ in make_tickets(20, seed=5)]


def _hf(tiny_roberta_dir: str, texts: list[str], max_length: int) -> dict:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    return tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="np")


@pytest.mark.parametrize("max_length", [16, 64])
def test_matches_transformers(tiny_roberta_dir: str, max_length: int) -> None:
    """input_ids and attention_mask equal AutoTokenizer(truncation=True, max_length, padding=True)."""
    tok = BundleTokenizer(Tokenizer.from_file(str(Path(tiny_roberta_dir) / "tokenizer.json")), max_length, 1)
    ids, mask = tok(TEXTS)
    want = _hf(tiny_roberta_dir, TEXTS, max_length)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"])
    assert ids.shape[1] <= max_length


def test_tokenizer_file_padding_and_truncation_overridden(tiny_roberta_dir: str, tmp_path: Path) -> None:
    """A tokenizer.json that pads everything to 128 (as MiniLM's does) still pads only to the longest text."""
    raw = Tokenizer.from_file(str(Path(tiny_roberta_dir) / "tokenizer.json"))
    raw.enable_padding(length=128, pad_id=1, pad_token="<pad>")
    raw.enable_truncation(512)
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = BundleTokenizer(Tokenizer.from_file(str(tmp_path / "tokenizer.json")), 32, 1)
    ids, mask = tok(TEXTS[:3])
    want = _hf(tiny_roberta_dir, TEXTS[:3], 32)
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"])
    assert ids.shape[1] < 32


def test_encode_then_pad_equals_call(tiny_roberta_dir: str) -> None:
    """Padding a subset of encoded rows gives the same arrays as tokenising that subset (per-batch padding)."""
    tok = BundleTokenizer(Tokenizer.from_file(str(Path(tiny_roberta_dir) / "tokenizer.json")), 64, 1)
    encoded = tok.encode(TEXTS)
    rows = [2, 5, 1]
    ids, mask = tok.pad([encoded[i] for i in rows])
    ids2, mask2 = tok([TEXTS[i] for i in rows])
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(mask, mask2)
    assert (ids[mask == 0] == 1).all()


def test_no_truncation_rejects_long_text(tiny_roberta_dir: str) -> None:
    """When the bundle says truncation is off, a text over max_length is a DataError naming its index."""
    tok = BundleTokenizer(Tokenizer.from_file(str(Path(tiny_roberta_dir) / "tokenizer.json")), 16, 1,
                          truncation=False)
    with pytest.raises(DataError, match=r"^texts\[3\]: \d+ tokens is more than max_length 16 and the bundle's "
                                        r"tokenizer does not truncate\.$"):
        tok.encode(TEXTS[:4])


@pytest.fixture
def toy_bundle(tiny_roberta_dir: str, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=["a", "b"], multi_label=False,
                     llm={"provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}, max_length=24)
    return out


def test_from_manifest_uses_manifest_settings(toy_bundle: Path, tiny_roberta_dir: str) -> None:
    """from_manifest reads the verified tokenizer.json, max_length and pad id from the manifest."""
    tok = BundleTokenizer.from_manifest(load_manifest(toy_bundle))
    assert (tok.max_length, tok.pad_token_id, tok.truncation) == (24, 1, True)
    np.testing.assert_array_equal(tok(TEXTS)[0], _hf(tiny_roberta_dir, TEXTS, 24)["input_ids"])


def test_pad_token_looked_up_by_name(toy_bundle: Path) -> None:
    """Without pad_token_id the manifest's pad_token is looked up in the vocabulary."""
    m = read_manifest(toy_bundle)
    del m["tokenizer"]["pad_token_id"]
    write_manifest(toy_bundle, m)
    assert BundleTokenizer.from_manifest(load_manifest(toy_bundle)).pad_token_id == 1


def test_pad_id_outside_vocabulary_refused(toy_bundle: Path) -> None:
    """A pad id the vocabulary does not have is a BundleError."""
    m = read_manifest(toy_bundle)
    m["tokenizer"]["pad_token_id"] = 10**6
    write_manifest(toy_bundle, m)
    with pytest.raises(BundleError, match=r"^tokenizer.json: pad_token_id 1000000 is outside the vocabulary"):
        BundleTokenizer.from_manifest(load_manifest(toy_bundle))


def test_malformed_tokenizer_file_refused(toy_bundle: Path) -> None:
    """A tokenizer.json that verifies (re-hashed) but is not a tokenizers file is a BundleError."""
    (toy_bundle / "tokenizer.json").write_text(json.dumps({"model": "nope"}), encoding="utf-8")
    write_manifest(toy_bundle, read_manifest(toy_bundle))
    with pytest.raises(BundleError, match="^tokenizer.json: not a valid tokenizers file"):
        BundleTokenizer.from_manifest(load_manifest(toy_bundle))


def test_copy_is_independent(toy_bundle: Path, tmp_path: Path) -> None:
    """Two tokenizers from the same bundle with different max_length do not share settings."""
    shutil.copytree(toy_bundle, tmp_path / "b2")
    m = read_manifest(tmp_path / "b2")
    m["max_length"] = 8
    write_manifest(tmp_path / "b2", m)
    t1 = BundleTokenizer.from_manifest(load_manifest(toy_bundle))
    t2 = BundleTokenizer.from_manifest(load_manifest(tmp_path / "b2"))
    assert t1(TEXTS)[0].shape[1] == 24 and t2(TEXTS)[0].shape[1] == 8
