"""Atomic writes: a file or a folder appears whole or not at all.

Files are written to a hidden temporary sibling, flushed to disk, then moved over the target with one
`os.replace`. Folders are staged completely beside the target, then swapped in: with Linux
renameat2(RENAME_EXCHANGE) when a previous folder exists (no moment without one), else by renaming
the previous folder aside, renaming the new one in, and restoring the previous one if that fails.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
LIVE_TEMP_FILES: set[Path] = set()  # what atomic_path has not moved or deleted yet: removed on a forced exit too


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of `path` to write by any means; moved onto `path` when the block succeeds,
    deleted when it fails. The parent folder is created if missing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    LIVE_TEMP_FILES.add(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        LIVE_TEMP_FILES.discard(tmp)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, *, encoding: str = "utf-8") -> Path:
    """Write `data` (bytes, or text in `encoding`) to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return Path(path)


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two existing paths in one step with Linux renameat2(RENAME_EXCHANGE); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(staged: str | os.PathLike[str], target: str | os.PathLike[str],
                aside: str | os.PathLike[str] | None = None) -> Path:
    """Move the complete folder `staged` onto `target`, removing the previous `target` (see the module docstring).

    `aside`: where the previous folder waits when renameat2 is unavailable (default: a hidden sibling).
    """
    staged, target = Path(staged), Path(target)
    if not target.exists():
        os.rename(staged, target)
        return target
    if exchange(staged, target):  # target is the new folder now, staged the previous one
        shutil.rmtree(staged, ignore_errors=True)
        return target
    aside = Path(aside) if aside is not None else target.with_name(f".{target.name}.previous-{os.getpid()}")
    os.rename(target, aside)
    try:
        os.rename(staged, target)
    except OSError:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return target
