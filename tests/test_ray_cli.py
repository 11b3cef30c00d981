"""fusion-predict --engine ray from the command line, the default engine without Ray, and fusion-cache merge."""
from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.data import make_tickets
from tests.support.llm_server import FakeLLMServer
from tests.support.toy_bundle import write_toy_bundle
from textclassify.runtime.cache_cli import main as cache_main
from textclassify.runtime.llm.cache import ScoreCache
from textclassify.runtime.predict_cli import main

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1",
       "score_method": "json", "max_retries": 0, "timeout_s": 10.0}
ROWS = [(i, f"{t} (#{i})") for i, (t, _) in enumerate(make_tickets(20, seed=3))]
NO_RAY = textwrap.dedent("""
    import importlib.abc, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in ("ray", "textclassify.serve")):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())
    from textclassify.runtime.predict_cli import main
    main(sys.argv[1:])
""")


@pytest.fixture(scope="module")
def bundle_dir(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray_cli") / "bundle"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False, llm=LLM)
    return out


def _write_csv(path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text"])
        w.writerows(ROWS)


def test_default_engine_imports_no_ray(bundle_dir: Path, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """The single-process engine scores a file with `ray` and textclassify.serve made unimportable."""
    _write_csv(tmp_path / "in.csv")
    args = ["--bundle", str(bundle_dir), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"),
            "--llm-base-url", llm_server.base_url, "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run([sys.executable, "-c", NO_RAY, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Wrote 20 rows to" in proc.stderr and (tmp_path / "out.csv").is_file()


def test_ray_options_need_engine_ray(bundle_dir: Path, tmp_path: Path) -> None:
    """A Ray option (or --format parquet) with the default engine is a usage error, before any work."""
    _write_csv(tmp_path / "in.csv")
    base = ["--bundle", str(bundle_dir), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv")]
    for extra, flag in ((["--workers", "2"], "--workers"), (["--overwrite"], "--overwrite"),
                        (["--format", "parquet"], "--format parquet")):
        res = CliRunner().invoke(main, base + extra)
        assert res.exit_code == 2 and f"Error: {flag} is an option of --engine ray." in res.output, res.output
    assert not (tmp_path / "o.csv").exists()


def test_engine_ray_writes_a_folder_and_the_summary_lines(bundle_dir: Path, tmp_path: Path) -> None:
    """--engine ray on a local Ray: a CSV folder with every row once, and single-process fusion-predict's summary."""
    ray = pytest.importorskip("ray")
    _write_csv(tmp_path / "in.csv")
    out = tmp_path / "scored"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with FakeLLMServer() as server:
            res = CliRunner().invoke(main, [
                "--engine", "ray", "--bundle", str(bundle_dir), "--input", str(tmp_path / "in.csv"), "--output",
                str(out), "--format", "csv", "--workers", "2", "--cpus-per-worker", "0.5", "--batch-size", "6",
                "--llm-concurrency", "4", "--llm-base-url", server.base_url, "--cache-dir", str(tmp_path / "cache")])
            requests = server.requests
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output
    ids = []
    for part in out.glob("*.csv"):
        with open(part, newline="", encoding="utf-8") as fh:
            ids += [int(r["id"]) for r in csv.DictReader(fh)]
    assert sorted(ids) == list(range(20))
    assert f"Wrote 20 rows to {out} (errors: none) (0 degraded, 0 without an answer); summary in {out}.summary.json" \
        in res.stderr
    assert f"LLM cost: {requests} requests, {20 - requests} cache hits, 0 rows answered without the LLM" in res.stderr


def _cache_with(folder: Path, texts: list[str]) -> None:
    cache = ScoreCache(folder)
    for text in texts:
        cache.put(f"key-{text}", [0.2, 0.3, 0.5], "json")
    cache.close()


def test_fusion_cache_merge(tmp_path: Path) -> None:
    """merge copies the rows the target lacks and keeps its own; a second merge copies nothing; errors are one line."""
    _cache_with(tmp_path / "a", ["x", "y", "z"])
    _cache_with(tmp_path / "b", ["y", "w"])
    res = CliRunner().invoke(cache_main, ["merge", str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert f"Merged {tmp_path / 'a'} into {tmp_path / 'b' / 'llm_scores.sqlite3'}: 2 answers copied, 1 already " \
           "there, 4 in all; 0 'auto' resolutions copied" in res.output
    again = CliRunner().invoke(cache_main, ["merge", str(tmp_path / "a" / "llm_scores.sqlite3"), str(tmp_path / "b")])
    assert "0 answers copied, 3 already there, 4 in all" in again.output
    info = CliRunner().invoke(cache_main, ["info", str(tmp_path / "b")])
    assert '"answers": 4' in info.output
    missing = CliRunner().invoke(cache_main, ["merge", str(tmp_path / "nope"), str(tmp_path / "b")])
    assert missing.exit_code == 1
    assert missing.output.strip() == (f"Error: LLM score cache {tmp_path / 'nope'} does not exist (give a cache_dir "
                                      "or its llm_scores.sqlite3).")
    same = CliRunner().invoke(cache_main, ["merge", str(tmp_path / "b"), str(tmp_path / "b")])
    assert same.exit_code == 1 and "is the cache being merged into" in same.output
