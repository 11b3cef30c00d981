"""bundle_writer: tokenizer.json settings, strict JSON, target checks and the atomic swap."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from textclassify.export import bundle_writer
from textclassify.export.bundle_writer import BundleStage, bundle_tokenizer, check_target, jsonable
from textclassify.runtime import constants as K
from textclassify.runtime.errors import ExportError

MANIFEST = {"format": "textclassify-bundle", "format_version": 1}


def stage_files(stage: BundleStage, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        stage.path(name).write_bytes(data)


def write_bundle(target: Path, files: dict[str, bytes], **extra) -> Path:
    with BundleStage(check_target(target)) as stage:
        stage_files(stage, files)
        return stage.commit({**MANIFEST, **extra})


def hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_tokenizer_json_sets_truncation_and_padding_explicitly(tiny_roberta_dir):
    """tokenizer.json truncates to max_length and pads with the HF pad token; the HF tokenizer is untouched."""
    hf = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    before = hf.backend_tokenizer.to_str()
    text, entry = bundle_tokenizer(hf, 12)
    saved = json.loads(text)
    assert saved["truncation"]["max_length"] == 12 and saved["truncation"]["direction"] == "Right"
    assert (saved["padding"]["pad_id"], saved["padding"]["pad_token"]) == (1, "<pad>")
    assert entry == {"file": "tokenizer.json", "pad_token": "<pad>", "pad_token_id": 1, "truncation": True,
                     "padding": "longest", "max_length": 12, "padding_side": "right", "truncation_side": "right"}
    tok = Tokenizer.from_str(text)
    long, short = tok.encode_batch(["ticket " * 40, "hi"])
    assert len(long.ids) == len(short.ids) == 12 and short.ids[-1] == 1 and short.attention_mask[-1] == 0
    assert hf.backend_tokenizer.to_str() == before


def test_left_padding_tokenizer_is_refused(tiny_roberta_dir):
    """The runtime pads on the right; a left-padding tokenizer is a clear error."""
    hf = AutoTokenizer.from_pretrained(tiny_roberta_dir, padding_side="left")
    with pytest.raises(ExportError) as info:
        bundle_tokenizer(hf, 12)
    assert str(info.value) == ("The model's tokenizer has padding_side='left'; the runtime pads and truncates on "
                               "the right only.")


def test_jsonable_makes_strict_json():
    """numpy values become Python ones and non-finite floats become null."""
    value = {"a": np.float32(0.5), "b": [np.int64(3), float("inf")], "c": np.array([1.0, np.nan]), 4: (True,)}
    assert jsonable(value) == {"a": 0.5, "b": [3, None], "c": [1.0, None], "4": [True]}
    json.dumps(jsonable(value), allow_nan=False)


def test_commit_lists_every_file_and_moves_into_place(tmp_path):
    """commit hashes every staged file, writes the manifest last and leaves no staging folders."""
    target = write_bundle(tmp_path / "b", {"model.onnx": b"abc", "tokenizer.json": b"{}"})
    manifest = json.loads((target / K.MANIFEST_FILE).read_text())
    assert manifest["files"] == {
        "model.onnx": {"sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "bytes": 3},
        "tokenizer.json": {"sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                           "bytes": 2}}
    assert hidden(tmp_path) == []


def test_new_bundle_replaces_the_old_one_whole(tmp_path):
    """Files of the old bundle that the new one lacks are gone after the swap."""
    write_bundle(tmp_path / "b", {"model.onnx": b"old", "model.int8.onnx": b"old8"})
    write_bundle(tmp_path / "b", {"model.onnx": b"new"})
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [K.MANIFEST_FILE, "model.onnx"]
    assert (tmp_path / "b" / "model.onnx").read_bytes() == b"new" and hidden(tmp_path) == []


def test_swap_without_renameat2_still_replaces(tmp_path, monkeypatch):
    """Where RENAME_EXCHANGE is missing, rename-aside-then-rename gives the same result."""
    monkeypatch.setattr("textclassify.runtime.atomic.exchange", lambda a, b: False)
    write_bundle(tmp_path / "b", {"model.onnx": b"old"})
    write_bundle(tmp_path / "b", {"model.onnx": b"new"})
    assert (tmp_path / "b" / "model.onnx").read_bytes() == b"new" and hidden(tmp_path) == []


def test_failure_while_staging_keeps_the_old_bundle(tmp_path):
    """An error before commit removes the staging folders and leaves the old bundle as it was."""
    write_bundle(tmp_path / "b", {"model.onnx": b"old"})
    with pytest.raises(RuntimeError, match="boom"), BundleStage(check_target(tmp_path / "b")) as stage:
        stage_files(stage, {"model.onnx": b"half"})
        raise RuntimeError("boom")
    assert (tmp_path / "b" / "model.onnx").read_bytes() == b"old" and hidden(tmp_path) == []


def test_stray_entry_in_staging_is_refused(tmp_path):
    """Only plain files ship; a sub-folder in the staging directory stops the commit."""
    with pytest.raises(ExportError) as info, BundleStage(check_target(tmp_path / "b")) as stage:
        stage.path("sub").mkdir()
        stage.commit(dict(MANIFEST))
    assert str(info.value) == "Unexpected entries in the staging directory: ['sub']."
    assert not (tmp_path / "b").exists() and hidden(tmp_path) == []


def test_target_that_is_a_file_is_refused(tmp_path):
    """A file at the output path is never overwritten."""
    (tmp_path / "f").write_text("x")
    with pytest.raises(ExportError) as info:
        check_target(tmp_path / "f")
    assert str(info.value) == f"Output path {str(tmp_path / 'f')!r} exists and is not a directory."


def test_empty_directory_is_an_acceptable_target(tmp_path):
    """An empty folder (for example made by the user beforehand) becomes the bundle."""
    (tmp_path / "b").mkdir()
    write_bundle(tmp_path / "b", {"model.onnx": b"abc"})
    assert (tmp_path / "b" / K.MANIFEST_FILE).exists()


def test_a_killed_exports_leftovers_are_removed_by_the_next_one(tmp_path):
    """A stage whose lock nobody holds (its export was killed) is removed by the next export to that target;
    a live export's stage (lock held) and hidden folders without a lock file are left alone."""
    target = tmp_path / "bundle"
    write_bundle(target, {"a.txt": b"old"})
    live = BundleStage(target)  # holds its lock until cleanup
    for name in (".bundle.export-0123456789", ".bundle.export-0123456789-work"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"half")
    (tmp_path / ".bundle.export-0123456789.lock").write_bytes(b"")  # nobody holds it: a dead export's
    (tmp_path / ".bundle.export-unrelated").mkdir()  # no lock file: not ours to judge
    write_bundle(target, {"a.txt": b"new"})
    assert (target / "a.txt").read_bytes() == b"new"
    assert hidden(tmp_path) == sorted([".bundle.export-unrelated", live.dir.name, live.scratch.name,
                                       live.dir.name + ".lock"])
    live.cleanup()
    assert hidden(tmp_path) == [".bundle.export-unrelated"]


def test_a_kill_between_the_fallback_renames_gets_the_previous_bundle_back(tmp_path):
    """Killed after the old bundle was renamed aside and before the new one was renamed in: the next export's
    clean-up renames the previous bundle back before anything else."""
    target = tmp_path / "bundle"
    write_bundle(target, {"a.txt": b"old"})
    stage = ".bundle.export-abcdef0123"
    (tmp_path / f"{stage}.lock").write_bytes(b"")
    target.rename(tmp_path / f"{stage}-previous")
    (tmp_path / stage).mkdir()
    assert bundle_writer.recover_stale_stages(target) == [stage]
    assert (target / "a.txt").read_bytes() == b"old" and hidden(tmp_path) == []
