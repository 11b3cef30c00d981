"""Untrusted bundles and saved models: data only, and every tampered, truncated or escaping file is refused
before ONNX Runtime (or the tokenizers library) opens anything.

The bundle here is a real export (fp32 + int8) of a small fitted model saved with
AutoFusionClassifier.save; the guards record every InferenceSession and Tokenizer.from_str call, so
"refused before anything is opened" is observed, not assumed.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import pickletools
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from tests.support.data import LABELS, make_tickets
from tests.support.fitted_model import make_fitted_model
from textclassify import AutoFusionClassifier
from textclassify.export import constants as EK
from textclassify.runtime import constants as K
from textclassify.runtime import load_bundle
from textclassify.runtime import tokenization as runtime_tokenization
from textclassify.runtime.errors import BundleError
from textclassify.train.config import validate_config

FITTED_ATTRIBUTES = ("model_", "tokenizer_", "calibrator_", "labels_", "multi_label_", "thresholds_",
                     "max_length_", "metrics_", "validation_")
TEXTS = [t for t, _ in make_tickets(12, seed=31)]

# Unpickling anything that names a class or function raises this audit event; the hook counts them while armed.
_UNPICKLED: list[str] = []
_ARMED = [False]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _audit(event: str, args: tuple) -> None:
    if _ARMED[0] and event == "pickle.find_class":
        _UNPICKLED.append(f"{args[0]}.{args[1]}")


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def saved(server, tiny_roberta_dir, tmp_path_factory) -> tuple[AutoFusionClassifier, Path, Path]:
    """A fitted classifier (tiny RoBERTa, trained MLP, real calibrator) saved by `save` and exported (fp32+int8)."""
    tmp = tmp_path_factory.mktemp("reliability_bundles")
    fm = make_fitted_model(tiny_roberta_dir, LABELS, multi_label=False)
    config = {**server.config_overrides(), "label_columns": ["topic"], "ml_model": tiny_roberta_dir,
              "cache_dir": str(tmp / "cache"), "output_dir": str(tmp / "out"), "llm": {"score_method": "json"}}
    clf = AutoFusionClassifier(config)
    clf.config_ = validate_config(config)
    for name in FITTED_ATTRIBUTES:
        setattr(clf, name, getattr(fm, name))
    clf.llm_settings_ = server.settings(score_method="json")
    clf.metadata_ = {"llm_usage": {}}
    model_dir = clf.save(tmp / "model")
    bundle_dir = clf.export(tmp / "bundle", int8=True, progress=False)
    return clf, model_dir, bundle_dir


class NoUnpickling:
    """Fail the test if anything unpickles (pickle.load/loads, torch.load, or any pickle.find_class)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for owner, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
            monkeypatch.setattr(owner, name, self._recorder(f"{owner.__name__}.{name}"))

    def _recorder(self, what: str):
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append(what)
            raise AssertionError(f"{what} was called while loading")
        return record

    def __enter__(self) -> NoUnpickling:
        _UNPICKLED.clear()
        _ARMED[0] = True
        return self

    def __exit__(self, *exc: object) -> None:
        _ARMED[0] = False
        assert self.calls == [] and _UNPICKLED == [], (self.calls, _UNPICKLED)


# ------------------------------------------------------------------------------------------ data only
def _is_pickle_stream(data: bytes) -> bool:
    """True if `data` starts with a pickle protocol marker and pickletools reads an opcode stream from it."""
    if len(data) < 2 or data[0] != 0x80 or data[1] > pickle.HIGHEST_PROTOCOL:
        return False
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception:  # noqa: BLE001 -- a malformed opcode stream is not a pickle
        return False
    return True


def _safetensors_ok(data: bytes) -> bool:
    """A safetensors file: 8-byte little-endian header length, then a JSON header of dtype/shape/offsets."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return all(k == "__metadata__" or {"dtype", "shape", "data_offsets"} <= set(v) for k, v in header.items())


def classify_file(path: Path) -> str:
    """The file's format, proven by parsing it; raises AssertionError for anything that is not plain data."""
    data = path.read_bytes()
    assert not _is_pickle_stream(data), f"{path.name}: a pickle stream"
    if data.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as zf:
            raise AssertionError(f"{path.name}: a zip archive (torch checkpoint?) holding {zf.namelist()[:5]}")
    if path.suffix == ".onnx":
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer), path.name
        return "onnx"
    if path.suffix == ".safetensors":
        assert _safetensors_ok(data), path.name
        return "safetensors"
    if path.suffix == ".json":
        json.loads(data.decode("utf-8"))
        return "json"
    text = data.decode("utf-8")  # anything else must at least be text (BPE merges.txt)
    assert "\x00" not in text, path.name
    return "text"


def _all_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
    assert all(not p.is_symlink() for p in files), "no symlinks in what we write"
    return files


def test_pickle_scanner_catches_pickles_and_checkpoints(tmp_path):
    """The scanner itself: a pickle, a torch.save checkpoint and a .bin of pickle bytes are all caught."""
    (tmp_path / "a.pkl").write_bytes(pickle.dumps({"x": [1, 2]}))
    torch.save({"w": torch.zeros(2)}, tmp_path / "b.pt")
    (tmp_path / "c.bin").write_bytes(pickle.dumps(np.zeros(3), protocol=2))
    for name in ("a.pkl", "b.pt", "c.bin"):
        with pytest.raises(AssertionError, match=r"pickle stream|zip archive"):
            classify_file(tmp_path / name)


def test_bundle_files_are_data_only(saved):
    """Every file an export writes is ONNX protobuf (inline weights) or JSON: no pickle, no zip checkpoint."""
    _, _, bundle_dir = saved
    kinds = {p.name: classify_file(p) for p in _all_files(bundle_dir)}
    assert kinds == {"manifest.json": "json", "encoder.onnx": "onnx", "encoder.int8.onnx": "onnx",
                     "fusion.onnx": "onnx", "calibrator.onnx": "onnx", "tokenizer.json": "json"}


def test_saved_model_files_are_data_only(saved):
    """Every file `save()` writes is safetensors, JSON or plain text: no pickle, no zip checkpoint."""
    _, model_dir, _ = saved
    kinds = {str(p.relative_to(model_dir)): classify_file(p) for p in _all_files(model_dir)}
    assert kinds["fusion_mlp.safetensors"] == "safetensors" and kinds["encoder/model.safetensors"] == "safetensors"
    assert kinds["textclassify_model.json"] == "json" and kinds["validation.json"] == "json"
    assert set(kinds.values()) <= {"safetensors", "json", "text"}, kinds
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for name in kinds), kinds


def test_loading_never_unpickles(saved, server, monkeypatch, tmp_path):
    """AutoFusionClassifier.load and load_bundle + predict run with every unpickling path booby-trapped."""
    clf, model_dir, bundle_dir = saved
    want = clf.predict(TEXTS).probabilities
    with NoUnpickling(monkeypatch):
        loaded = AutoFusionClassifier.load(model_dir)
        got = loaded.predict(TEXTS).probabilities
        with load_bundle(bundle_dir, providers="cpu", cache_dir=tmp_path) as bundle:
            served = bundle.predict(TEXTS).probabilities
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(served, want, atol=EK.FP32_PARITY_TOL)


def test_no_unpickling_guard_fires(monkeypatch):
    """The guard is live: a pickle that names a class is seen by the audit hook, torch.load by the patch."""
    payload = pickle.dumps(np.zeros(2))
    with pytest.raises(AssertionError), NoUnpickling(monkeypatch):
        import _pickle

        _pickle.loads(payload)  # the C unpickler, bypassing the patched pickle.loads
    _ARMED[0] = False


# ------------------------------------------------------------------------------- refused before ORT
@pytest.fixture
def guarded(monkeypatch):
    """Record every ONNX Runtime session and tokenizers parse that load_bundle starts."""
    import onnxruntime

    opened: list[str] = []
    real_tokenizer = runtime_tokenization.Tokenizer

    class RecordingTokenizer:
        @staticmethod
        def from_str(text: str) -> Any:
            opened.append("Tokenizer.from_str")
            return real_tokenizer.from_str(text)

    def session(*args: Any, **kwargs: Any) -> Any:
        opened.append("InferenceSession")
        raise AssertionError("ONNX Runtime was asked to open a graph")

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(runtime_tokenization, "Tokenizer", RecordingTokenizer)
    return opened


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(saved[2], target)
    return target


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / K.MANIFEST_FILE).read_text())


def _write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / K.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: int) -> int:
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:keep])
    return size


def _outside_copy(bundle: Path, name: str) -> Path:
    outside = bundle.parent / f"outside-{name}"
    shutil.copyfile(bundle / name, outside)
    return outside


def tamper_flip(name: str, offset: int):
    def apply(bundle: Path) -> str:
        _flip(bundle / name, offset)
        return f"{name}: sha256 differs from the manifest (tampered or corrupted file)."
    apply.__name__ = f"flipped_byte_in_{name}"
    return apply


def tamper_truncate(name: str):
    def apply(bundle: Path) -> str:
        size = _truncate(bundle / name, 1000)
        return f"{name}: size 1000 bytes differs from the manifest's {size} (truncated or replaced file)."
    apply.__name__ = f"truncated_{name}"
    return apply


def tokenizer_extra_space(bundle: Path) -> str:
    path = bundle / "tokenizer.json"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b" ")
    return f"tokenizer.json: size {size + 1} bytes differs from the manifest's {size} (truncated or replaced file)."


def manifest_hash_swapped(bundle: Path) -> str:
    m = _manifest(bundle)
    m["files"]["encoder.onnx"]["sha256"] = m["files"]["calibrator.onnx"]["sha256"]
    _write_manifest(bundle, m)
    return "encoder.onnx: sha256 differs from the manifest (tampered or corrupted file)."


def manifest_sha_edited(bundle: Path) -> str:
    m = _manifest(bundle)
    m["files"]["calibrator.onnx"]["sha256"] = "0" * 64
    _write_manifest(bundle, m)
    return "calibrator.onnx: sha256 differs from the manifest (tampered or corrupted file)."


def manifest_truncated(bundle: Path) -> str:
    _truncate(bundle / K.MANIFEST_FILE, 200)
    return "manifest.json is not valid JSON ("


def manifest_not_utf8(bundle: Path) -> str:
    (bundle / K.MANIFEST_FILE).write_bytes(b'{"format": "\xff"}')
    return "manifest.json is not valid UTF-8 (invalid start byte at byte 12)."


def manifest_huge(bundle: Path) -> str:
    (bundle / K.MANIFEST_FILE).write_bytes(b" " * (16 * 1024 * 1024 + 1))
    return f"manifest.json: {16 * 1024 * 1024 + 1} bytes is larger than the {16 * 1024 * 1024} allowed."


def manifest_lists_etc_passwd(bundle: Path) -> str:
    m = _manifest(bundle)
    data = Path("/etc/passwd").read_bytes()
    m["files"]["../../etc/passwd"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_manifest(bundle, m)
    return ("../../etc/passwd: listed in manifest.json with '..'; bundle files must be plain names inside the "
            "bundle.")


def tokenizer_points_at_etc_passwd(bundle: Path) -> str:
    m = _manifest(bundle)
    data = Path("/etc/passwd").read_bytes()
    m["files"]["/etc/passwd"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    m["tokenizer"]["file"] = "/etc/passwd"
    _write_manifest(bundle, m)
    return ("/etc/passwd: listed in manifest.json with an absolute path; bundle files must be plain names inside "
            "the bundle.")


def variant_unlisted(bundle: Path) -> str:
    m = _manifest(bundle)
    m["variants"]["fp32"] = "evil.onnx"
    _write_manifest(bundle, m)
    shutil.copyfile(bundle / "encoder.onnx", bundle / "evil.onnx")
    return "evil.onnx (variants.fp32) is not listed in manifest.json 'files'; refusing an unverified file."


def symlink_model_out(bundle: Path) -> str:
    outside = _outside_copy(bundle, "encoder.onnx")  # identical bytes: the sha256 alone would pass
    (bundle / "encoder.onnx").unlink()
    (bundle / "encoder.onnx").symlink_to(outside)
    return f"encoder.onnx: is a symlink that leaves the bundle (-> {outside.resolve()}); refusing it."


def symlink_tokenizer_out(bundle: Path) -> str:
    outside = _outside_copy(bundle, "tokenizer.json")
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(os.path.relpath(outside, bundle))
    return f"tokenizer.json: is a symlink that leaves the bundle (-> {outside.resolve()}); refusing it."


def symlink_to_dev_zero(bundle: Path) -> str:
    (bundle / "calibrator.onnx").unlink()
    (bundle / "calibrator.onnx").symlink_to("/dev/zero")
    return "calibrator.onnx: is a symlink that leaves the bundle (-> /dev/zero); refusing it."


def fifo_instead_of_model(bundle: Path) -> str:
    (bundle / "encoder.onnx").unlink()
    os.mkfifo(bundle / "encoder.onnx")  # reading it would block forever
    return "encoder.onnx: is not a regular file."


def int8_tampered(bundle: Path) -> str:
    _flip(bundle / "encoder.int8.onnx", 5000)
    return "encoder.int8.onnx: sha256 differs from the manifest (tampered or corrupted file)."


TAMPERINGS = [
    tamper_flip("encoder.onnx", 4096), tamper_flip("calibrator.onnx", 64), tamper_flip("tokenizer.json", 100),
    int8_tampered, tokenizer_extra_space, tamper_truncate("encoder.onnx"), tamper_truncate("tokenizer.json"),
    manifest_hash_swapped, manifest_sha_edited, manifest_truncated, manifest_not_utf8, manifest_huge,
    manifest_lists_etc_passwd, tokenizer_points_at_etc_passwd, variant_unlisted, symlink_model_out,
    symlink_tokenizer_out, symlink_to_dev_zero, fifo_instead_of_model,
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tamper", TAMPERINGS, ids=[t.__name__ for t in TAMPERINGS])
def test_tampered_bundle_refused_before_anything_opens(copy, guarded, tmp_path, tamper):
    """Each tampering is a BundleError with a precise message; no ONNX session and no tokenizer was opened."""
    message = tamper(copy)
    with pytest.raises(BundleError) as info:
        load_bundle(copy, providers="cpu", cache_dir=tmp_path / "cache")
    assert str(info.value).startswith(message), str(info.value)
    assert guarded == []


def test_untampered_copy_loads_under_the_guard(copy, guarded, tmp_path):
    """The same copy, untouched, gets through verification to ONNX Runtime (the guard is what stops it)."""
    with pytest.raises(BundleError, match=r"ONNX Runtime could not load it \(ONNX Runtime was asked"):
        load_bundle(copy, providers="cpu", cache_dir=tmp_path / "cache")
    assert set(guarded) == {"Tokenizer.from_str", "InferenceSession"}  # graphs open on threads: any order


def test_graph_naming_unlisted_external_data_is_refused(copy, tmp_path):
    """encoder.onnx re-saved with its weights in weights.bin beside it, unlisted, and the manifest re-hashed: ONNX
    Runtime opening that path itself reads the weights, but load_bundle hands it the verified graph alone."""
    import onnxruntime

    onnx.save_model(onnx.load(copy / "encoder.onnx"), copy / "encoder.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    m = _manifest(copy)
    data = (copy / "encoder.onnx").read_bytes()
    m["files"]["encoder.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_manifest(copy, m)
    onnxruntime.InferenceSession(str(copy / "encoder.onnx"), providers=["CPUExecutionProvider"])  # reachable there
    with pytest.raises(BundleError, match=r"^encoder.onnx: ONNX Runtime could not load it \(.*[Ee]xternal data"):
        load_bundle(copy, providers="cpu", cache_dir=tmp_path / "cache")


def test_wrong_graph_with_valid_hash_is_refused(copy, tmp_path):
    """A manifest re-hashed after encoder.onnx was replaced by the calibrator: refused for its inputs, by field."""
    shutil.copyfile(copy / "calibrator.onnx", copy / "encoder.onnx")
    m = _manifest(copy)
    data = (copy / "encoder.onnx").read_bytes()
    m["files"]["encoder.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_manifest(copy, m)
    with pytest.raises(BundleError, match=r"^encoder.onnx: the graph's inputs \['llm_scores_raw'\] differ from "
                                          r"manifest.json 'pipeline\[0\].inputs'"):
        load_bundle(copy, providers="cpu", cache_dir=tmp_path / "cache")
