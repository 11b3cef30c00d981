"""Tokenise with the `tokenizers` library alone, truncation and padding set from the manifest.

A tokenizer.json may carry its own padding and truncation (all-MiniLM-L6-v2's pads every text to
128), so both are overridden here: truncation to the manifest's `max_length`, no padding inside the
tokenizer, and padding to the longest text of each batch in `pad` -- the same ids and mask as
`tokenizer(texts, truncation=True, max_length=max_length, padding=True)` in transformers.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from textclassify.runtime.errors import BundleError, DataError
from textclassify.runtime.manifest import BundleManifest, read_verified
from textclassify.runtime.sessions import padded_width


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
    def from_manifest(cls, manifest: BundleManifest) -> BundleTokenizer:
        """Build from the bundle's verified tokenizer.json and the manifest's `tokenizer` block."""
        settings = manifest.tokenizer
        name = settings["file"]
        data = read_verified(manifest, name)
        try:
            tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 -- tokenizers raises a plain Exception on a malformed file
            raise BundleError(f"{name}: not a valid tokenizers file ({e}).") from None
        pad_id = settings.get("pad_token_id")
        if pad_id is None and settings.get("pad_token") is not None:
            pad_id = tokenizer.token_to_id(settings["pad_token"])
        if pad_id is None:
            raise BundleError(f"{name}: the manifest names no pad token ('tokenizer.pad_token_id').")
        if pad_id >= tokenizer.get_vocab_size(with_added_tokens=True):
            raise BundleError(f"{name}: pad_token_id {pad_id} is outside the vocabulary "
                              f"({tokenizer.get_vocab_size(with_added_tokens=True)} tokens).")
        return cls(tokenizer, manifest.max_length, pad_id, settings.get("truncation", True))

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (special tokens added, truncated, not padded)."""
        ids = [enc.ids for enc in self._tokenizer.encode_batch(list(texts), add_special_tokens=True)]
        if not self.truncation:
            for i, row in enumerate(ids):
                if len(row) > self.max_length:
                    raise DataError(f"texts[{i}]: {len(row)} tokens is more than max_length {self.max_length} "
                                    "and the bundle's tokenizer does not truncate.")
        return ids

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
