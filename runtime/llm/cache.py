"""SQLite cache of LLM label scores: one row per answer, written as it arrives, shared by processes.

Rows are keyed by a sha256 of everything that decides the answer (provider, model, base URL,
prompt version, score method, ordered labels, multi-label flag, text); the API key is never part of
anything stored. A `claims` table lets concurrent processes skip texts another live process is
requesting at that moment, so two runs over the same texts do not pay twice.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textclassify.runtime.errors import CacheError

log = logging.getLogger("textclassify.llm")
CACHE_FILE = "llm_scores.sqlite3"
SCHEMA_VERSION = "1"
BUSY_TIMEOUT_S = 30.0
_CHUNK = 500
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, scores TEXT NOT NULL, method TEXT NOT NULL,"
    " usage TEXT, created REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed REAL NOT NULL)"
    " WITHOUT ROWID",
)


def _digest(parts: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode("utf-8")).hexdigest()


def score_key(
    *, provider: str, model: str, base_url: str, prompt_version: str, score_method: str,
    labels: Sequence[str], multi_label: bool, text: str,
) -> str:
    """The cache key of one text's scores under one request configuration."""
    return _digest(["score", provider, model, base_url, prompt_version, score_method, list(labels),
                    bool(multi_label), text])


def resolution_key(
    *, provider: str, model: str, base_url: str, prompt_version: str, labels: Sequence[str], multi_label: bool,
) -> str:
    """The meta key under which score_method 'auto' records what it resolved to."""
    return "resolved_method:" + _digest([provider, model, base_url, prompt_version, list(labels), bool(multi_label)])


@dataclass(frozen=True)
class Claim:
    """Outcome of claiming a text: 'cached' (scores set), 'mine' (go and request it) or 'busy'."""

    state: str
    scores: list[float] | None = None


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there; rely on the lease instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Locked(Exception):
    """Another process holds the database while it is being set up."""


class ScoreCache:
    """The cache file `<cache_dir>/llm_scores.sqlite3`; raises CacheError naming it when unusable."""

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        directory = Path(os.path.expanduser(os.fspath(cache_dir)))
        self.path = directory / CACHE_FILE
        self._host = socket.gethostname()
        self.owner = f"{self._host}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self.read_only = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"LLM score cache directory {directory} cannot be created: {e}") from None
        try:
            self._conn = self._open()
        except CacheError:
            if not self._cannot_write():
                raise
            self._conn = self._open_read_only()

    def _open(self) -> sqlite3.Connection:
        # Two processes creating the same cache at once can see "database is locked" while the other
        # switches it to WAL (SQLite's busy handler does not cover that step): wait and retry, and only
        # then call the file corrupt.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return self._open_once()
            except _Locked:
                if time.monotonic() > deadline:
                    raise CacheError(f"LLM score cache {self.path} stayed locked for {BUSY_TIMEOUT_S:g} s "
                                     "by another process.") from None
                time.sleep(0.05)

    def _cannot_write(self) -> bool:
        """True when the cache file exists but this process cannot write it or its folder (a read-only
        filesystem, or permissions): then it is served read-only instead of being called corrupt."""
        if not self.path.is_file():
            return False
        if not os.access(self.path, os.W_OK) or not os.access(self.path.parent, os.W_OK):
            return True
        probe = self.path.parent / f".{self.path.name}.probe-{uuid.uuid4().hex[:8]}"
        try:  # os.access does not see a read-only mount for root: try the folder itself
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except OSError as e:
            return e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        os.close(fd)
        probe.unlink()
        return False

    def _open_read_only(self) -> sqlite3.Connection:
        """The cache opened read-only (hits are served, nothing is written); CacheError if even that fails."""
        last: Exception | None = None
        for query in ("mode=ro", "immutable=1"):  # immutable: no -shm/-wal needed beside a WAL database
            try:
                conn = sqlite3.connect(f"{self.path.as_uri()}?{query}", uri=True, timeout=BUSY_TIMEOUT_S,
                                       isolation_level=None, check_same_thread=False)
                version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            except sqlite3.Error as e:
                last = e
                continue
            if version is None or version[0] != SCHEMA_VERSION:
                conn.close()
                raise CacheError(f"LLM score cache {self.path} is read-only and has schema version "
                                 f"{None if version is None else version[0]!r}, expected {SCHEMA_VERSION!r}; "
                                 "point cache_dir at a writable folder.")
            self.read_only = True
            log.warning("LLM score cache %s is read-only: cached answers are served, new answers are not "
                        "stored (point cache_dir at a writable folder to keep them).", self.path)
            return conn
        raise CacheError(f"LLM score cache {self.path} is read-only (a read-only filesystem or no write "
                         f"permission) and could not be opened for reading either ({last}); point cache_dir at a "
                         "writable folder, or run without a cache (cache_dir=None).")

    def _open_once(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as e:
            raise CacheError(f"LLM score cache {self.path} cannot be opened: {e}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            check = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(map(str, check[:3])))
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()[0]
        except sqlite3.OperationalError as e:
            conn.close()
            if "locked" in str(e) or "busy" in str(e):
                raise _Locked() from None
            raise CacheError(
                f"LLM score cache {self.path} is corrupt or not an SQLite database ({e}); "
                "move it aside or delete it to start a fresh cache."
            ) from None
        except sqlite3.Error as e:
            conn.close()
            raise CacheError(
                f"LLM score cache {self.path} is corrupt or not an SQLite database ({e}); "
                "move it aside or delete it to start a fresh cache."
            ) from None
        if version != SCHEMA_VERSION:
            conn.close()
            raise CacheError(f"LLM score cache {self.path} has schema version {version!r}, "
                             f"expected {SCHEMA_VERSION!r}; move it aside to start a fresh cache.")
        return conn

    @contextmanager
    def _guard(self, transaction: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if transaction:
                    self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    if transaction and self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                if transaction:
                    self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise CacheError(f"LLM score cache {self.path} failed: {e}") from None

    def _decode(self, key: str, raw: str, n_labels: int) -> list[float]:
        try:
            scores = json.loads(raw)
        except ValueError:
            scores = None
        if (not isinstance(scores, list) or len(scores) != n_labels
                or not all(isinstance(s, (int, float)) and math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)):
            raise CacheError(f"LLM score cache {self.path} holds an invalid row (key {key[:16]}...: "
                             f"{raw[:80]!r}, expected {n_labels} scores in [0, 1]); delete the file to rebuild it.")
        return [float(s) for s in scores]

    def get_many(self, keys: Sequence[str], n_labels: int) -> dict[str, list[float]]:
        """Cached scores of those `keys` that have a row."""
        found: dict[str, list[float]] = {}
        with self._guard() as conn:
            for start in range(0, len(keys), _CHUNK):
                chunk = list(keys[start:start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                for key, raw in conn.execute(f"SELECT key, scores FROM scores WHERE key IN ({marks})", chunk):
                    found[key] = self._decode(key, raw, n_labels)
        return found

    def put(self, key: str, scores: Sequence[float], method: str, usage: dict[str, int] | None = None) -> None:
        """Store one answer (and drop this process's claim on it) in one short transaction."""
        if self.read_only:
            return
        row = (key, json.dumps([float(s) for s in scores]), method, json.dumps(usage or {}), time.time())
        with self._guard(transaction=True) as conn:
            conn.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)", row)
            conn.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))

    def claim(self, key: str, n_labels: int, lease_s: float) -> Claim:
        """Cached scores, or a claim on `key` for this process, or 'busy' while another live one holds it."""
        now = time.time()
        if self.read_only:  # no claims: other processes cannot see them anyway
            found = self.get_many([key], n_labels)
            return Claim("cached", found[key]) if key in found else Claim("mine")
        with self._guard(transaction=True) as conn:
            row = conn.execute("SELECT scores FROM scores WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return Claim("cached", self._decode(key, row[0], n_labels))
            held = conn.execute("SELECT owner, claimed FROM claims WHERE key = ?", (key,)).fetchone()
            if held is not None and held[0] != self.owner and not self._stale(held[0], held[1], now, lease_s):
                return Claim("busy")
            conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (key, self.owner, now))
        return Claim("mine")

    def _stale(self, owner: str, claimed: float, now: float, lease_s: float) -> bool:
        if now - claimed > lease_s:
            return True
        host, _, rest = owner.partition(":")
        pid_text = rest.partition(":")[0]
        if host != self._host or not pid_text.isdigit() or int(pid_text) == os.getpid():
            return False
        return not _pid_alive(int(pid_text))

    def release(self, key: str) -> None:
        """Drop this process's claim on `key` (after a failure)."""
        if self.read_only:
            return
        with self._guard(transaction=True) as conn:
            conn.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))

    def get_meta(self, name: str) -> str | None:
        """A value of the meta table, or None."""
        with self._guard() as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        """Set a value of the meta table."""
        if self.read_only:
            return
        with self._guard(transaction=True) as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def merge_from(self, source: str | os.PathLike[str]) -> dict[str, int]:
        """Copy the answers and 'auto' resolutions of another cache (a cache_dir or its .sqlite3 file) into this
        one, in one transaction; rows this cache already holds are kept. Claims are never copied (they name
        processes of the other machine). Returns {'copied', 'already_here', 'meta_copied', 'meta_conflicts'}."""
        if self.read_only:
            raise CacheError(f"LLM score cache {self.path} is read-only; merge into a writable cache.")
        path = Path(os.path.expanduser(os.fspath(source)))
        path = path / CACHE_FILE if path.is_dir() else path
        if not path.is_file():
            raise CacheError(f"LLM score cache {path} does not exist (give a cache_dir or its {CACHE_FILE}).")
        if path.resolve() == self.path.resolve():
            raise CacheError(f"LLM score cache {path} is the cache being merged into; give two different caches.")
        try:
            src = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
            version = src.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            if version is None or version[0] != SCHEMA_VERSION:
                found = None if version is None else version[0]
                raise CacheError(f"LLM score cache {path} has schema version {found!r}, expected {SCHEMA_VERSION!r}; "
                                 "it cannot be merged.")
            rows = src.execute("SELECT key, scores, method, usage, created FROM scores").fetchall()
            meta = src.execute("SELECT name, value FROM meta WHERE name != 'schema_version'").fetchall()
            src.close()
        except sqlite3.Error as e:
            raise CacheError(f"LLM score cache {path} cannot be read ({e}); is it a textclassify cache?") from None
        report = {"copied": 0, "already_here": 0, "meta_copied": 0, "meta_conflicts": 0}
        with self._guard(transaction=True) as conn:
            before = conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
            conn.executemany("INSERT OR IGNORE INTO scores VALUES (?, ?, ?, ?, ?)", rows)
            report["copied"] = conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0] - before
            for name, value in meta:
                here = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
                if here is None:
                    conn.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
                    report["meta_copied"] += 1
                elif here[0] != value:  # 'auto' resolved differently there: this cache's choice stays
                    report["meta_conflicts"] += 1
        report["already_here"] = len(rows) - report["copied"]
        return report

    def count(self) -> int:
        """Number of cached answers."""
        with self._guard() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()
