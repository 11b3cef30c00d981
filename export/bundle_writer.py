"""Write a bundle atomically: tokenizer.json, manifest.json (sha256 and size of every file), then rename.

Every file goes into a staging directory beside the target; the manifest is written last, and the
staging directory becomes the bundle in one rename (an existing bundle is swapped out atomically
with renameat2(RENAME_EXCHANGE) where the OS has it, else renamed aside first and restored on
failure). A failure or a kill therefore leaves the previous bundle, or none -- never a half-written
one. A running export holds an flock on `.NAME.export-TAG.lock`; a killed one leaves its hidden
`.NAME.export-TAG*` entries, which the next export to the same target removes (putting the previous
bundle back first where the kill fell between the two renames of the fallback swap).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from textclassify.runtime import constants as K
from textclassify.runtime.atomic import replace_dir
from textclassify.runtime.errors import ExportError
from textclassify.runtime.manifest import BUNDLE_FORMAT, sha256_file

try:
    import fcntl
except ImportError:  # Windows: no flock, so no lock files and no clean-up of a killed export's leftovers
    fcntl = None  # type: ignore[assignment]

_LOCK_SUFFIX = ".lock"


def bundle_tokenizer(hf_tokenizer: Any, max_length: int) -> tuple[str, dict[str, Any]]:
    """tokenizer.json text with truncation and padding set explicitly, and the manifest's "tokenizer" block."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"The model's tokenizer ({type(hf_tokenizer).__name__}) is not a fast tokenizer; "
                          "the bundle needs one with a tokenizer.json.")
    pad_id, pad_token = hf_tokenizer.pad_token_id, hf_tokenizer.pad_token
    if pad_id is None or pad_token is None:
        raise ExportError("The model's tokenizer has no pad token; the bundle pads batches and needs one.")
    for side in ("padding_side", "truncation_side"):
        if getattr(hf_tokenizer, side, "right") != "right":
            raise ExportError(f"The model's tokenizer has {side}={getattr(hf_tokenizer, side)!r}; the runtime "
                              "pads and truncates on the right only.")
    tok = Tokenizer.from_str(backend.to_str())  # a copy: the fitted model's tokenizer stays as it was
    tok.enable_truncation(int(max_length), stride=0, strategy="longest_first", direction="right")
    tok.enable_padding(direction="right", pad_id=int(pad_id), pad_token=str(pad_token),
                       pad_type_id=int(getattr(hf_tokenizer, "pad_token_type_id", 0) or 0))
    entry = {"file": K.TOKENIZER_FILE, "pad_token": str(pad_token), "pad_token_id": int(pad_id),
             "truncation": True, "padding": "longest", "max_length": int(max_length),
             "padding_side": "right", "truncation_side": "right"}
    return tok.to_str(), entry


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: numpy scalars and arrays to Python, NaN and infinities to null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def check_target(output_dir: str | os.PathLike[str], *, force: bool = False) -> Path:
    """The resolved target; refuse a file, or a non-empty directory that is not purely a textclassify bundle.

    A bundle folder is replaced whole, so it may hold only manifest.json and the files its manifest lists:
    anything else there (the user's notes, evaluation results) would be deleted without a word. Such a
    target is refused, naming the first foreign entry, unless `force`.
    """
    target = Path(output_dir).expanduser().resolve()
    if target.is_file() or (target.exists() and not target.is_dir()):
        raise ExportError(f"Output path {str(target)!r} exists and is not a directory.")
    if target.is_dir() and not force:
        foreign = foreign_entries(target)
        if foreign and _bundle_files(target) is None:
            raise ExportError(f"Output directory {str(target)!r} is not empty and holds no textclassify bundle; "
                              "choose a new path (export replaces only an existing bundle).")
        if foreign:
            raise ExportError(f"Output directory {str(target)!r} holds {foreign[0]!r}, which is not part of the "
                              f"bundle there ({len(foreign)} such entr{'y' if len(foreign) == 1 else 'ies'}); "
                              "replacing the bundle would delete it. Move it out, choose another path, or "
                              "pass --force to replace the folder and everything in it.")
    return target


def foreign_entries(directory: Path) -> list[str]:
    """Entries of `directory` that are not its bundle (manifest.json and the files the manifest lists), sorted;
    every entry when there is no readable textclassify manifest."""
    entries = sorted(p.name for p in directory.iterdir())
    listed = _bundle_files(directory)
    if listed is None:
        return entries
    return [name for name in entries if name != K.MANIFEST_FILE and name not in listed]


def _bundle_files(directory: Path) -> set[str] | None:
    try:
        manifest = json.loads((directory / K.MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        return None
    files = manifest.get("files")
    return {str(name) for name in files} if isinstance(files, dict) else set()


class BundleStage:
    """A staging directory beside the target (plus a scratch one); `commit` turns it into the bundle."""

    def __init__(self, target: Path) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        recover_stale_stages(target)
        tag = uuid.uuid4().hex[:10]
        self.dir = target.parent / f".{target.name}.export-{tag}"
        self.scratch = target.parent / f".{target.name}.export-{tag}-work"
        self._lock_path = target.parent / f"{self.dir.name}{_LOCK_SUFFIX}"
        self._lock_fd = _create_locked(self._lock_path)  # before the folders: a stage without it is never reaped
        self.committed = False
        try:
            self.dir.mkdir()
            self.scratch.mkdir()
        except BaseException:
            self.cleanup()  # no stage: release and remove the lock too
            raise

    def path(self, name: str) -> Path:
        """Where a bundle file is written while staging."""
        return self.dir / name

    def work(self, name: str) -> Path:
        """A scratch path (intermediate graphs that do not ship)."""
        return self.scratch / name

    def __enter__(self) -> BundleStage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the scratch directory, and the staging one unless it was committed."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not self.committed:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_fd is not None:
            self._lock_path.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Hash every staged file into manifest["files"], write manifest.json last, swap into place."""
        names = sorted(p.name for p in self.dir.iterdir())
        stray = [n for n in names if not (self.dir / n).is_file() or n == K.MANIFEST_FILE]
        if stray:
            raise ExportError(f"Unexpected entries in the staging directory: {stray}.")
        manifest = dict(manifest)
        manifest["files"] = {n: {"sha256": sha256_file(self.dir / n), "bytes": (self.dir / n).stat().st_size}
                             for n in names}
        text = json.dumps(jsonable(manifest), indent=2, allow_nan=False, ensure_ascii=False)
        (self.dir / K.MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")
        for name in [*names, K.MANIFEST_FILE]:
            _fsync_file(self.dir / name)
        _fsync_dir(self.dir)
        self._swap()
        self.committed = True
        _fsync_dir(self.target.parent)
        return self.target

    def _swap(self) -> None:
        # where renameat2 is missing the previous bundle waits at `aside`; recover_stale_stages restores it
        replace_dir(self.dir, self.target, aside=self.target.parent / f"{self.dir.name}-previous")


def recover_stale_stages(target: Path) -> list[str]:
    """Remove what killed exports to `target` left beside it; returns the names removed or restored.

    A stage is stale when its lock file can be locked (its owner is gone). Where the kill fell between the
    fallback swap's two renames, the target is missing and `-previous` holds the previous bundle: it is
    renamed back first. Stages still locked (a live export) and anything without a lock file are left alone.
    """
    handled: list[str] = []
    if fcntl is None or not target.parent.is_dir():
        return handled
    prefix = f".{target.name}.export-"
    for lock in sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix)
                       and p.name.endswith(_LOCK_SUFFIX)):
        fd = _try_lock(lock)
        if fd is None:
            continue
        try:
            stage = lock.with_name(lock.name[:-len(_LOCK_SUFFIX)])
            aside = stage.with_name(stage.name + "-previous")
            if aside.is_dir() and not target.exists():
                os.rename(aside, target)
            for leftover in (aside, stage, stage.with_name(stage.name + "-work")):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
            lock.unlink(missing_ok=True)
            handled.append(stage.name)
        except OSError:
            continue  # left as it was; the next export tries again
        finally:
            os.close(fd)
    return handled


def _create_locked(path: Path) -> int | None:
    """Create `path` and hold an exclusive flock on it (None where flock does not exist)."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _try_lock(path: Path) -> int | None:
    """An fd holding `path`'s exclusive flock, or None when another process holds it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd




def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
