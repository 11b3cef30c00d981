"""The lexical component: TF-IDF (word 1-2-grams) + logistic regression, giving logits [n, C] beside the encoder.

On small labelled sets it is often the strongest single model (measured: 0.776 accuracy on 600 short
statements where the fine-tuned MiniLM reached 0.712). It is linear in the TF-IDF features, so it is
stored without pickle (vocabulary, idf, coefficients) and exported as lexical.onnx with the same numbers.

Text is case-folded with `fold_case` before scikit-learn sees it: per character, as ONNX Runtime's
StringNormalizer does under the C.UTF-8 locale. Python's `str.lower` differs from it in two places
(U+0130 becomes "i" plus a combining dot, and a word-final capital sigma becomes the final form), which
changed the TF-IDF rows of 548 of 1,006 mixed-script texts; with `fold_case` the graph and scikit-learn
agree on all of them. Sublinear tf is not used: skl2onnx's conversion of it differed on 693 of those rows.

Character n-grams are not used. Adding char 2-5-grams to the word 1-2-grams lowered this model's test
log-loss by 0.04-0.06 and raised its accuracy by 0.7-3.7 points on the movie reviews at 300-1,200 training
texts (`benchmarks/accuracy.py --char-ngrams`), but the served model did not gain: at n 600, seeds 0-2, the
lexical model went from 0.653 / 0.684 to 0.668 / 0.708 (accuracy / macro-F1) and the fused model from
0.771 / 0.817 to 0.773 / 0.818 with the 60% LLM, from 0.849 / 0.876 to 0.842 / 0.871 with the 75% one (there,
seed 0 had served the MLP without them). The graph is a second obstacle: skl2onnx 1.20 refuses
analyzer="char_wb" and converts "char" with a "may not work" warning. Its character tokenizer (RE2 ".") drops
newlines and keeps whitespace runs that scikit-learn collapses to one space, so texts with tabs, newlines or
double spaces would get other n-grams in lexical.onnx than in scikit-learn; and its pad token "#" is itself a
character, so in a batch the shorter texts would gain n-grams such as "e#". Adding them needs a scikit-learn
analyzer that mirrors the graph's tokenizer, a pad token of two or more characters, a char branch in
lexical.onnx, and its own parity test.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

NGRAM_RANGE = (1, 2)
MAX_FEATURES = 50_000
C_GRID = (1.0, 4.0, 16.0)  # inverse regularisation strengths tried by cross-validation on the first fit
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
ONNX_LOCALE = "C.UTF-8"
_FOLD = {0x130: "i", 0x3A3: "\u03c3"}  # simple (per-character) lower case where str.lower() differs


def fold_case(text: str) -> str:
    """Lower case per character, as StringNormalizer(LOWER, C.UTF-8) does."""
    return text.translate(_FOLD).lower()


@functools.lru_cache(maxsize=1)
def onnx_token_exp() -> str:
    """Python's `\\w\\w+` as ONNX Runtime's RE2 spells it: every code point `re` calls a word character, as ranges.

    Written out rather than as `[\\p{L}\\p{N}_]`, because RE2 and Python each carry their own Unicode tables:
    ONNX Runtime 1.32's RE2 knows letters that Python 3.11's Unicode 14.0 leaves unassigned (5,010 code
    points, e.g. Kawi and CJK Extension H), and tokenised words containing them as one word where scikit-learn
    split them. The explicit class ties the graph to the Python that exports it, where its parity check runs
    scikit-learn.
    """
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if char.isalnum() or char == "_":  # CPython's definition of \w for str patterns
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    spelled = (f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return "[" + "".join(spelled) + "]{2,}"


class LexicalModel:
    """TF-IDF + logistic regression (multinomial, or one binary model per label) with linear logits."""

    def __init__(self, *, multi_label: bool, n_labels: int, c: float | None = None, seed: int = 0) -> None:
        self.multi_label, self.n_labels, self.c, self.seed = bool(multi_label), int(n_labels), c, int(seed)

    # ------------------------------------------------------------------------------- fit
    def _vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(ngram_range=NGRAM_RANGE, token_pattern=TOKEN_PATTERN, lowercase=True,
                               max_features=MAX_FEATURES, dtype=np.float32)

    def fit(self, texts: Sequence[str], targets: np.ndarray) -> LexicalModel:
        """Fit the vectorizer and the regression; C is chosen by 3-fold CV log-loss when not given."""
        folded = [fold_case(t) for t in texts]
        self.vectorizer_ = self._vectorizer().fit(folded)
        x = self.vectorizer_.transform(folded)
        if self.c is None:
            self.c = self._choose_c(x, targets)
        self.coef_, self.intercept_ = self._fit_linear(x, targets, self.c)
        return self

    def _fit_linear(self, x: Any, targets: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.linear_model import LogisticRegression

        n_features = x.shape[1]
        coef = np.zeros((self.n_labels, n_features), dtype=np.float64)
        intercept = np.zeros(self.n_labels, dtype=np.float64)
        if self.multi_label:
            for j in range(self.n_labels):
                y = targets[:, j]
                if y.min() == y.max():  # a label always (never) on in training: a constant logit
                    rate = np.clip(y.mean(), 0.01, 0.99)
                    intercept[j] = np.log(rate / (1 - rate))
                    continue
                lr = LogisticRegression(C=c, max_iter=2000, random_state=self.seed).fit(x, y)
                coef[j], intercept[j] = lr.coef_[0], lr.intercept_[0]
            return coef, intercept
        present = np.unique(targets)
        if len(present) == 1:
            intercept[:] = -5.0
            intercept[present[0]] = 5.0
            return coef, intercept
        lr = LogisticRegression(C=c, max_iter=2000, random_state=self.seed).fit(x, targets)
        if len(lr.classes_) == 2:  # binary: one coefficient row; logits [0, z] give the same softmax
            coef[lr.classes_[1]], intercept[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
        else:
            coef[lr.classes_], intercept[lr.classes_] = lr.coef_, lr.intercept_
            absent = np.setdiff1d(np.arange(self.n_labels), lr.classes_)
            intercept[absent] = intercept[lr.classes_].min() - 10.0  # never seen: never predicted
        return coef, intercept

    def _choose_c(self, x: Any, targets: np.ndarray) -> float:
        from textclassify.train.crossfit import log_loss_of_logits, make_folds

        folds = make_folds(targets, 3, self.seed, self.multi_label)
        losses = []
        for c in C_GRID:
            oof = np.zeros((x.shape[0], self.n_labels), dtype=np.float64)
            for test_idx in folds:
                train_idx = np.setdiff1d(np.arange(x.shape[0]), test_idx)
                coef, intercept = self._fit_linear(x[train_idx], targets[train_idx], c)
                oof[test_idx] = x[test_idx] @ coef.T + intercept
            losses.append(log_loss_of_logits(oof, targets, self.multi_label))
        return float(C_GRID[int(np.argmin(losses))])

    # --------------------------------------------------------------------------- predict
    def features(self, texts: Sequence[str]) -> Any:
        return self.vectorizer_.transform([fold_case(t) for t in texts])

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Lexical logits [n, C] (softmax / sigmoid give the regression's probabilities)."""
        if len(texts) == 0:
            return np.zeros((0, self.n_labels), dtype=np.float32)
        return np.asarray(self.features(texts) @ self.coef_.T + self.intercept_, dtype=np.float32)

    # ------------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Everything `from_dict` needs, as JSON-ready lists (no pickle)."""
        vocab = self.vectorizer_.vocabulary_
        terms = sorted(vocab, key=vocab.__getitem__)
        return {"multi_label": self.multi_label, "n_labels": self.n_labels, "c": self.c, "seed": self.seed,
                "terms": terms, "idf": self.vectorizer_.idf_.astype(float).tolist(),
                "coef": self.coef_.tolist(), "intercept": self.intercept_.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LexicalModel:
        model = cls(multi_label=d["multi_label"], n_labels=d["n_labels"], c=d["c"], seed=d["seed"])
        vec = model._vectorizer()
        vec.vocabulary_ = {term: i for i, term in enumerate(d["terms"])}
        vec.idf_ = np.asarray(d["idf"], dtype=np.float64)
        model.vectorizer_ = vec
        model.coef_ = np.asarray(d["coef"], dtype=np.float64)
        model.intercept_ = np.asarray(d["intercept"], dtype=np.float64)
        return model


def cross_fitted_lexical(base_texts: Sequence[str], base_targets: np.ndarray, fusion_texts: Sequence[str],
                         fusion_targets: np.ndarray, folds: Sequence[np.ndarray], *, multi_label: bool,
                         n_labels: int, seed: int) -> tuple[np.ndarray, LexicalModel]:
    """Out-of-fold lexical logits for the fusion split, and the model fitted on everything.

    Each fold's model learns from the base texts (stage 1's training rows) and the other folds, never
    from the fold it predicts; a text must not be in both. The regularisation strength is chosen once,
    on the base texts alone.
    """
    c = LexicalModel(multi_label=multi_label, n_labels=n_labels, seed=seed).fit(base_texts, base_targets).c
    fusion_texts = list(fusion_texts)
    oof = np.zeros((len(fusion_texts), n_labels), dtype=np.float32)
    for test in folds:
        train = np.setdiff1d(np.arange(len(fusion_texts)), test)
        model = LexicalModel(multi_label=multi_label, n_labels=n_labels, c=c, seed=seed).fit(
            list(base_texts) + [fusion_texts[i] for i in train],
            np.concatenate([base_targets, fusion_targets[train]]))
        oof[test] = model.logits([fusion_texts[i] for i in test])
    final = LexicalModel(multi_label=multi_label, n_labels=n_labels, c=c, seed=seed).fit(
        list(base_texts) + fusion_texts, np.concatenate([base_targets, fusion_targets]))
    return oof, final
