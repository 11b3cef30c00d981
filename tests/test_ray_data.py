"""fusion-predict --engine ray: Ray Data scoring of CSV, JSONL and Parquet, faults, and the global LLM cap."""
from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from tests.support.data import make_tickets  # noqa: E402
from tests.support.llm_server import FakeLLMServer  # noqa: E402
from tests.support.toy_bundle import write_toy_bundle  # noqa: E402
from textclassify.runtime import load_bundle  # noqa: E402
from textclassify.runtime.errors import ConfigError, DataError  # noqa: E402
from textclassify.serve.ray_data import predict_dataset  # noqa: E402

LABELS = ["billing", "shipping", "technical"]
LLM = {"provider": "openai-compatible", "model": "fake", "base_url": "http://127.0.0.1:9/v1",
       "score_method": "json", "max_retries": 0, "timeout_s": 10.0}
TICKETS = make_tickets(60, seed=5)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for this module, shut down afterwards."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bundle_dir(tiny_roberta_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray") / "bundle"
    write_toy_bundle(out, Path(tiny_roberta_dir) / "tokenizer.json", labels=LABELS, multi_label=False, llm=LLM)
    return out


def _options(server: FakeLLMServer, cache: Path) -> dict:
    return {"llm_base_url": server.base_url, "cache_dir": str(cache)}


def _write_csv(path: Path, rows: list[tuple[int, str | None]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "note"])
        for i, text in rows:
            w.writerow([i, "" if text is None else text, f"n{i}, with comma"])


def _expected(bundle_dir: Path, server: FakeLLMServer, cache: Path, texts: list[str]):
    with load_bundle(bundle_dir, llm_base_url=server.base_url, cache_dir=cache) as bundle:
        return bundle.predict(texts)


def test_csv_folder_skip_bad_rows(local_ray, bundle_dir: Path, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """A folder of CSV files to Parquet: input columns kept, answers equal Bundle.predict, the blank row in errors."""
    src = tmp_path / "in"
    src.mkdir()
    rows = [(i, t) for i, (t, _) in enumerate(TICKETS[:40])]
    rows[7] = (7, None)
    _write_csv(src / "a.csv", rows[:20])
    _write_csv(src / "b.csv", rows[20:])
    out = tmp_path / "scored"
    summary = predict_dataset(str(bundle_dir), str(src), str(out), workers=2, batch_size=8, on_bad_row="skip",
                              load_options=_options(llm_server, tmp_path / "cache"), progress=False)
    table = pq.read_table(out)
    assert table.column_names == ["id", "text", "note", "prediction", "prob_billing", "prob_shipping",
                                  "prob_technical", "degraded", "llm_skipped"]
    got = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in got] == [i for i in range(40) if i != 7]
    assert all(r["note"] == f"n{r['id']}, with comma" for r in got)
    want = _expected(bundle_dir, llm_server, tmp_path / "cache", [r["text"] for r in got])
    assert [r["prediction"] for r in got] == want.predictions
    probs = np.array([[r[f"prob_{lab}"] for lab in LABELS] for r in got])
    np.testing.assert_allclose(probs, want.probabilities, atol=1e-6)
    assert not any(r["degraded"] or r["llm_skipped"] for r in got)
    errors = pq.read_table(summary["errors_file"]).to_pylist()
    assert len(errors) == 1 and errors[0]["file"] == str(src / "a.csv") and errors[0]["line"] == 9
    assert errors[0]["reason"] == f"{src / 'a.csv'} line 9: column 'text': the text is blank"
    assert json.loads(errors[0]["row"])["id"] == 7
    saved = json.loads(Path(str(out) + ".summary.json").read_text(encoding="utf-8"))
    assert saved["rows"] == 39 and saved["error_rows"] == 1 and saved["degraded_rows"] == 0
    assert sum(saved["prediction_counts"].values()) == 39 and saved["labels"] == LABELS
    assert saved["llm_usage"]["requests"] + saved["llm_usage"]["cache_hits"] >= 39
    assert saved["ray"]["workers_started"] == 2 and saved["providers"] == ["CPUExecutionProvider"]


def test_bad_row_stops_the_run_naming_file_and_line(local_ray, bundle_dir: Path, tmp_path: Path) -> None:
    """By default a row without text stops the run before any scoring, naming the file and the line."""
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": t}) for i, (t, _) in enumerate(TICKETS[:5])]
    lines[3] = json.dumps({"id": 3})
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        predict_dataset(str(bundle_dir), str(src), str(tmp_path / "out"), progress=False)
    assert str(err.value).startswith(f"{src} line 4: column 'text': no text (the cell is empty or missing); ")
    assert not (tmp_path / "out").exists()


def test_output_with_results_is_refused_unless_overwrite(bundle_dir: Path, tmp_path: Path) -> None:
    """An output folder holding files is refused before Ray starts; --llm-concurrency below --workers too."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part-0.parquet").write_bytes(b"old")
    (tmp_path / "in.csv").write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(DataError, match="already holds results; pass --overwrite"):
        predict_dataset(str(bundle_dir), str(tmp_path / "in.csv"), str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="--llm-concurrency must be an int of at least --workers"):
        predict_dataset(str(bundle_dir), str(tmp_path / "in.csv"), str(tmp_path / "o2"), workers=4, llm_concurrency=3)


def test_jsonl_to_csv_with_overwrite(local_ray, bundle_dir: Path, llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """JSONL in, CSV out over an existing output with overwrite: nested cells become JSON, old files go."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"ticket": f"T{i}", "text": t, "meta": {"i": i}}) + "\n"
                           for i, (t, _) in enumerate(TICKETS[:12])), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.csv").write_text("old\n", encoding="utf-8")
    summary = predict_dataset(str(bundle_dir), str(src), str(out), workers=1, batch_size=5, output_format="csv",
                              overwrite=True, load_options=_options(llm_server, tmp_path / "cache"), progress=False)
    assert not (out / "stale.csv").exists() and summary["rows"] == 12 and summary["errors_file"] is None
    rows = []
    for part in sorted(out.glob("*.csv")):
        with open(part, newline="", encoding="utf-8") as fh:
            rows += list(csv.DictReader(fh))
    rows.sort(key=lambda r: int(r["ticket"][1:]))
    assert [r["ticket"] for r in rows] == [f"T{i}" for i in range(12)]
    assert [json.loads(r["meta"]) for r in rows] == [{"i": i} for i in range(12)]
    want = _expected(bundle_dir, llm_server, tmp_path / "cache", [t for t, _ in TICKETS[:12]])
    assert [r["prediction"] for r in rows] == want.predictions


def test_parquet_glob_llm_concurrency_cap(local_ray, bundle_dir: Path, tmp_path: Path) -> None:
    """4 actors under --llm-concurrency 8: the fake server never sees more than 8 requests at once."""
    texts = [f"{t} #{i}" for i, (t, _) in enumerate(make_tickets(240, seed=8))]
    for k in range(2):
        pq.write_table(pa.table({"id": list(range(k * 120, (k + 1) * 120)), "text": texts[k * 120:(k + 1) * 120]}),
                       tmp_path / f"part{k}.parquet")
    # 0.25 CPU per actor: the 4 actors hold one of the 2 CPUs, so Ray Data's file listing (a task that asks for
    # a whole CPU) still finds one; at 0.5 each the actors held both and the run waited forever.
    with FakeLLMServer(delay_s=0.15) as server:
        summary = predict_dataset(str(bundle_dir), str(tmp_path / "part*.parquet"), str(tmp_path / "out"),
                                  workers=4, cpus_per_worker=0.25, batch_size=10, llm_concurrency=8,
                                  output_format="jsonl", load_options=_options(server, tmp_path / "cache"),
                                  progress=False)
        peak, requests = server.max_in_flight, server.requests
    assert requests == 240 and summary["rows"] == 240
    assert summary["ray"]["llm_concurrency_per_worker"] == 2
    assert 2 < peak <= 8, peak  # above one actor's share: the cap is global, and it held
    ids = sorted(json.loads(line)["id"] for f in (tmp_path / "out").glob("*.jsonl")
                 for line in f.read_text(encoding="utf-8").splitlines())
    assert ids == list(range(240))


def _worker_pids() -> list[int]:
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::") and "_BundleWorker" in cmd:
            pids.append(proc.pid)
    return pids


def test_killed_actor_every_row_once(local_ray, bundle_dir: Path, tmp_path: Path) -> None:
    """SIGKILL to a worker mid-run: Ray restarts it and retries its batches; every row comes out exactly once."""
    rows = [(i, f"{t} #{i}") for i, (t, _) in enumerate(make_tickets(80, seed=9))]
    _write_csv(tmp_path / "in.csv", rows)
    killed: list[int] = []
    with FakeLLMServer(delay_s=0.05) as server:
        def kill_one() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not killed:
                pids = _worker_pids()
                if pids and server.requests >= 15:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                time.sleep(0.05)

        killer = threading.Thread(target=kill_one, daemon=True)
        killer.start()
        summary = predict_dataset(str(bundle_dir), str(tmp_path / "in.csv"), str(tmp_path / "out"), workers=2,
                                  batch_size=8, load_options=_options(server, tmp_path / "cache"), progress=False)
        killer.join(5)
    assert killed, "no worker process was found to kill"
    ids = sorted(pq.read_table(tmp_path / "out").column("id").to_pylist())
    assert ids == list(range(80)) and summary["rows"] == 80
    assert summary["ray"]["workers_started"] >= 3  # the killed one was replaced


def test_batch_rows_keep_every_actor_busy_and_never_go_below_the_onnx_batch() -> None:
    """fusion-predict's 512-row chunk on a large input; on a small one a block's share (Ray Data merges blocks
    into one actor's batch); never fewer rows than the ONNX Runtime batch."""
    from textclassify.runtime import constants as K
    from textclassify.serve.ray_data import BLOCKS_PER_ACTOR, batch_rows

    assert batch_rows(20_000, 2, 64) == K.PREDICT_CHUNK_ROWS
    assert batch_rows(240, 4, 10) == -(-240 // (4 * BLOCKS_PER_ACTOR)) == 15
    assert batch_rows(240, 4, 64) == 64
    assert batch_rows(20_000, 2, 1024) == 1024


# Reads back output files the way predict_dataset does, in a child process, so a deadlock fails the test after
# the timeout instead of stalling the suite. argv: output format, multi-label (0/1), Arrow CPU threads, files, rows.
COUNT_CHILD = r"""
import json, sys
from pathlib import Path
import pyarrow as pa, pyarrow.csv as pacsv, pyarrow.parquet as pq
from textclassify.serve.ray_data import _count_output
fmt, multi, threads, files, rows = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
pa.set_cpu_count(threads)
folder = Path(sys.argv[6])
for k in range(files):
    preds = [["a", "b"] if i % 3 == 0 else ["b"] for i in range(rows)] if multi else ["ab"[i % 2] for i in range(rows)]
    table = pa.table({"text": ["x" * 120] * rows, "prediction": preds, "prob_a": [0.5] * rows,
                      "degraded": [i % 5 == 0 for i in range(rows)], "llm_skipped": [i % 4 == 0 for i in range(rows)]})
    path = folder / f"part{k}.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        if multi:
            table = table.set_column(1, "prediction", pa.array([json.dumps(p) for p in preds]))
        pacsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()), encoding="utf-8")
print(json.dumps(_count_output(folder, fmt, ["a", "b"], multi)))
"""


@pytest.mark.parametrize(("fmt", "multi", "threads", "files", "rows"), [
    ("jsonl", False, 1, 30, 4),       # the dataset scan waited forever: 12+ files at 1 Arrow CPU thread
    ("jsonl", False, 2, 4, 9_000),    # ... and 4 files over its 1 MiB block at 2 threads
    ("jsonl", True, 1, 30, 4),
    ("csv", True, 1, 30, 4),
    ("parquet", False, 1, 30, 4),
])
def test_output_count_reads_many_and_large_files_without_waiting_forever(
        tmp_path: Path, fmt: str, multi: bool, threads: int, files: int, rows: int) -> None:
    """The count check after a run reads every written file back; JSON Lines, CSV and Parquet, at 1 or 2 Arrow
    CPU threads (1 is what OMP_NUM_THREADS=1 or a 1-CPU container gives)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", COUNT_CHILD, fmt, str(int(multi)), str(threads), str(files),
                          str(rows), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    counted = json.loads(out.stdout)
    n = files * rows
    want_preds = ({"a": files * len(range(0, rows, 3)), "b": n} if multi
                  else {"a": files * len(range(0, rows, 2)), "b": files * len(range(1, rows, 2))})
    assert counted == {"rows": n, "prediction_counts": want_preds, "degraded_rows": files * len(range(0, rows, 5)),
                       "llm_skipped_rows": files * len(range(0, rows, 4))}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_output_count_skips_an_empty_file(tmp_path: Path, fmt: str) -> None:
    """A 0-byte JSON Lines or CSV file beside the others counts as no rows (pyarrow's readers refuse it)."""
    from textclassify.serve.ray_data import _count_output

    rows = [{"prediction": "a", "degraded": True, "llm_skipped": False},
            {"prediction": "b", "degraded": False, "llm_skipped": True}]
    if fmt == "jsonl":
        (tmp_path / "part0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        (tmp_path / "part0.csv").write_text("prediction,degraded,llm_skipped\na,true,false\nb,false,true\n",
                                            encoding="utf-8")
    (tmp_path / f"part1.{fmt}").write_bytes(b"")
    assert _count_output(tmp_path, fmt, ["a", "b"], False) == {
        "rows": 2, "prediction_counts": {"a": 1, "b": 1}, "degraded_rows": 1, "llm_skipped_rows": 1}
