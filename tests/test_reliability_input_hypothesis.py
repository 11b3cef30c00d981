"""Property tests of the prediction input contract: validate_texts over arbitrary Python objects, and the CLI
readers (fusion-predict's CSV and JSONL) over arbitrary bytes.

Either a clear error (DataError naming the index, or the file and line) or a result with one row per
input -- never another exception type, never a silently reshaped input.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textclassify.runtime.errors import DataError
from textclassify.runtime.predict_cli import read_rows
from textclassify.runtime.validation import validate_texts

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text() | st.binary()
           | st.characters(codec=None))
ANY = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=3), inner, max_size=3) | st.frozensets(st.text(max_size=3),
                                                                                         max_size=3),
                   max_leaves=8)
# Texts with lone surrogates among them: valid Python str, not valid Unicode
TEXTS = st.lists(st.text(alphabet=st.characters(codec=None), max_size=20), max_size=6)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@FAST
@given(value=ANY)
def test_validate_texts_on_any_object(value) -> None:
    """Any object: a list with one string per item, or a DataError that names the offending index."""
    try:
        items = validate_texts(value)
    except DataError as e:
        message = str(e)
        assert message.startswith("texts"), message
        index = re.match(r"texts\[(\d+)\]", message)
        if index is not None:  # an item is wrong: it really is the first bad one
            i = int(index.group(1))
            as_list = list(value)
            assert not isinstance(as_list[i], str) or not _encodable(as_list[i])
            assert all(isinstance(t, str) and _encodable(t) for t in as_list[:i])
        assert len(message) < 400
        return
    assert isinstance(value, (list, tuple))  # every other container here is refused (sets, dicts, scalars)
    assert items == list(value) and all(isinstance(t, str) and _encodable(t) for t in items)


@FAST
@given(texts=TEXTS)
def test_validate_texts_on_lists_of_strings(texts) -> None:
    """A list of str: returned unchanged, or refused at the first text that is not valid Unicode."""
    bad = [i for i, t in enumerate(texts) if not _encodable(t)]
    if not bad:
        assert validate_texts(texts) == texts
        return
    with pytest.raises(DataError) as info:
        validate_texts(texts)
    assert str(info.value).startswith(f"texts[{bad[0]}]: not valid Unicode (a lone surrogate ")


def _read(tmp_path: Path, suffix: str, data: bytes):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(data)
    try:
        return read_rows(str(path), "text"), path
    except DataError as e:
        assert str(path) in str(e) or "Column 'text'" in str(e), str(e)
        assert len(str(e)) < 600
        return None, path


@FAST
@given(data=st.binary(max_size=300))
def test_jsonl_reader_on_arbitrary_bytes(tmp_path_factory, data) -> None:
    """Arbitrary bytes as JSONL: a DataError naming the file, or one row per non-blank line, each text a str."""
    result, _ = _read(tmp_path_factory.mktemp("jsonl"), ".jsonl", data)
    if result is None:
        return
    _, rows = result
    lines = [line for line in data.decode("utf-8-sig").splitlines() if line.strip()]
    assert len(rows) == len(lines)
    assert all(isinstance(r["text"], str) and _encodable(r["text"]) for r in rows)


@FAST
@given(texts=st.lists(st.text(alphabet=st.characters(codec=None), max_size=12), min_size=1, max_size=5))
def test_jsonl_reader_on_json_texts(tmp_path_factory, texts) -> None:
    """Well-formed JSONL whose texts may hold lone surrogates (as \\ud800 escapes): rows, or the bad line named."""
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    result, path = _read(tmp_path_factory.mktemp("jsonl"), ".jsonl", data)
    bad = [i for i, t in enumerate(texts) if not _encodable(t)]
    if bad:
        assert result is None
        with pytest.raises(DataError, match=re.escape(f"{path} line {bad[0] + 1}: 'text': not valid Unicode")):
            read_rows(str(path), "text")
        return
    assert [r["text"] for r in result[1]] == texts


@FAST
@given(data=st.binary(max_size=300))
def test_csv_reader_on_arbitrary_bytes(tmp_path_factory, data) -> None:
    """Arbitrary bytes as CSV: a DataError naming the file, or rows whose text column is a valid str."""
    result, _ = _read(tmp_path_factory.mktemp("csv"), ".csv", b"text,other\n" + data)
    if result is None:
        return
    columns, rows = result
    assert columns[0] == "text"
    assert all(isinstance(r["text"], str) and _encodable(r["text"]) for r in rows)


@FAST
@given(texts=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                              max_size=15), min_size=1, max_size=5))
def test_csv_reader_round_trips_texts(tmp_path_factory, texts) -> None:
    """Any texts written with the csv module come back one row per text, unchanged."""
    import csv
    import io

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text"])
    writer.writerows([t] for t in texts)
    result, _ = _read(tmp_path_factory.mktemp("csv"), ".csv", buffer.getvalue().encode("utf-8"))
    assert result is not None
    assert [r["text"] for r in result[1]] == texts
