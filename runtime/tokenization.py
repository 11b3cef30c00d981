"""Tokenise with the `tokenizers` library alone, truncation and padding set from the manifest.

A tokenizer.json may carry its own padding and truncation (all-MiniLM-L6-v2's pads every text to
128), so both are overridden here: truncation to the manifest's `max_length`, no padding inside the
tokenizer, and padding to the longest text of each batch in `pad` -- the same ids and mask as
`tokenizer(texts, truncation=True, max_length=max_length, padding=True)` in transformers.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from textclassify.runtime import constants as K
from textclassify.runtime.errors import BundleError, ConfigError, DataError, first_line
from textclassify.runtime.manifest import BundleManifest, read_verified
from textclassify.runtime.sessions import padded_width
from textclassify.runtime.validation import (
    DEFAULT_MAX_TEXT_CHARS,
    LONG_TEXT_POLICIES,
    check_long_texts,
    short_repr,
)


class BundleTokenizer:
    """A `tokenizers.Tokenizer` configured for serving: truncate to `max_length`, pad per batch (right)."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_token_id: int, truncation: bool = True) -> None:
        self.max_length = int(max_length)
        self.pad_token_id = int(pad_token_id)
        self.truncation = bool(truncation)
        tokenizer.no_padding()
        if self.truncation:
            tokenizer.enable_truncation(self.max_length, stride=0, strategy="longest_first", direction="right")
        else:
            tokenizer.no_truncation()
        self._tokenizer = tokenizer

    @classmethod
    def from_manifest(cls, manifest: BundleManifest, *, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
                      long_texts: str = "truncate") -> BundleTokenizer:
        """Build from the bundle's verified tokenizer.json and the manifest's `tokenizer` block.

        Texts longer than `max_text_chars` characters are cut before tokenising (long_texts="truncate") or
        refused (long_texts="raise"). The file's regular expressions are tried on probe texts here, at load:
        one that backtracks without bound (such as `(a+)+$`) is a BundleError now, not a panic on a user's text.
        """
        check_long_text_arguments(max_text_chars, long_texts)
        settings = manifest.tokenizer
        name = settings["file"]
        data = read_verified(manifest, name)
        try:
            text = data.decode("utf-8")
            tokenizer = Tokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 -- tokenizers raises a plain Exception on a malformed file
            raise BundleError(f"{name}: not a valid tokenizers file ({first_line(e, 200)}).") from None
        _check_regexes(tokenizer, text, name)
        pad_token = settings.get("pad_token")
        if pad_token is not None and not isinstance(pad_token, str):
            raise BundleError(f"{K.MANIFEST_FILE}: 'tokenizer.pad_token' must be a string (got "
                              f"{short_repr(pad_token)}).")
        pad_id = settings.get("pad_token_id")
        if pad_id is None and pad_token is not None:
            pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise BundleError(f"{name}: the manifest names no pad token ('tokenizer.pad_token_id').")
        if pad_id >= tokenizer.get_vocab_size(with_added_tokens=True):
            raise BundleError(f"{name}: pad_token_id {pad_id} is outside the vocabulary "
                              f"({tokenizer.get_vocab_size(with_added_tokens=True)} tokens).")
        made = cls(tokenizer, manifest.max_length, pad_id, settings.get("truncation", True))
        made.max_text_chars, made.long_texts = max_text_chars, long_texts
        return made

    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    long_texts: str = "truncate"

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (special tokens added, truncated, not padded).

        A text longer than `max_text_chars` is cut to it first (or refused, with long_texts="raise"). A panic
        inside the tokenizers library (a Rust panic is a BaseException that `except Exception` misses) is a
        DataError naming the text."""
        texts = check_long_texts(list(texts), self.max_text_chars, self.long_texts)
        try:
            encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        except BaseException as e:  # noqa: BLE001 -- only the tokenizers panic is turned into a DataError
            if not _is_panic(e):
                raise
            raise self._locate_failure(texts, e) from None
        ids = [enc.ids for enc in encodings]
        if not self.truncation:
            for i, row in enumerate(ids):
                if len(row) > self.max_length:
                    raise DataError(f"texts[{i}]: {len(row)} tokens is more than max_length {self.max_length} "
                                    "and the bundle's tokenizer does not truncate.")
        return ids

    def _locate_failure(self, texts: list[str], error: BaseException) -> DataError:
        """Encode the texts one at a time to name the one the tokenizer fails on."""
        for i, text in enumerate(texts):
            try:
                self._tokenizer.encode(text, add_special_tokens=True)
            except BaseException as e:  # noqa: BLE001
                if not _is_panic(e):
                    raise
                return DataError(f"texts[{i}]: the bundle's tokenizer failed on this text ({first_line(e, 200)}); "
                                 "its tokenizer.json is unusable for such input.")
        return DataError(f"texts: the bundle's tokenizer failed on this batch ({first_line(error, 200)}).")

    def pad(self, ids: Sequence[Sequence[int]], *, multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad to the longest row (rounded up to `multiple_of`, capped at max_length): input_ids and
        attention_mask, both int64 [B, T]."""
        width = padded_width(max((len(row) for row in ids), default=0), multiple_of, self.max_length)
        input_ids = np.full((len(ids), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode and pad in one step (input_ids, attention_mask)."""
        return self.pad(self.encode(texts))


# Probe texts for a tokenizer's regular expressions: runs of one character (the letters the patterns name,
# and a few common ones) followed by a character that breaks the run -- what makes a nested quantifier such
# as `(a+)+$` backtrack. Onig gives up after its retry limit and the tokenizers library panics.
_PROBE_RUN = 64


def _check_regexes(tokenizer: Tokenizer, text: str, name: str) -> None:
    patterns = sorted(set(re.findall(r'"Regex"\s*:\s*"((?:[^"\\]|\\.)*)"', text)))
    if not patterns:
        return
    chars = {c for p in patterns for c in p if c.isalnum()} | set("a0 ")
    probes = [c * _PROBE_RUN + end for c in sorted(chars) for end in ("!", "")]
    try:
        tokenizer.encode_batch(probes, add_special_tokens=True)
    except BaseException as e:  # noqa: BLE001 -- only the tokenizers panic is turned into a BundleError
        if not _is_panic(e):
            raise
        shown = ", ".join(short_repr(p, 60) for p in patterns[:3])
        raise BundleError(f"{name}: a regular expression of the tokenizer ({shown}) fails on ordinary text "
                          f"({first_line(e, 200)}); refusing the tokenizer.") from None


def _is_panic(error: BaseException) -> bool:
    """A Rust panic surfaced by pyo3 (pyo3_runtime.PanicException, a BaseException)."""
    return type(error).__name__ == "PanicException"


def check_long_text_arguments(max_text_chars: object, long_texts: object) -> None:
    """ConfigError for a max_text_chars that is not a positive int or an unknown long_texts policy."""
    if isinstance(max_text_chars, bool) or not isinstance(max_text_chars, int) or max_text_chars < 1:
        raise ConfigError(f"'max_text_chars' must be a positive int (got {short_repr(max_text_chars)}).")
    if long_texts not in LONG_TEXT_POLICIES:
        raise ConfigError(f"'long_texts' must be one of {list(LONG_TEXT_POLICIES)} (got {short_repr(long_texts)}).")
