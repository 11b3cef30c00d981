"""The lexical component: TF-IDF + logistic regression, its JSON round trip, and lexical.onnx's parity."""
from __future__ import annotations

import json
import random
import re
import sys

import numpy as np
import pytest

from tests.support.data import LABELS, make_tickets
from textclassify.train.lexical import TOKEN_PATTERN, LexicalModel, fold_case

WORDS = ["good", "bad", "Movie", "film", "PLOT", "café", "naïve", "straße", "ÉCOLE", "İstanbul", "ΣΊΣΥΦΟΣ",
         "日本語", "x2", "a_b", "don't", "well-made", "über", "Ωmega", "ǅemal", "ﬁne", "Ⅻ", "²nd", "٣٤٥", "refund",
         "parcel", "crash", "INVOICE", "Tracking", "LOGIN",
         # letters of Unicode 15 (Kawi, CJK Extension H) between known words: a word character in RE2's tables
         # but unassigned in Python 3.11's, so "[\\p{L}\\p{N}_]" in the graph made one word of what Python split
         "refund\U00031350parcel", "crash\U00011F04\U00011F04login"]
PUNCT = list(".,;:!?()[]{}\"'-–—/\\@#$%^&*+=<>|~`…«»") + [" ", "  ", "\t", "\n"]


def hostile_text(rng: random.Random) -> str:
    """Known words in odd cases, random code points up to U+3000, punctuation and whitespace runs."""
    parts = []
    for _ in range(rng.randint(0, 30)):
        if rng.random() < 0.7:
            parts.append(rng.choice(WORDS))
        else:
            parts.append("".join(chr(rng.randint(0x20, 0x3000)) for _ in range(rng.randint(1, 6))))
        parts.append(rng.choice(PUNCT))
    return "".join(parts)


def hostile_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = [hostile_text(rng) for _ in range(n - 6)]
    return texts + ["", " ", "!!!", "a", "x" * 20_000, "good bad café " * 1_500]  # empty and 20,000+ chars


def fitted(multi_label: bool) -> tuple[LexicalModel, list[str]]:
    rows = make_tickets(300, seed=3, multi_label=multi_label)
    rng = random.Random(4)
    texts = [t + " " + hostile_text(rng) for t, _ in rows]
    if multi_label:
        y = np.array([[int(lab in ls) for lab in LABELS] for _, ls in rows])
    else:
        y = np.array([LABELS.index(ls[0]) for _, ls in rows])
    return LexicalModel(multi_label=multi_label, n_labels=3, seed=0).fit(texts, y), texts


def test_fold_case_is_per_character():
    """Dotted capital I and capital sigma fold to one character each, everything else as str.lower."""
    assert fold_case("İSTANBUL ΣΊΣΥΦΟΣ Straße") == "istanbul σίσυφοσ straße"


def test_lexical_model_learns_the_keywords():
    """On tickets, the lexical model alone reads the keyword signal."""
    model, _ = fitted(False)
    rows = make_tickets(200, seed=9)
    pred = model.logits([t for t, _ in rows]).argmax(axis=1)
    acc = np.mean(pred == np.array([LABELS.index(ls[0]) for _, ls in rows]))
    assert acc > 0.7 and model.c in (1.0, 4.0, 16.0)


@pytest.mark.parametrize("multi_label", [False, True])
def test_json_round_trip_gives_identical_logits(multi_label):
    """to_dict -> JSON -> from_dict reproduces the logits exactly (no pickle)."""
    model, texts = fitted(multi_label)
    again = LexicalModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.array_equal(model.logits(texts[:50]), again.logits(texts[:50]))


@pytest.mark.parametrize("multi_label", [False, True])
def test_onnx_graph_matches_scikit_learn_on_1000_hostile_texts(tmp_path, multi_label):
    """lexical.onnx gives scikit-learn's logits (atol 1e-4) and decisions on unicode, punctuation, empty, 20k chars."""
    from textclassify.export.lexical_onnx import export_lexical_onnx, run_lexical_onnx

    model, _ = fitted(multi_label)
    texts = hostile_texts(1000, seed=5)
    facts = export_lexical_onnx(model, tmp_path / "lexical.onnx", parity_texts=texts)
    assert facts["parity"]["decisions_equal"] == 1000 and facts["parity"]["max_abs_diff"] <= 1e-4
    got = run_lexical_onnx(tmp_path / "lexical.onnx", texts)
    expected = model.logits(texts)
    assert got.shape == (1000, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(run_lexical_onnx(tmp_path / "lexical.onnx", [""]), model.logits([""]), atol=1e-5)


def test_graph_tokenises_every_code_point_as_python_does():
    """Each code point inside a word, doubled, and alone before a capital: lexical.onnx's Tokenizer (after its
    StringNormalizer) gives the tokens of fold_case + TOKEN_PATTERN, whatever Unicode version RE2 carries."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from textclassify.export.lexical_onnx import INPUT_NAME, lexical_graph

    model, _ = fitted(False)
    proto = lexical_graph(model)
    tokenizer = next(node for node in proto.graph.node if node.op_type == "Tokenizer")
    pad = next(helper.get_attribute_value(a) for a in tokenizer.attribute if a.name == "pad_value").decode()
    proto.graph.output.append(helper.make_tensor_value_info(tokenizer.output[0], TensorProto.STRING, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    codes = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]  # surrogates: not UTF-8
    per_text = 64
    texts = [" ".join(f"ab{chr(c) * 2}cd {chr(c)}Z" for c in codes[i:i + per_text])
             for i in range(0, len(codes), per_text)]
    pattern = re.compile(TOKEN_PATTERN)
    differs = []
    for start in range(0, len(texts), 1024):
        batch = texts[start:start + 1024]
        tokens = session.run([tokenizer.output[0]], {INPUT_NAME: np.asarray(batch, dtype=object)})[0]
        for offset, (row, text) in enumerate(zip(tokens, batch)):
            if [t for t in row if t != pad] != pattern.findall(fold_case(text)):
                differs.append(start + offset)
    assert not differs, (f"{len(differs)} texts of {per_text} code points tokenise differently, the first "
                         f"from U+{codes[differs[0] * per_text]:04X}")


def test_parity_check_refuses_a_graph_that_differs(tmp_path):
    """A graph whose coefficients were changed is refused with the texts that differ."""
    from textclassify.export.lexical_onnx import export_lexical_onnx, lexical_parity

    model, texts = fitted(False)
    export_lexical_onnx(model, tmp_path / "lexical.onnx")
    model.coef_ = model.coef_ * -1.0
    with pytest.raises(ValueError, match=r"lexical.onnx differs from scikit-learn on \d+ of 40 texts: text 0"):
        lexical_parity(model, tmp_path / "lexical.onnx", texts[:40])
