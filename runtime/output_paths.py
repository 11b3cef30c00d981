"""Output paths checked before any work starts, and temp files that never outlive their process.

Every command that writes a result checks where it will go first: scoring 10,000 texts or training for an
hour and then failing on an output path that was a folder, a symlink, the input file itself or an existing
file where a folder must go loses the work. Temp files live beside their target and are removed on every
exit path, SIGTERM included (`exit_on_sigterm` turns it into SystemExit so `finally` blocks run).
"""
from __future__ import annotations

import os
import signal
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from textclassify.runtime.errors import DataError

STDOUT = "-"


def check_output_file(path: str, *, inputs: Sequence[str] = (), what: str = "--output") -> Path | None:
    """The output file's path, or None for '-' (stdout); DataError when it cannot or must not be written.

    Refused: an existing symlink or anything that is not a regular file (a folder, /dev/stdout, a FIFO), a
    missing or non-folder parent, and the same file as one of `inputs` (by path and by inode).
    """
    if path == STDOUT:
        return None
    p = Path(path).expanduser()
    if p.is_symlink():
        raise DataError(f"{what} {str(path)!r} is a symlink; refusing to replace it (give the real path, or '-' "
                        "for stdout).")
    if p.exists() and not p.is_file():
        kind = "a folder" if p.is_dir() else "not a regular file"
        raise DataError(f"{what} {str(path)!r} is {kind}; give a file path (or '-' for stdout).")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise DataError(f"{what} {str(path)!r}: the folder {str(parent)!r} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"{what} {str(path)!r}: the folder {str(parent)!r} is not writable.")
    for source in inputs:
        if _same_file(p, Path(source).expanduser()):
            raise DataError(f"{what} {str(path)!r} is the input file {str(source)!r}; writing it would destroy "
                            "the input. Choose another output path.")
    return p


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts: same device and inode
    except OSError:
        return False


def check_output_dir(path: str | os.PathLike[str], what: str = "output_dir",
                     files: Sequence[str] = (), folders: Sequence[str] = ()) -> Path:
    """A folder that exists or can be created, with `files` and `folders` inside it writable as such.

    Refused: an existing path that is not a folder, a parent on the way that is a file, a folder that is not
    writable, and an entry named in `files` that is a folder (or in `folders` that is a file).
    """
    target = Path(os.fspath(path)).expanduser()
    if target.exists() and not target.is_dir():
        raise DataError(f"{what} {str(path)!r} exists and is not a folder; give a folder path (the results are "
                        "written inside it).")
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise DataError(f"{what} {str(path)!r}: {str(existing)!r} is a file, so the folder cannot be created.")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{what} {str(path)!r}: {str(existing)!r} is not writable.")
    for name in files:
        entry = target / name
        if entry.is_dir() or (entry.exists() and not entry.is_file()):
            raise DataError(f"{what}: {str(entry)!r} is in the way (a folder where a file is written).")
    for name in folders:
        entry = target / name
        if entry.exists() and not entry.is_dir():
            raise DataError(f"{what}: {str(entry)!r} is in the way (a file where a folder is written).")
    return target


SIGTERM_GRACE_S = 5.0  # how long the unwinding after SIGTERM may take before the process is ended anyway


class _Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that context managers and `finally` blocks clean up."""


def _force_exit_after(grace_s: float) -> None:
    """A daemon thread that, if the process still runs after `grace_s`, deletes atomic_path's temp files and
    ends it with 143. The SystemExit a handler raises is lost when the signal lands inside a finalizer or a
    weakref callback (Python prints "Exception ignored in ..." and goes on), so it cannot be the only way out."""
    from textclassify.runtime.atomic import LIVE_TEMP_FILES

    def watchdog() -> None:
        time.sleep(grace_s)
        for tmp in list(LIVE_TEMP_FILES):
            tmp.unlink(missing_ok=True)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watchdog, name="textclassify-sigterm", daemon=True).start()


@contextmanager
def exit_on_sigterm(grace_s: float = SIGTERM_GRACE_S) -> Iterator[None]:
    """While inside, SIGTERM raises SystemExit(143) in the main thread (elsewhere: nothing changes); if the
    process has not ended `grace_s` later, its temp files are deleted and it exits with 143 regardless."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        _force_exit_after(grace_s)
        raise _Terminated(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True for a regular file that is not a symlink."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
