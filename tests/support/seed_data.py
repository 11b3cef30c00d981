"""Small review and movie data for the seed's examples and README snippets (deterministic, offline)."""
from __future__ import annotations

import itertools

import pandas as pd

SENTIMENT = {
    "positive": ["love", "enjoyed", "adore", "recommend"],
    "negative": ["hate", "regret", "dislike", "avoid"],
    "neutral": ["used", "noticed", "read about", "looked at"],
}
THINGS = ["this movie", "the food", "my phone", "the hotel", "the book", "the service"]
GENRES = {
    "action": ["car chases", "a fist fight", "a sword battle"],
    "comedy": ["silly jokes", "a clumsy clown", "a funny mix-up"],
    "drama": ["a family in grief", "a bitter trial", "a long goodbye"],
    "horror": ["a masked killer", "a haunted cellar", "a ghost in the attic"],
    "romance": ["a love letter", "a first kiss", "a wedding"],
}


def sentiment_rows() -> list[tuple[str, str]]:
    """72 reviews, (text, one of positive / negative / neutral), 24 of each."""
    return [(f"I {verb} {thing}.", label) for label, verbs in SENTIMENT.items() for verb in verbs for thing in THINGS]


def movie_rows() -> list[tuple[str, list[str]]]:
    """120 plot lines, (text, genres): each genre alone and each pair, in several wordings."""
    names = list(GENRES)
    combos = [(g,) for g in names] + list(itertools.combinations(names, 2))
    rows = []
    for n, combo in enumerate(combos):
        for variant, opening in enumerate(("A film with", "A story about", "Expect", "It shows", "Watch",
                                           "A tale of", "Scenes of", "Mostly")):
            plot = " and ".join(GENRES[g][(variant + n) % 3] for g in combo)
            rows.append((f"{opening} {plot}.", sorted(combo)))
    return rows


def movie_frame() -> pd.DataFrame:
    """movie_rows() as a frame with one 0/1 column per genre."""
    return pd.DataFrame([{"text": t, **{g: int(g in gs) for g in GENRES}} for t, gs in movie_rows()])
