"""Errors as one line of text: runtime.errors.first_line and one_line, the helpers every layer uses."""
from __future__ import annotations

from textclassify.runtime.errors import first_line, one_line


def test_first_line_takes_the_first_line_or_the_type():
    """Only the first line; an empty message gives the exception's type name; `limit` cuts with '...'."""
    assert first_line(RuntimeError("  bad graph\n  at node 7\n")) == "bad graph"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(RuntimeError("x" * 10), limit=4) == "xxxx..."
    assert first_line(RuntimeError("x" * 4), limit=4) == "xxxx"


def test_one_line_joins_every_line():
    """All lines joined with single spaces; strings work too; an empty exception gives its type name."""
    assert one_line(OSError("cannot read\n   the file\t(busy)")) == "cannot read the file (busy)"
    assert one_line("Usage: x\n\nError: no such option") == "Usage: x Error: no such option"
    assert one_line(KeyError()) == "KeyError"
    assert one_line("") == ""
    assert one_line(RuntimeError("a b c d"), limit=3) == "a b..."
