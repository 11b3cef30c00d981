"""Save and load a fitted AutoFusionClassifier as safetensors + JSON: no pickle, safe to load."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from textclassify.runtime.atomic import replace_dir, write_atomic
from textclassify.runtime.errors import BundleError

MODEL_FORMAT = "textclassify-model"
MODEL_FORMAT_VERSION = 1
MODEL_FILE = "textclassify_model.json"
MLP_FILE = "fusion_mlp.safetensors"
VALIDATION_FILE = "validation.json"
ENCODER_DIR = "encoder"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    write_atomic(path, json.dumps(payload, indent=2, default=_json_default, ensure_ascii=False))


def save_model_dir(directory: str | os.PathLike, *, meta: dict[str, Any], encoder: Any, tokenizer: Any,
                   mlp: Any, validation: dict[str, Any]) -> Path:
    """Write the saved-model folder into a temp sibling, then swap it in: never half-written."""
    from safetensors.torch import save_file

    target = Path(directory).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        encoder.save_pretrained(tmp / ENCODER_DIR, safe_serialization=True)
        tokenizer.save_pretrained(tmp / ENCODER_DIR)
        save_file({k: v.detach().cpu().contiguous() for k, v in mlp.state_dict().items()}, str(tmp / MLP_FILE))
        write_json(tmp / VALIDATION_FILE, validation)
        write_json(tmp / MODEL_FILE, {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, **meta})
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_model_meta(directory: str | os.PathLike) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(folder, meta, validation) of a saved model; a clear error when it is not one."""
    folder = Path(directory).expanduser()
    meta_path = folder / MODEL_FILE
    if not meta_path.is_file():
        raise BundleError(f"{folder}: not a saved textclassify model ({MODEL_FILE} is missing).")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{meta_path}: not valid JSON ({e}).") from None
    if meta.get("format") != MODEL_FORMAT:
        raise BundleError(f"{meta_path}: format is {meta.get('format')!r}, expected {MODEL_FORMAT!r}.")
    if int(meta.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise BundleError(f"{meta_path}: format_version {meta.get('format_version')} is newer than this "
                          f"textclassify supports ({MODEL_FORMAT_VERSION}); upgrade textclassify.")
    for name in (MLP_FILE, ENCODER_DIR):
        if not (folder / name).exists():
            raise BundleError(f"{folder / name}: missing from the saved model.")
    validation_path = folder / VALIDATION_FILE
    validation = json.loads(validation_path.read_text(encoding="utf-8")) if validation_path.is_file() else {}
    return folder, meta, validation


def load_mlp_state(folder: Path) -> dict[str, Any]:
    """The FusionMLP weights (safetensors: tensors only, nothing executed)."""
    from safetensors.torch import load_file

    return load_file(str(folder / MLP_FILE))
