"""runtime.manifest: a bundle is verified (format, version, names, sizes, sha256) before anything opens it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.toy_bundle import read_manifest, write_manifest, write_toy_bundle
from textclassify.runtime.errors import BundleError
from textclassify.runtime.manifest import load_manifest, opened_verified, read_verified, sha256_file

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "toy", "base_url": "http://127.0.0.1:9/v1",
       "score_method": "json", "prompt_version": "v1"}


@pytest.fixture(scope="module")
def template(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("manifest_template") / "bundle"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False, llm=LLM,
                     extra_variants=("int8",))
    return out


@pytest.fixture
def bundle(template: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(template, out)
    return out


def _rewrite(bundle: Path, **changes: object) -> None:
    manifest = read_manifest(bundle)
    manifest.update(changes)
    (bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_valid_bundle_parses(bundle: Path) -> None:
    """A freshly written bundle verifies and exposes its labels, task, variants and files."""
    m = load_manifest(bundle)
    assert m.labels == LABELS and m.multi_label is False and m.max_length == 64
    assert m.variants == {"fp32": "encoder.onnx", "int8": "encoder.int8.onnx"}
    assert set(m.files) == {"encoder.onnx", "encoder.int8.onnx", "fusion.onnx", "calibrator.onnx", "tokenizer.json"}
    assert m.files["encoder.onnx"]["sha256"] == sha256_file(bundle / "encoder.onnx")


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    """sha256_file streams the file and equals hashlib over the whole content."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_tampered_model_refused(bundle: Path) -> None:
    """One flipped byte in encoder.onnx (same size) is caught by its sha256."""
    data = bytearray((bundle / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == "encoder.onnx: sha256 differs from the manifest (tampered or corrupted file)."


@pytest.mark.parametrize("name", ["calibrator.onnx", "tokenizer.json"])
def test_tampered_other_files_refused(bundle: Path, name: str) -> None:
    """calibrator.onnx and tokenizer.json are checked like encoder.onnx."""
    data = bytearray((bundle / name).read_bytes())
    data[-2] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"^{name}: sha256 differs"):
        load_manifest(bundle)


def test_truncated_file_refused(bundle: Path) -> None:
    """A truncated encoder.onnx is refused with both sizes in the message."""
    full = (bundle / "encoder.onnx").stat().st_size
    with open(bundle / "encoder.onnx", "r+b") as fh:
        fh.truncate(full - 100)
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == (f"encoder.onnx: size {full - 100} bytes differs from the manifest's {full} "
                            "(truncated or replaced file).")


def test_deleted_tokenizer_refused(bundle: Path) -> None:
    """A listed file that is gone is named."""
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == "tokenizer.json: listed in manifest.json but missing from the bundle."


def test_future_format_version_refused(bundle: Path) -> None:
    """A manifest from a newer format version says to upgrade."""
    _rewrite(bundle, format_version=3)
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == ("manifest.json: format_version 3 is newer than this textclassify supports (2); "
                            "upgrade textclassify to load this bundle.")


def test_wrong_format_refused(bundle: Path) -> None:
    """A JSON file of another format is not taken for a bundle manifest."""
    _rewrite(bundle, format="textclassify-model")
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == "manifest.json: 'format' must be 'textclassify-bundle' (got 'textclassify-model')."


def test_parent_path_refused(bundle: Path) -> None:
    """A manifest listing ../../etc/passwd is refused before anything is read."""
    m = read_manifest(bundle)
    m["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    (bundle / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == ("../../etc/passwd: listed in manifest.json with '..'; "
                            "bundle files must be plain names inside the bundle.")


def test_absolute_path_refused(bundle: Path) -> None:
    """An absolute file name is refused, even when the tokenizer block points at it."""
    m = read_manifest(bundle)
    m["files"]["/etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
    m["tokenizer"]["file"] = "/etc/passwd"
    (bundle / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == ("/etc/passwd: listed in manifest.json with an absolute path; "
                            "bundle files must be plain names inside the bundle.")


def test_subdirectory_path_refused(bundle: Path) -> None:
    """A name with a path separator is refused (bundles are flat)."""
    m = read_manifest(bundle)
    m["files"]["sub/encoder.onnx"] = m["files"]["encoder.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(BundleError, match="^sub/encoder.onnx: listed in manifest.json with a path separator"):
        load_manifest(bundle)


def test_symlink_leaving_bundle_refused(bundle: Path, tmp_path: Path) -> None:
    """A symlink to a file outside the bundle is refused even when its content matches the sha256."""
    outside = tmp_path / "outside.json"
    shutil.copyfile(bundle / "tokenizer.json", outside)
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(outside)
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == f"tokenizer.json: is a symlink that leaves the bundle (-> {outside}); refusing it."


def test_symlink_inside_bundle_accepted(bundle: Path) -> None:
    """A symlink to another file of the same bundle is fine (its content is still hashed)."""
    (bundle / "encoder.int8.onnx").unlink()
    (bundle / "encoder.int8.onnx").symlink_to("encoder.onnx")
    assert load_manifest(bundle).variants["int8"] == "encoder.int8.onnx"


def test_manifest_symlink_leaving_bundle_refused(bundle: Path, tmp_path: Path) -> None:
    """manifest.json itself may not point outside the bundle."""
    outside = tmp_path / "m.json"
    shutil.move(bundle / "manifest.json", outside)
    (bundle / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match="^manifest.json: is a symlink that leaves the bundle"):
        load_manifest(bundle)


def test_manifest_not_json_refused(bundle: Path) -> None:
    """A manifest that is not JSON says where parsing failed."""
    (bundle / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == ("manifest.json is not valid JSON (Expecting property name enclosed in double quotes "
                            "at line 1 column 2).")


def test_manifest_not_object_refused(bundle: Path) -> None:
    """A JSON list is not a manifest."""
    (bundle / "manifest.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(BundleError, match=r"^manifest.json must hold a JSON object \(got list\)\.$"):
        load_manifest(bundle)


def test_missing_manifest_refused(bundle: Path) -> None:
    """A directory without manifest.json is not a bundle."""
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == f"manifest.json is missing from {str(bundle)!r}; not a textclassify bundle."


def test_missing_directory_refused(tmp_path: Path) -> None:
    """A path that does not exist is named."""
    with pytest.raises(BundleError) as e:
        load_manifest(tmp_path / "nope")
    assert str(e.value) == f"Bundle directory {str(tmp_path / 'nope')!r} does not exist or is not a directory."


def test_unlisted_variant_refused(bundle: Path) -> None:
    """A model file the manifest uses but does not hash is refused."""
    m = read_manifest(bundle)
    del m["files"]["encoder.int8.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == ("encoder.int8.onnx (variants.int8) is not listed in manifest.json 'files'; "
                            "refusing an unverified file.")


@pytest.mark.parametrize(("changes", "message"), [
    ({"task": "ranking"}, "manifest.json: 'task' must be one of ['multi_class', 'multi_label'] (got 'ranking')."),
    ({"labels": ["a", "a", "b"]}, "manifest.json: 'labels' has duplicates: ['a']."),
    ({"labels": ["a"]}, "manifest.json: 'labels' must list at least 2 label(s) (got ['a'])."),
    ({"max_length": 0}, "manifest.json: 'max_length' must be an int >= 2 (got 0)."),
    ({"thresholds": [0.5]}, "manifest.json: 'thresholds' must be null or a list of 3 floats (got [0.5])."),
    ({"variants": {"fp32": "encoder.onnx", "bf16": "x"}},
     "manifest.json: unknown variant 'bf16' in 'variants'; expected some of ['fp32', 'int8', 'fp16']."),
    ({"format_version": "1"}, "manifest.json: 'format_version' must be a positive int (got '1')."),
    ({"tokenizer": {"file": "tokenizer.json", "pad_token_id": 1, "padding_side": "left"}},
     "manifest.json: 'tokenizer.padding_side' must be 'right', the only side the runtime supports (got 'left')."),
    ({"tokenizer": {"file": "tokenizer.json", "pad_token_id": 1, "max_length": 128}},
     "manifest.json: 'tokenizer.max_length' (128) differs from 'max_length' (64)."),
    ({"tokenizer": {"file": "tokenizer.json", "pad_token_id": 1, "padding": "max_length"}},
     "manifest.json: 'tokenizer.padding' must be one of ['longest'] (got 'max_length')."),
])
def test_schema_errors(bundle: Path, changes: dict, message: str) -> None:
    """Each malformed field gets one message naming it, what was expected and what came."""
    _rewrite(bundle, **changes)
    with pytest.raises(BundleError) as e:
        load_manifest(bundle)
    assert str(e.value) == message


def test_bad_hash_entry_refused(bundle: Path) -> None:
    """A 'files' entry whose sha256 is not 64 hex digits is refused."""
    m = read_manifest(bundle)
    m["files"]["encoder.onnx"]["sha256"] = "abc"
    (bundle / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(BundleError, match="^encoder.onnx: 'sha256' in manifest.json must be 64 lowercase hex"):
        load_manifest(bundle)


def test_read_verified_catches_change_after_verification(bundle: Path) -> None:
    """A file swapped between verification and use is caught when its bytes are read."""
    m = load_manifest(bundle)
    assert read_verified(m, "calibrator.onnx") == (bundle / "calibrator.onnx").read_bytes()
    shutil.copyfile(bundle / "encoder.onnx", bundle / "calibrator.onnx")
    with pytest.raises(BundleError, match="^calibrator.onnx: size"):
        read_verified(m, "calibrator.onnx")
    with pytest.raises(BundleError, match="^notes.txt: not listed in manifest.json 'files'"):
        read_verified(m, "notes.txt")


def test_opened_verified_gives_a_private_link_and_removes_it(bundle: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime gets a symlink to the verified file, alone in a fresh directory that is gone afterwards."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    m = load_manifest(bundle)
    with opened_verified(m, "encoder.onnx") as path:
        assert isinstance(path, str) and os.listdir(os.path.dirname(path)) == ["encoder.onnx"]
        assert Path(path).read_bytes() == (bundle / "encoder.onnx").read_bytes()
    assert os.listdir(tmp_path / "tmp") == []


def test_opened_verified_catches_a_file_rewritten_while_open(bundle: Path) -> None:
    """A file rewritten between verification and the end of its use is refused, even with the same size."""
    m = load_manifest(bundle)
    original = (bundle / "encoder.onnx").read_bytes()
    with pytest.raises(BundleError, match="^encoder.onnx: changed on disk after it was verified"):
        with opened_verified(m, "encoder.onnx"):
            (bundle / "encoder.onnx").write_bytes(b"\0" * len(original))
    (bundle / "encoder.onnx").write_bytes(original)
    m = load_manifest(bundle)
    shutil.copyfile(bundle / "calibrator.onnx", bundle / "renamed")
    with pytest.raises(BundleError, match="^calibrator.onnx: changed on disk after it was verified"):
        with opened_verified(m, "calibrator.onnx"):
            os.replace(bundle / "renamed", bundle / "calibrator.onnx")  # same bytes, another file
    with pytest.raises(BundleError, match="^notes.txt: not listed in manifest.json 'files'"):
        with opened_verified(m, "notes.txt"):
            pass


def test_file_rewritten_during_hashing_is_refused(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that touches a file while its sha256 is computed makes verification fail, not pass stale."""
    import textclassify.runtime.manifest as manifest_module

    real = manifest_module._sha256_stream

    def hash_while_written(fh: object) -> str:
        digest = real(fh)
        os.utime(bundle / "tokenizer.json", ns=(1, 1))
        return digest

    monkeypatch.setattr(manifest_module, "_sha256_stream", hash_while_written)
    with pytest.raises(BundleError, match="^tokenizer.json: changed on disk while it was being verified"):
        load_manifest(bundle)


def test_opened_verified_falls_back_to_verified_bytes_without_symlinks(bundle: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no symlink can be made, the bytes are read and re-hashed instead, so tampering is still caught."""
    def no_symlinks(*args: object, **kwargs: object) -> None:
        raise OSError("symlinks not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    m = load_manifest(bundle)
    with opened_verified(m, "calibrator.onnx") as data:
        assert data == (bundle / "calibrator.onnx").read_bytes()
    data = bytearray((bundle / "calibrator.onnx").read_bytes())
    data[10] ^= 0xFF
    (bundle / "calibrator.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="^calibrator.onnx: sha256 differs from the manifest"):
        with opened_verified(m, "calibrator.onnx"):
            pass


def test_write_manifest_roundtrip(bundle: Path) -> None:
    """Re-hashing after a legitimate change gives a bundle that verifies again."""
    (bundle / "extra.txt").write_text("hello", encoding="utf-8")
    write_manifest(bundle, read_manifest(bundle))
    assert load_manifest(bundle).files["extra.txt"]["bytes"] == 5
