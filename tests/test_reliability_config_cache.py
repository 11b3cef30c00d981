"""Configs that explode, caches on read-only filesystems, and credentials in the LLM base URL.

A YAML alias bomb is refused before it expands; no error message quotes more than 200 characters of
user data; a valid cache on a read-only mount says so and serves its hits; user:pass@ in llm_base_url is
refused everywhere it can enter (config, YAML, flags, bundle manifest, LLMSettings) and never echoed.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.support import hostile
from tests.support.data import make_tickets
from textclassify import AutoFusionClassifier
from textclassify.runtime import load_bundle
from textclassify.runtime.errors import BundleError, ConfigError
from textclassify.runtime.llm import LLMSettings
from textclassify.runtime.llm.cache import ScoreCache
from textclassify.runtime.predict_cli import main as predict_main
from textclassify.train.cli import main as train_main
from textclassify.train.config import validate_config
from textclassify.train.yaml_config import load_config

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cretPass"
CRED_URL = f"https://alice:{SECRET}@llm.example.com/v1"

# The classic "billion laughs": 9 levels of 9 aliases each, 514 bytes that expand to 9**9 strings.
BOMB = "\n".join(["a0: &a0 [lol]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
                 + ["fusion: {hidden_dims: *a8}"]) + "\n"


def train(*args: str):
    return CliRunner().invoke(train_main, list(args))


def one_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# ------------------------------------------------------------------------------ 10: YAML bombs, long repr
@pytest.mark.timeout(30)
def test_yaml_alias_bomb_is_refused_in_one_line(tmp_path) -> None:
    """A 514-byte alias bomb ran past 60 s and 4.5 GB; now one short error line, before anything expands."""
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB, encoding="utf-8")
    assert len(BOMB.encode()) < 600
    line = one_line(train("--config", str(config)))
    assert line == (f"Error: {config}: not valid YAML (line 1, column 5): YAML anchors (&name) are not allowed in a "
                    "config file.")


def test_yaml_alias_alone_is_refused(tmp_path) -> None:
    """An alias whose anchor is defined elsewhere is refused too (the anchor is what is reported first)."""
    config = tmp_path / "alias.yaml"
    config.write_text("seed: *nothing\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"YAML aliases \(\*name\) are not allowed in a config file"):
        load_config(config)


@pytest.mark.parametrize("value", ["x" * 10_000, list(range(100_000)), {"k" * 5000: 1}])
def test_error_messages_quote_at_most_200_characters(tmp_path, value) -> None:
    """A huge bad value in the Python config or the YAML file: the error quotes at most 200 characters of it."""
    with pytest.raises(ConfigError) as info:
        validate_config({"fusion": {"dropout": value}})
    message = str(info.value)
    assert message.startswith("fusion.dropout: expected a float in [0, 1), got ")
    assert len(message) < 300 and "more characters]" in message
    config = tmp_path / "big.yaml"
    config.write_text(f"fusion:\n  dropout: {value!r}\n" if isinstance(value, str) else
                      f"fusion:\n  dropout: {list(value) if isinstance(value, list) else value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert len(str(info.value)) < 300


def test_unknown_huge_key_is_cut(tmp_path) -> None:
    """An unknown key of 1,000 characters is quoted cut short too."""
    config = tmp_path / "key.yaml"
    config.write_text("fusion:\n  " + "k" * 1000 + ": 1\n", encoding="utf-8")  # YAML caps plain keys at 1024
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert len(str(info.value)) < 400 and str(info.value).startswith("fusion.'kkkk")


def test_deeply_nested_yaml_is_a_config_error(tmp_path) -> None:
    """YAML nested 100,000 levels deep: a ConfigError, not a RecursionError."""
    config = tmp_path / "deep.yaml"
    config.write_text("seed: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == f"{config}: not valid YAML: nested too deeply."


# ------------------------------------------------------------------------------ 17: read-only cache
RO_CHILD = textwrap.dedent("""
    import sys
    from tests.support.llm_server import FakeLLMServer
    from textclassify.runtime.llm import LLMScorer
    with FakeLLMServer(port=int(sys.argv[2])) as server:  # the port is part of the cache key
        with LLMScorer(server.settings(score_method="json"), ["billing", "shipping", "technical"], False,
                       cache_dir=sys.argv[1]) as scorer:
            scorer.score(["ticket 1: my invoice is wrong", "ticket 2: the parcel is late"])
            print("requests", server.requests, "cache_hits", scorer.usage["cache_hits"])
""")


@pytest.mark.timeout(120)
def test_read_only_cache_serves_hits_and_says_read_only(tmp_path) -> None:
    """A valid cache on a read-only mount is not "corrupt": a warning says read-only, hits are served, nothing
    is written (it used to say "move it aside or delete it", inviting the user to destroy good data)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a read-only bind mount")
    src, mnt = tmp_path / "cache", tmp_path / "ro"
    mnt.mkdir()
    from tests.support.llm_server import FakeLLMServer
    from textclassify.runtime.llm import LLMScorer

    with FakeLLMServer() as server, LLMScorer(server.settings(score_method="json"),
                                              ["billing", "shipping", "technical"], False, cache_dir=src) as s:
        s.score(["ticket 1: my invoice is wrong"])
        port = server.base_url.rsplit(":", 1)[1].split("/")[0]
    before = (src / "llm_scores.sqlite3").read_bytes()
    script = (f"mount --bind {src} {mnt} && mount -o remount,bind,ro {mnt} && exec {sys.executable} -c "
              f"'{RO_CHILD}' {mnt} {port}")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {src} {mnt} && mount -o remount,bind,ro {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"read-only bind mounts are not permitted here ({probe.stderr.strip()})")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["requests", "1", "cache_hits", "1"]
    assert (f"LLM score cache {mnt / 'llm_scores.sqlite3'} is read-only: cached answers are served, new answers "
            "are not stored") in proc.stderr
    assert "corrupt" not in proc.stderr
    assert (src / "llm_scores.sqlite3").read_bytes() == before
    cache = ScoreCache(src)
    try:
        assert cache.count() == 1
    finally:
        cache.close()


# ------------------------------------------------------------------------------ 18: credentials in URLs
def test_credentials_refused_in_python_config_and_settings(tmp_path) -> None:
    """validate_config and LLMSettings refuse user:pass@ without echoing it; repr(clf) never shows it."""
    with pytest.raises(ConfigError) as info:
        validate_config({"llm_provider": "openai-compatible", "llm_base_url": CRED_URL, "label_columns": ["y"]})
    assert str(info.value) == ("llm_base_url: the URL carries credentials (https://***@llm.example.com/v1); they "
                               "would be written into saved models, bundles and logs. Put credentials in the API key "
                               "variable (for example OPENAI_API_KEY) instead.")
    with pytest.raises(ConfigError) as info:
        LLMSettings(provider="openai-compatible", base_url=CRED_URL)
    assert SECRET not in str(info.value)
    clf = AutoFusionClassifier({"llm_provider": "openai-compatible", "llm_base_url": CRED_URL})
    assert SECRET not in repr(clf) and "https://***@llm.example.com/v1" in repr(clf)
    frame = pd.DataFrame([{"text": t, "y": ls[0]} for t, ls in make_tickets(20, seed=1)])
    with pytest.raises(ConfigError) as info:
        AutoFusionClassifier({"llm_provider": "openai-compatible", "llm_base_url": CRED_URL, "label_columns": ["y"],
                              "output_dir": str(tmp_path / "out")}).fit(frame)
    assert SECRET not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_credentials_refused_by_the_clis(tmp_path) -> None:
    """fusion-train (flag and YAML) and fusion-predict refuse the URL in one line that does not contain it."""
    data = tmp_path / "train.csv"
    pd.DataFrame([{"text": t, "y": ls[0]} for t, ls in make_tickets(20, seed=1)]).to_csv(data, index=False)
    line = one_line(train("--data", str(data), "--label-columns", "y", "--llm-provider", "openai-compatible",
                          "--llm-base-url", CRED_URL, "--output", str(tmp_path / "run")))
    assert line.startswith("Error: models.llm.base_url (from --llm-base-url): the URL carries credentials "
                           "(https://***@llm.example.com/v1)") and SECRET not in line
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  train_path: {data}\n  label_columns: [y]\nmodels:\n  llm:\n    provider: "
                      f"openai-compatible\n    base_url: {CRED_URL}\n", encoding="utf-8")
    line = one_line(train("--config", str(config)))
    assert line.startswith("Error: models.llm.base_url: the URL carries credentials") and SECRET not in line
    (tmp_path / "in.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    result = CliRunner().invoke(predict_main, ["--bundle", str(tmp_path / "nowhere"), "--input",
                                               str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.csv"),
                                               "--llm-base-url", CRED_URL])
    assert result.exit_code == 1 and SECRET not in result.output
    assert result.stderr.startswith("Error: --llm-base-url: the URL carries credentials")


def test_credentials_in_a_bundle_manifest_are_refused(tiny_roberta_dir, tmp_path) -> None:
    """A bundle whose manifest carries user:pass@ (written by an older version) is refused without echoing it."""
    bundle = hostile.export_small_bundle(tiny_roberta_dir, tmp_path / "bundle")
    hostile.rehash(bundle, lambda m: m["llm"].update(base_url=CRED_URL))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle, cache_dir=None)
    assert str(info.value).startswith("manifest.json 'llm': llm_base_url: the URL carries credentials "
                                      "(https://***@llm.example.com/v1)")
    assert SECRET not in str(info.value)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.parent / "nowhere", cache_dir=None, llm_base_url=CRED_URL)
    assert SECRET not in str(info.value)
