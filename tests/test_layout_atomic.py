"""One atomic-write helper (runtime.atomic): files and folders appear whole or not at all."""
from __future__ import annotations

import os

import pytest

from textclassify.runtime import atomic


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    """Text and bytes land whole; the parent is created; no temporary file stays behind."""
    target = tmp_path / "sub" / "a.json"
    assert atomic.write_atomic(target, "{\"x\": 1}") == target
    atomic.write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _hidden(target.parent) == []


def test_a_failed_write_keeps_the_old_file(tmp_path):
    """An exception inside atomic_path leaves the previous content and removes the temp file."""
    target = tmp_path / "report.png"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("has_renameat2", [True, False])
def test_replace_dir_swaps_a_folder(tmp_path, monkeypatch, has_renameat2):
    """A staged folder replaces the target (with renameat2 or the aside fallback); the old one is gone."""
    if not has_renameat2:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    target, staged = tmp_path / "model", tmp_path / ".model.tmp"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staged.mkdir()
    (staged / "new.txt").write_text("new")
    atomic.replace_dir(staged, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_replace_dir_restores_the_previous_folder_when_the_move_fails(tmp_path, monkeypatch):
    """Fallback path: if the new folder cannot be renamed in, the previous one is put back."""
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    real_rename = os.rename

    def failing_rename(src, dst):
        if str(src).endswith("staged"):
            raise OSError("disk full")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        atomic.replace_dir(tmp_path / "staged", target)
    assert (target / "keep.txt").read_text() == "keep"


def test_replace_dir_into_a_new_place(tmp_path):
    """Without a previous folder it is one rename."""
    staged = tmp_path / "s"
    staged.mkdir()
    atomic.replace_dir(staged, tmp_path / "t")
    assert (tmp_path / "t").is_dir() and not staged.exists()
