"""Fusion ensemble examples: a multi-class and a multi-label classifier trained with AutoFusionClassifier.

Run it from any folder:

    python examples/fusion_ensemble_example.py

The LLM comes from the environment variable TEXTCLASSIFY_LLM_PROVIDER. Its default, "local", is the
embedded llama.cpp server with SmolLM2 (fetched once by `make demo`): nothing is paid and no API key is
needed. Set it to deepseek, openai or gemini to use that service instead; the API key comes from
DEEPSEEK_API_KEY (OPENAI_API_KEY, GEMINI_API_KEY) and a gateway's URL from DEEPSEEK_BASE_URL
(OPENAI_BASE_URL, GEMINI_BASE_URL). The encoder is roberta-base, as in the seed (any hub name or local folder
works in its place). Models and reports go to ./fusion_output/.
"""
from __future__ import annotations

import itertools
import os

import pandas as pd

from textclassify import AutoFusionClassifier

LLM_PROVIDER = os.environ.get("TEXTCLASSIFY_LLM_PROVIDER", "local")

SUBJECTS = ["this movie", "the service", "the food", "my new phone", "the book", "this hotel"]
SENTIMENT_WORDS = {
    "positive": ["love", "really enjoyed", "am delighted with", "would recommend", "was impressed by"],
    "negative": ["hate", "was disappointed by", "regret buying", "would avoid", "was annoyed by"],
    "neutral": ["have no strong opinion on", "used", "looked at", "read about", "noticed"],
}
GENRE_PHRASES = {
    "action": ["explosions and car chases", "a heist full of fist fights", "a sword battle on a bridge"],
    "comedy": ["jokes that made everyone laugh", "a silly and funny plot", "a clumsy clown at a party"],
    "drama": ["a family torn apart by grief", "a moving story about loss", "a trial that divides a town"],
    "horror": ["a haunted house and a masked killer", "screams in a dark cellar", "a ghost in the attic"],
    "romance": ["two strangers falling in love", "a wedding and a love letter", "a kiss under the rain"],
}


def sentiment_data() -> pd.DataFrame:
    """Reviews with one class-name column, `sentiment`."""
    rows = [{"text": f"I {words} {subject}.", "sentiment": label}
            for label, phrases in SENTIMENT_WORDS.items() for words in phrases for subject in SUBJECTS]
    return pd.DataFrame(rows)


def movie_data() -> pd.DataFrame:
    """Plot summaries with one 0/1 column per genre (a movie may have several)."""
    genres = list(GENRE_PHRASES)
    combos = [(g,) for g in genres] + list(itertools.combinations(genres, 2))
    rows = []
    for n, combo in enumerate(combos):
        for variant in range(3):
            for opening in ("A film with", "The story offers", "Expect", "You will see"):
                plot = " and ".join(GENRE_PHRASES[g][(variant + n) % 3] for g in combo)
                rows.append({"text": f"{opening} {plot}.", **{g: int(g in combo) for g in genres}})
    return pd.DataFrame(rows)


def split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every fifth row is held out for testing."""
    test = df.index % 5 == 0
    return df[~test].reset_index(drop=True), df[test].reset_index(drop=True)


def multi_class_example() -> None:
    print("=== Multi-class: sentiment ===")
    train_df, test_df = split(sentiment_data())
    config = {
        "llm_provider": LLM_PROVIDER,
        "label_columns": ["sentiment"],
        "output_dir": "fusion_output/sentiment",
    }
    classifier = AutoFusionClassifier(config)
    classifier.fit(train_df)
    result = classifier.predict(test_df["text"].tolist(), test_df["sentiment"].tolist())
    for text, label in list(zip(test_df["text"], result.predictions))[:3]:
        print(f"{text!r} -> {label}")
    print(f"Accuracy: {result.metadata['metrics']['accuracy']:.4f}")


def multi_label_example() -> None:
    print("=== Multi-label: movie genres ===")
    genres = list(GENRE_PHRASES)
    train_df, test_df = split(movie_data())
    config = {
        "llm_provider": LLM_PROVIDER,
        "label_columns": genres,
        "multi_label": True,
        "output_dir": "fusion_output/genres",
    }
    classifier = AutoFusionClassifier(config)
    classifier.fit(train_df)
    true_labels = [[g for g in genres if row[g]] for _, row in test_df.iterrows()]
    result = classifier.predict(test_df["text"].tolist(), true_labels)
    for text, labels in list(zip(test_df["text"], result.predictions))[:3]:
        print(f"{text!r} -> {labels}")
    print(f"Subset accuracy: {result.metadata['metrics']['subset_accuracy']:.4f}")


if __name__ == "__main__":
    multi_class_example()
    multi_label_example()
