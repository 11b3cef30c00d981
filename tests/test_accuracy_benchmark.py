"""benchmarks/accuracy.py --from-json: saved runs are pooled case by case and judged on every seed."""
from __future__ import annotations

import json

import pytest

from benchmarks.accuracy import main, pooled_runs

CASE = "movie reviews, n_train 300, LLM 60%"


def _run(seed: int, fused: float, stacker: float) -> dict:
    metrics = {"ml": [0.70, 0.70], "lexical": [0.60, 0.60], "llm_raw": [0.60, 0.50], "llm": [0.60, 0.50],
               "stacker": [stacker, stacker], "fused": [fused, fused]}
    return {"metrics": metrics, "combiner": "stacker", "lexical": "served", "fit_s": 1.0, "stage1_s": 1.0,
            "stage1": {"steps_run": 10, "collapsed": False, "retried": False}, "errors": None, "seed": seed,
            "n_train": 300, "llm_acc": 0.6}


def _save(path, runs) -> str:
    path.write_text(json.dumps({CASE: runs}), encoding="utf-8")
    return str(path)


def test_runs_of_two_files_are_pooled_and_judged_together(tmp_path, capsys) -> None:
    # seeds 0-1 alone meet the targets; seed 2 (fused below the stacker) pulls the pooled mean under it
    a = _save(tmp_path / "a.json", [_run(1, 0.75, 0.74), _run(0, 0.75, 0.74)])
    b = _save(tmp_path / "b.json", [_run(2, 0.72, 0.76)])
    assert [r["seed"] for r in pooled_runs([a, b])[CASE]] == [0, 1, 2]
    assert main(["--from-json", a]) == 0
    assert capsys.readouterr().out.count("-> met") == 2
    assert main(["--from-json", a, b]) == 0
    out = capsys.readouterr().out
    assert "(seeds [0, 1, 2])" in out and out.count("-> NOT met") == 2
    assert "fused 0.740 vs best part 0.700" in out and "stacker 0.747" in out


def test_a_seed_saved_twice_or_an_unreadable_file_is_an_error(tmp_path) -> None:
    a = _save(tmp_path / "a.json", [_run(0, 0.75, 0.74)])
    with pytest.raises(SystemExit, match=r"holds seed\(s\) \[0\] of 'movie reviews, n_train 300, LLM 60%' again"):
        pooled_runs([a, a])
    with pytest.raises(SystemExit, match="cannot read .*missing.json"):
        pooled_runs([str(tmp_path / "missing.json")])
    (tmp_path / "list.json").write_text("[]", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a file written by --json"):
        pooled_runs([str(tmp_path / "list.json")])


def test_each_target_line_says_fused_minus_stacker_seed_by_seed(tmp_path, capsys) -> None:
    # differences of +1, 0 and -4 points: mean -1.00, standard error sqrt(7) / sqrt(3) = 1.53
    a = _save(tmp_path / "a.json", [_run(0, 0.75, 0.74), _run(1, 0.74, 0.74), _run(2, 0.72, 0.76)])
    assert main(["--from-json", a]) == 0
    out = capsys.readouterr().out
    assert out.count("fused - stacker -1.00 ± 1.53 pts a seed; seeds above / equal / below 1 / 1 / 1") == 2
