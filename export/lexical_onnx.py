"""lexical.onnx: text (string [B]) -> lexical_logits [B, C], from a fitted train.lexical.LexicalModel.

skl2onnx converts the TfidfVectorizer (StringNormalizer -> Tokenizer -> TfIdfVectorizer -> idf, L2
norm); a MatMul and an Add with the regression's coefficients follow. Converter options, each closing a
measured difference from scikit-learn (1,006 mixed-script texts: unicode, punctuation, empty, 20,000 chars):
- `locale` C.UTF-8: skl2onnx's default (en_US.UTF-8) makes ONNX Runtime refuse the session on a machine
  without that locale, and the "C" locale leaves non-ASCII capitals as they are;
- `tokenexp` train.lexical.onnx_token_exp(): Python's `\\w\\w+` in RE2, as explicit code point ranges;
  skl2onnx's default [a-zA-Z0-9_]+ dropped every non-ASCII word (928 of 1,006 rows differed), and
  [\\p{L}\\p{N}_] took RE2's newer Unicode tables, 5,010 code points more than Python 3.11's;
- the model folds case per character before scikit-learn (train.lexical.fold_case): 548 rows differed
  without it, none with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from textclassify.runtime.atomic import write_atomic
from textclassify.train.lexical import ONNX_LOCALE, LexicalModel, onnx_token_exp

INPUT_NAME, OUTPUT_NAME = "text", "lexical_logits"
OPSET = 17
PARITY_ATOL = 1e-4


def lexical_graph(model: LexicalModel) -> Any:
    """The ONNX ModelProto of `model` (not yet written)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = convert_sklearn(
        model.vectorizer_, "lexical", initial_types=[(INPUT_NAME, StringTensorType([None]))],
        options={TfidfVectorizer: {"tokenexp": onnx_token_exp(), "locale": ONNX_LOCALE}},
        target_opset={"": OPSET, "ai.onnx.ml": 3})
    graph = tfidf.graph
    features = graph.output[0].name
    weights = numpy_helper.from_array(model.coef_.T.astype(np.float32), "lexical_coef")
    bias = numpy_helper.from_array(model.intercept_.astype(np.float32), "lexical_intercept")
    graph.initializer.extend([weights, bias])
    graph.node.extend([
        helper.make_node("MatMul", [features, "lexical_coef"], ["lexical_linear"], name="lexical_matmul"),
        helper.make_node("Add", ["lexical_linear", "lexical_intercept"], [OUTPUT_NAME], name="lexical_add"),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", model.n_labels]))
    onnx.checker.check_model(tfidf)
    return tfidf


def export_lexical_onnx(model: LexicalModel, path: str | Path, *, parity_texts: list[str] | None = None
                        ) -> dict[str, Any]:
    """Write lexical.onnx atomically (after a parity check on `parity_texts` when given); returns graph facts."""

    path = Path(path)
    proto = lexical_graph(model)
    data = proto.SerializeToString()
    facts: dict[str, Any] = {"file": path.name, "inputs": {INPUT_NAME: {"dtype": "string", "shape": ["batch"]}},
                             "outputs": {OUTPUT_NAME: {"dtype": "float32", "shape": ["batch", model.n_labels]}},
                             "opset": OPSET, "locale": ONNX_LOCALE}
    if parity_texts:
        facts["parity"] = lexical_parity(model, data, parity_texts)
    write_atomic(path, data)
    return facts


def run_lexical_onnx(graph: bytes | str | Path, texts: list[str]) -> np.ndarray:
    import onnxruntime as ort

    source = graph if isinstance(graph, bytes) else str(graph)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(texts, dtype=object)})[0]


def lexical_parity(model: LexicalModel, graph: bytes | str | Path, texts: list[str]) -> dict[str, Any]:
    """Compare the graph's logits and decisions with scikit-learn's; raises ValueError listing what differs."""
    expected = model.logits(texts)
    got = run_lexical_onnx(graph, texts)
    diff = np.abs(expected - got).max(axis=1) if len(texts) else np.zeros(0)
    if model.multi_label:
        same = ((expected >= 0) == (got >= 0)).all(axis=1)
    else:
        same = expected.argmax(axis=1) == got.argmax(axis=1)
    report = {"n": len(texts), "max_abs_diff": float(diff.max(initial=0.0)),
              "decisions_equal": int(same.sum()), "atol": PARITY_ATOL}
    bad = np.where((diff > PARITY_ATOL) | ~same)[0]
    if len(bad):
        shown = ", ".join(f"text {i} ({texts[i][:40]!r}: max |diff| {diff[i]:.2e})" for i in bad[:5])
        raise ValueError(f"lexical.onnx differs from scikit-learn on {len(bad)} of {len(texts)} texts: {shown}")
    return report
