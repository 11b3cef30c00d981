"""docs/: config.md is what the schema gives, and README.md and docs/ name only real commands and links."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from textclassify.train.config import DEFAULT_CONFIG
from textclassify.train.yaml_config import ALIASES, IGNORED

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_config = _load("gen_config")
check_docs = _load("check_docs")


def _leaves(config: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


def test_config_md_is_current():
    """docs/config.md equals what docs/gen_config.py renders from train/config.py (run `make docs` if not)."""
    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == gen_config.render()


def test_config_md_lists_every_key_default_and_alias():
    """Each config key has a row with its JSON default; each seed alias has a row."""
    text = gen_config.render()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    for key in _leaves(DEFAULT_CONFIG):
        assert f"`{key}`" in rows, key
    assert "| `fusion.ml_lr` | `fusion.ml_lr` | `1e-05` | a float in (0, 1] |" in rows["`fusion.ml_lr`"]
    for alias in [*ALIASES, *IGNORED]:
        assert f"`{alias}`" in rows, alias


def test_gen_config_check_mode_detects_a_stale_file(tmp_path, monkeypatch):
    """--check exits 1 when the file differs and 0 when it matches."""
    monkeypatch.setattr(gen_config, "OUTPUT", tmp_path / "config.md")
    (tmp_path / "config.md").write_text("stale\n", encoding="utf-8")
    assert gen_config.main(["--check"]) == 1
    assert gen_config.main([]) == 0
    assert gen_config.main(["--check"]) == 0


def test_readme_and_docs_have_no_problems():
    """Every command exists, every link resolves, nothing names an outside document."""
    assert check_docs.problems() == []


def test_make_docs_check_is_part_of_make_test():
    """`make test` runs docs-check first."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_line = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "docs-check" in test_line.split(":", 1)[1].split()
    assert "docs-check:" in makefile


def test_commands_join_continuations_and_drop_prompts_and_env():
    """Shell lines become argument lists: continuations joined, `$ ` and VAR=value prefixes dropped."""
    lines = ["# a comment", "$ DEV=cpu fusion-train --data a.csv \\", "    --seed 3 && make test", "",
             "curl -s x | cat"]
    assert check_docs.commands(lines) == [["fusion-train", "--data", "a.csv", "--seed", "3"], ["make", "test"],
                                          ["curl", "-s", "x"], ["cat"]]


@pytest.mark.parametrize(("words", "message"), [
    (["fusion-train", "--no-such-flag"], "fusion-train: no option --no-such-flag"),
    (["make", "no-such-target"], "make: no target no-such-target in the Makefile"),
    (["python", "-m", "textclassify.nope"], "python -m textclassify.nope: no such module"),
    (["python", "examples/nope.py"], "python examples/nope.py: no such file in the repository"),
    (["fusion-frobnicate"], "fusion-frobnicate: not a command of this package, a make target or a known tool"),
])
def test_a_missing_command_or_option_is_reported(words, message):
    """The command check fails for what does not exist."""
    assert check_docs.check_command(words, check_docs._scripts(), check_docs._make_targets()) == message


@pytest.mark.parametrize("words", [
    ["fusion-train", "--config", "c.yaml", "--test-data", "t.csv"], ["make", "docs-check"],
    ["python", "-m", "textclassify.train.demo_assets"], ["python", "examples/train_fusion.py"], ["pip", "install", "x"],
])
def test_real_commands_pass(words):
    """...and passes for what does."""
    assert check_docs.check_command(words, check_docs._scripts(), check_docs._make_targets()) is None


def test_links_are_checked(tmp_path):
    """A missing file, a missing heading, a path outside the repo and a web link in README.md are problems."""
    readme = ROOT / "README.md"
    arch = ROOT / "docs" / "architecture.md"
    assert check_docs.check_link(readme, "docs/nope.md") == "docs/nope.md: no such file"
    assert check_docs.check_link(readme, "docs/architecture.md#layers") is None
    assert check_docs.check_link(readme, "docs/architecture.md#nope") == (
        "docs/architecture.md#nope: no heading #nope in docs/architecture.md")
    assert check_docs.check_link(arch, "../../shared/DESIGN.md") == (
        "../../shared/DESIGN.md: points outside the repository")
    assert check_docs.check_link(readme, "https://example.com") == (
        "https://example.com: README.md links only to files in the repository")
    assert check_docs.check_link(arch, "https://example.com") is None


def test_docs_check_script_exit_status():
    """The script the Makefile runs exits 0 on the repository as it is."""
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "check_docs.py")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert proc.stderr.strip().endswith("0 problem(s)")
