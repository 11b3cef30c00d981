"""One error contract for fusion-train, fusion-export and fusion-predict (runtime.cli_base.OneLineErrorCommand)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from textclassify.export import cli as export_cli
from textclassify.runtime import predict_cli
from textclassify.runtime.cli_base import OneLineErrorCommand
from textclassify.train import cli as train_cli

COMMANDS = {"fusion-train": train_cli.main, "fusion-export": export_cli.main, "fusion-predict": predict_cli.main}


def _args(name: str, tmp_path) -> list[str]:
    """Arguments that reach the command's body and fail there as a user error (a missing input)."""
    missing = str(tmp_path / "missing")
    return {"fusion-train": ["--data", missing + ".csv", "--label-columns", "label"],
            "fusion-export": ["--model", missing, "--output", str(tmp_path / "b")],
            "fusion-predict": ["--bundle", missing, "--input", missing + ".csv", "--output",
                               str(tmp_path / "o.csv")]}[name]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_uses_the_one_class(name):
    """All three commands are OneLineErrorCommand."""
    assert isinstance(COMMANDS[name], OneLineErrorCommand)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_usage_error_is_one_line(name):
    """An unknown option is one `Error:` line and exit 2, with no usage block."""
    result = CliRunner().invoke(COMMANDS[name], ["--no-such-option"])
    assert result.exit_code == 2
    assert result.stderr == "Error: No such option '--no-such-option'.\n"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_user_error_is_one_line(name, tmp_path):
    """A missing input file or folder is one `Error:` line naming it, exit 1, no traceback."""
    result = CliRunner().invoke(COMMANDS[name], _args(name, tmp_path))
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "missing" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("name", "target"), [
    ("fusion-train", "textclassify.train.cli.resolve_config"),
    ("fusion-export", "textclassify.export.bundle_writer.check_target"),
    ("fusion-predict", "textclassify.runtime.predict_cli.predict_file"),
])
def test_a_bug_shows_its_traceback(name, target, tmp_path, monkeypatch):
    """An exception that is not a user error prints its traceback and an `Error: unexpected ...` line, exit 1;
    with --debug it propagates unchanged."""
    def broken(*args, **kwargs):
        raise RuntimeError("index out of step")

    monkeypatch.setattr(target, broken)
    result = CliRunner().invoke(COMMANDS[name], _args(name, tmp_path))
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "Error: unexpected RuntimeError: index out of step -- a bug in textclassify, not in your input; "
        "the traceback above says where.")
    debug = CliRunner().invoke(COMMANDS[name], [*_args(name, tmp_path), "--debug"])
    assert isinstance(debug.exception, RuntimeError)
