"""Offline fixtures: a tiny RoBERTa and its byte-level BPE tokenizer, built on the fly (no hub)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def build_tiny_roberta(texts: Sequence[str], out_dir: str | Path, max_length: int = 64,
                       vocab_size: int = 600, seed: int = 0) -> str:
    """Train a BPE tokenizer on `texts`, save it and a random 2-layer RoBERTa to `out_dir`."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(list(texts), vocab_size=vocab_size,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    fast = RobertaTokenizerFast(tokenizer_object=tok._tokenizer, model_max_length=max_length)
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=fast.vocab_size, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=max_length + 2, pad_token_id=fast.pad_token_id)
    RobertaForSequenceClassification(cfg).save_pretrained(out)
    return str(out)
