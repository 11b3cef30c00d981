"""Synthetic labelled data where an encoder and a keyword-reading fake LLM each carry part of the signal."""
from __future__ import annotations

import hashlib
import random

LABELS = ["billing", "shipping", "technical"]
KEYWORDS = {
    "billing": ["invoice", "refund", "charge", "payment", "card", "price"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "address", "late"],
    "technical": ["crash", "error", "login", "update", "screen", "password"],
}
STYLE = {"billing": "sir", "shipping": "hey", "technical": "urgent"}  # only a trained encoder learns these
FILLER = ["please", "help", "my", "the", "was", "today", "again", "order", "account", "thanks",
          "hello", "I", "need", "with", "this", "why", "is", "not", "working", "quickly"]


def make_tickets(n: int, seed: int, multi_label: bool = False) -> list[tuple[str, list[str]]]:
    """Texts with keywords (read by the fake LLM, with distractors) and style words (only the encoder)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.choice([1, 1, 2]) if multi_label else 1
        labels = rng.sample(LABELS, k)
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
        for lab in labels:
            words.append(rng.choice(KEYWORDS[lab]))
            if rng.random() < 0.7:
                words.append(STYLE[lab])
        if rng.random() < 0.5:
            other = rng.choice([lab for lab in LABELS if lab not in labels])
            words.append(rng.choice(KEYWORDS[other]))
        rng.shuffle(words)
        rows.append((f"ticket {i}: " + " ".join(words), sorted(labels)))
    return rows


def keyword_scores(text: str, labels: list[str] | None = None, multi_label: bool = False) -> dict[str, float]:
    """A deliberately imperfect LLM: keyword evidence plus deterministic per-text noise."""
    labels = labels or LABELS
    h = random.Random(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))
    words = text.split()
    raw = {lab: sum(w in words for w in KEYWORDS.get(lab, [])) + h.uniform(0, 1.2) for lab in labels}
    if multi_label:
        return {lab: round(min(0.99, 0.35 * v), 3) for lab, v in raw.items()}
    total = sum(raw.values())
    return {lab: round(v / total, 3) for lab, v in raw.items()}
