"""Tests of textclassify.runtime.llm.cache: keys, rows, claims between processes, corrupt files."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.llm_server import FakeLLMServer
from textclassify.runtime.errors import CacheError
from textclassify.runtime.llm import LLMScorer
from textclassify.runtime.llm.cache import CACHE_FILE, ScoreCache, resolution_key, score_key

LABELS = ["billing", "shipping", "technical"]
KEY_PARTS = dict(provider="openai-compatible", model="fake", base_url="http://h/v1", prompt_version="v1",
                 score_method="json", labels=LABELS, multi_label=False, text="hello")


@pytest.mark.parametrize("part,value", [
    ("provider", "openai"), ("model", "other"), ("base_url", "http://x/v1"), ("prompt_version", "v2"),
    ("score_method", "logprobs"), ("labels", ["shipping", "billing", "technical"]), ("multi_label", True),
    ("text", "hello "),
])
def test_every_key_part_changes_the_key(part: str, value: object) -> None:
    """Each input of the cache key (label order included) gives a different key."""
    assert score_key(**KEY_PARTS) != score_key(**{**KEY_PARTS, part: value})


def test_resolution_key_ignores_text_and_method() -> None:
    """The 'auto' resolution is recorded per configuration, not per text."""
    parts = {k: v for k, v in KEY_PARTS.items() if k not in ("score_method", "text")}
    assert resolution_key(**parts) == resolution_key(**parts)
    assert resolution_key(**parts) != resolution_key(**{**parts, "model": "other"})


def test_put_get_roundtrip_in_wal_mode(tmp_path: Path) -> None:
    """Rows round-trip, the file is in WAL mode, '~' in cache_dir is expanded."""
    cache = ScoreCache(tmp_path / "c")
    cache.put("k1", [0.5, 0.25, 0.0], "json", {"total_tokens": 3})
    assert cache.get_many(["k1", "k2"], 3) == {"k1": [0.5, 0.25, 0.0]}
    assert cache.count() == 1
    cache.close()
    with sqlite3.connect(tmp_path / "c" / CACHE_FILE) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        row = conn.execute("SELECT method, usage FROM scores").fetchone()
    assert row == ("json", '{"total_tokens": 3}')


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cache_dir '~/x' lands under $HOME."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = ScoreCache("~/cachedir")
    assert cache.path == tmp_path / "cachedir" / CACHE_FILE and cache.path.exists()
    cache.close()


def test_meta_roundtrip(tmp_path: Path) -> None:
    """Meta values persist across connections."""
    ScoreCache(tmp_path).set_meta("resolved", "json")
    assert ScoreCache(tmp_path).get_meta("resolved") == "json"
    assert ScoreCache(tmp_path).get_meta("absent") is None


def test_claims_between_owners(tmp_path: Path) -> None:
    """A live owner's claim makes others wait; an answer turns the claim into a cached row."""
    a, b = ScoreCache(tmp_path), ScoreCache(tmp_path)
    assert a.claim("k", 3, lease_s=60).state == "mine"
    assert b.claim("k", 3, lease_s=60).state == "busy"
    assert a.claim("k", 3, lease_s=60).state == "mine"  # re-claiming one's own is fine
    a.put("k", [1.0, 0.0, 0.0], "json")
    claim = b.claim("k", 3, lease_s=60)
    assert (claim.state, claim.scores) == ("cached", [1.0, 0.0, 0.0])


def test_released_or_expired_claims_are_taken_over(tmp_path: Path) -> None:
    """A released claim frees the text; an expired lease does too."""
    a, b = ScoreCache(tmp_path), ScoreCache(tmp_path)
    a.claim("k", 3, lease_s=60)
    a.release("k")
    assert b.claim("k", 3, lease_s=60).state == "mine"
    assert a.claim("k", 3, lease_s=0.0).state == "mine"  # b's claim is older than a zero lease


def test_claim_of_a_dead_process_is_stale(tmp_path: Path) -> None:
    """A claim left by a process that no longer runs (same host) is taken over at once."""
    code = ("import sys; from textclassify.runtime.llm.cache import ScoreCache; "
            "print(ScoreCache(sys.argv[1]).claim('k', 3, lease_s=3600).state)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "mine"
    assert ScoreCache(tmp_path).claim("k", 3, lease_s=3600).state == "mine"


def test_not_a_database_raises_cache_error_naming_the_file(tmp_path: Path) -> None:
    """A cache file that is not SQLite is refused with CacheError naming the file, before any request."""
    path = tmp_path / CACHE_FILE
    path.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(CacheError) as info:
        ScoreCache(tmp_path)
    assert str(info.value) == (f"LLM score cache {path} is corrupt or not an SQLite database (file is not a "
                               "database); move it aside or delete it to start a fresh cache.")


def test_truncated_database_raises_cache_error(tmp_path: Path) -> None:
    """A cache file cut in half (a crash mid-copy) is refused, never read as wrong scores."""
    cache = ScoreCache(tmp_path)
    for i in range(400):
        cache.put(f"key-{i:04d}-" + "x" * 40, [0.1, 0.2, 0.3], "json", {"total_tokens": i})
    cache.close()
    path = tmp_path / CACHE_FILE
    for side in (path.with_name(CACHE_FILE + "-wal"), path.with_name(CACHE_FILE + "-shm")):
        side.unlink(missing_ok=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CacheError, match=f"^LLM score cache {path} is corrupt or not an SQLite database"):
        ScoreCache(tmp_path).get_many(["key-0001-" + "x" * 40], 3)


def test_invalid_row_raises_cache_error(tmp_path: Path) -> None:
    """A row whose scores are not C numbers in [0, 1] is an error, not a silent wrong score."""
    cache = ScoreCache(tmp_path)
    cache.put("k", [0.1, 0.2, 0.3], "json")
    with pytest.raises(CacheError, match=r"holds an invalid row \(key k\.\.\.: '\[0\.1, 0\.2, 0\.3\]', expected 4 "):
        cache.get_many(["k"], 4)


def test_scorer_refuses_a_corrupt_cache_before_requesting(tmp_path: Path, llm_server: FakeLLMServer) -> None:
    """LLMScorer with a corrupt cache file raises CacheError and sends nothing."""
    (tmp_path / CACHE_FILE).write_bytes(b"\x00garbage" * 64)
    with pytest.raises(CacheError, match=str(tmp_path / CACHE_FILE)):
        LLMScorer(llm_server.settings(score_method="json"), LABELS, False, cache_dir=tmp_path)
    assert llm_server.requests == 0


def test_cache_holds_no_api_key(tmp_path: Path, llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """After scoring (and an echoed key), the cache files' bytes do not contain the key."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET123")
    llm_server.inject("echo_key", status=500)
    with LLMScorer(llm_server.settings(score_method="auto"), LABELS, False, cache_dir=tmp_path,
                   backoff_initial_s=0.01) as scorer:
        scorer.score(["ticket 1: refund please", "ticket 2: parcel late"])
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"sk-test-SECRET123" not in blobs and b"SECRET" not in blobs
    assert ScoreCache(tmp_path).count() == 2


def test_texts_all_in_the_cache_need_no_event_loop(tmp_path: Path, llm_server: FakeLLMServer) -> None:
    """A call the cache answers whole runs on the caller's thread: no loop thread, no request, same scores."""
    import threading

    texts = ["card charged twice", "parcel lost", "app crashes"]
    with LLMScorer(llm_server.settings(score_method="json"), LABELS, False, cache_dir=tmp_path) as scorer:
        first = scorer.score(texts)
    requests = llm_server.requests
    loops = sum(t.name == "textclassify-llm" for t in threading.enumerate())
    with LLMScorer(llm_server.settings(score_method="json"), LABELS, False, cache_dir=tmp_path) as scorer:
        again = scorer.score(texts[::-1] + texts[:1])
        assert sum(t.name == "textclassify-llm" for t in threading.enumerate()) == loops
        assert scorer.usage["cache_hits"] == 3 and scorer.usage["requests"] == 0
        assert (again[:3] == first[::-1]).all() and (again[3] == first[0]).all()
        scorer.score(["a new text"])  # one miss: the loop starts and the LLM is asked
        assert sum(t.name == "textclassify-llm" for t in threading.enumerate()) == loops + 1
    assert llm_server.requests == requests + 1
