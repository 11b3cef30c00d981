"""Hostile bundles for reliability tests: a real small export, then one defect at a time, re-hashed so that only
the defect (not a checksum) is what the runtime meets."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tokenizers import AddedToken, Tokenizer

from textclassify.runtime import constants as K
from textclassify.runtime.manifest import sha256_file


def export_small_bundle(tiny_roberta_dir: str, out: Path) -> Path:
    """An fp32 bundle exported from the tiny RoBERTa fitted-model fixture (three ticket labels)."""
    from tests.support.data import LABELS
    from tests.support.fitted_model import make_fitted_model
    from textclassify.export.api import export_bundle

    return export_bundle(make_fitted_model(tiny_roberta_dir, LABELS, multi_label=False), out, progress=False)


def copy_bundle(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def rehash(bundle: Path, change: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Apply `change` to manifest.json, then record every file's current sha256 and size in 'files'."""
    manifest = json.loads((bundle / K.MANIFEST_FILE).read_text(encoding="utf-8"))
    if change is not None:
        change(manifest)
    manifest["files"] = {name: {"sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}
                         for name in manifest["files"]}
    (bundle / K.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _rename_output(model: onnx.ModelProto, new: str) -> str:
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [new if o == out else o for o in node.output]
    return out


def nan_fusion(bundle: Path) -> None:
    """fusion.onnx multiplies its output by NaN: every row's logits are NaN."""
    path = bundle / "fusion.onnx"
    model = onnx.load(str(path))
    out = _rename_output(model, "fused_before_nan")
    model.graph.node.append(helper.make_node("Mul", ["fused_before_nan", "nan_constant"], [out]))
    model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan_constant"))
    onnx.save(model, str(path))
    rehash(bundle)


def wide_calibrator(bundle: Path) -> None:
    """calibrator.onnx emits one column more than the labels (its first column repeated)."""
    path = bundle / "calibrator.onnx"
    model = onnx.load(str(path))
    out = _rename_output(model, "calibrated_narrow")
    model.graph.node.extend([
        helper.make_node("Slice", ["calibrated_narrow", "zero", "one", "one"], ["first_column"]),
        helper.make_node("Concat", ["calibrated_narrow", "first_column"], [out], axis=1)])
    model.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "zero"),
                                    numpy_helper.from_array(np.array([1], np.int64), "one")])
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    onnx.save(model, str(path))
    rehash(bundle)


def four_labels(bundle: Path) -> None:
    """The manifest names 4 labels (and 4-wide shapes everywhere) for 3-wide graphs."""
    def widen(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: widen(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [4 if x == 3 else widen(x) for x in obj]
        return obj

    def change(m: dict[str, Any]) -> None:
        m["labels"] = m["labels"] + ["extra"]
        m["pipeline"] = widen(m["pipeline"])

    rehash(bundle, change)


def token_past_embedding(bundle: Path, token: str = "zzqq") -> None:
    """tokenizer.json gains an added token whose id is one past the embedding's rows."""
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.add_tokens([AddedToken(token, single_word=True)])
    tok.save(str(bundle / "tokenizer.json"))
    rehash(bundle)


def catastrophic_regex(bundle: Path, pattern: str = "(a+)+$") -> None:
    """tokenizer.json's pre-tokenizer becomes a Split on a regex that backtracks without bound."""
    path = bundle / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
    path.write_text(json.dumps(data), encoding="utf-8")
    rehash(bundle)
