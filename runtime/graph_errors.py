"""ONNX Runtime failures while answering, turned into a BundleError that names the graph and the text.

ORT raises its own exception types (InvalidArgument, Fail, ...) with a message about a node. For the user
what matters is which bundle file refused which text: when a batch fails, each component graph is run again
on one text at a time (the failure path only) to name the first text it refuses.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from textclassify.runtime.errors import BundleError, one_line


def is_onnxruntime_error(error: BaseException) -> bool:
    """True for the exception types of onnxruntime's C++ layer."""
    return type(error).__module__.startswith("onnxruntime")


def run_checked(bundle: Any, texts: list[str]) -> Any:
    """`bundle._run(texts)`, with an ONNX Runtime failure raised as a BundleError naming graph and text index."""
    try:
        return bundle._run(texts)
    except Exception as e:  # noqa: BLE001 -- only ONNX Runtime's own errors are translated
        if not is_onnxruntime_error(e):
            raise
        raise locate_failure(bundle, texts, e) from None


def locate_failure(bundle: Any, texts: list[str], error: BaseException) -> BundleError:
    """The BundleError for `error`: the first component graph and text that fail on their own, if any does."""
    first = one_line(error, 300)
    try:
        ids = bundle._tokenizer.encode(texts)
        for step in bundle._components:
            model = bundle._model if step["name"] == "encoder" else bundle._graphs[step["name"]]
            for i in range(len(texts)):
                try:
                    bundle._run_component(model, step, texts, ids, np.array([i]))
                except Exception as e:  # noqa: BLE001
                    if not is_onnxruntime_error(e):
                        raise
                    return BundleError(
                        f"{model.name}: ONNX Runtime failed on texts[{i}] ({one_line(e, 300)}); the bundle's graph "
                        "does not accept this text's input (a token id past the embedding's rows is one cause).")
    except (AttributeError, KeyError, TypeError):
        pass  # a pipeline this locator does not know: report the batch
    return BundleError(f"ONNX Runtime failed while answering ({first}); the bundle's graphs do not fit its manifest "
                       "or each other.")


def load_error(manifest: Any, error: BaseException) -> BundleError:
    """The BundleError for an ONNX Runtime failure while a bundle warms up: the graphs and the manifest disagree
    (4 labels for a 3-wide graph, a calibrator emitting 4 columns). Names the files whose inputs it mentions."""
    first = one_line(error, 300)
    files = []
    for step in getattr(manifest, "pipeline", None) or []:
        names = list(step.get("inputs", {})) + list(step.get("outputs", {}))
        if any(f"input: {name} " in first or f"'{name}'" in first for name in names):
            files.append(step.get("file"))
    where = ", ".join(str(f) for f in files) if files else "the bundle's graphs"
    return BundleError(f"{where}: ONNX Runtime refused the warm-up run ({first}); the graphs do not fit the "
                       f"manifest's {len(manifest.labels)} labels or each other.")
