"""fusion-train: train an AutoFusionClassifier from a CSV and a YAML config (or flags); save, report, summarise."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from textclassify.runtime.cli_base import OneLineErrorCommand
from textclassify.runtime.errors import ConfigError, TextClassifyError, one_line
from textclassify.runtime.output_paths import check_output_dir
from textclassify.train.yaml_config import (
    TrainConfig,
    load_config,
    to_yaml_terms,
    write_default_config,
)

MODEL_DIR = "model"
EXAMPLES = """\b
Examples:
  fusion-train --create-config fusion_config.yaml
  fusion-train --config fusion_config.yaml --test-data test.csv
  fusion-train --data train.csv --label-columns sentiment --ml-model roberta-base \\
      --llm-provider deepseek --llm-model deepseek-chat --output runs/v1

\b
Flags override the config file. Written to the output folder: model/ (AutoFusionClassifier.load
reads it; fusion-export turns it into a bundle), metrics.json, and report/ (metrics.json,
summary.txt, confusion matrices or per-label F1, reliability diagram, training curves).
The LLM API key comes from the provider's environment variable (e.g. DEEPSEEK_API_KEY).
"""

# flag -> the YAML path it overrides
FLAG_PATHS: dict[str, str] = {
    "--data": "data.train_path",
    "--test-data": "data.test_path",
    "--text-column": "data.text_column",
    "--label-columns": "data.label_columns",
    "--multi-label/--single-label": "data.multi_label",
    "--ml-model": "models.ml.model_name",
    "--llm-provider": "models.llm.provider",
    "--llm-model": "models.llm.model",
    "--llm-base-url": "models.llm.base_url",
    "--output": "output_dir",
    "--cache-dir": "cache_dir",
    "--seed": "seed",
}


def _name_flag(message: str, used: Mapping[str, str]) -> str:
    """'models.llm.base_url: ...' -> 'models.llm.base_url (from --llm-base-url): ...' when a flag set it."""
    match = re.match(r"([\w.]+)((?:\[\d+\])?):", message)
    if match is None:
        return message
    flag = next((f for f, path in used.items() if path == match.group(1)), None)
    if flag is None:
        return message
    return f"{match.group(1)}{match.group(2)} (from {flag.split('/')[0]}):{message[match.end():]}"


def resolve_config(config_path: str | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """The validated config: the YAML file (if any) with flag overrides (flag -> value) applied on top."""
    used = {flag: FLAG_PATHS[flag] for flag in overrides}
    try:
        cfg = load_config(config_path, {FLAG_PATHS[f]: v for f, v in overrides.items()})
    except ConfigError as e:
        raise ConfigError(_name_flag(str(e), used)) from None
    if not cfg.train_path:
        raise ConfigError("data.train_path: no training data; give --data train.csv or set data.train_path in the "
                          "config file (fusion-train --create-config writes one).")
    return cfg


def train_from_config(cfg: TrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Read the CSVs, fit, save the model, write the report; returns the fitted classifier and where things went."""
    from textclassify.train.data import read_csv

    # Every output path first: an output_dir that is a file used to fail after the whole training run.
    check_output_dir(cfg.classifier["output_dir"], "output_dir", files=["metrics.json"],
                     folders=[MODEL_DIR, "report"])
    train_df = read_csv(cfg.train_path)
    test_df = read_csv(cfg.test_path) if cfg.test_path else None  # both files are read before any training
    from transformers.utils import logging as hf_logging

    from textclassify.train.auto import AutoFusionClassifier
    from textclassify.train.reports import REPORT_DIR

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()  # loading and saving weights draw bars of their own
    try:
        clf = AutoFusionClassifier(cfg.classifier).fit(train_df, eval_data=test_df, progress=progress)
        output = Path(cfg.classifier["output_dir"]).expanduser()
        model_dir = clf.save(output / MODEL_DIR)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    report_dir = output / REPORT_DIR  # fit wrote metrics.json and the report
    files = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))["files"]
    return {"classifier": clf, "output_dir": output, "model_dir": model_dir, "metrics": output / "metrics.json",
            "report_dir": report_dir, "report_files": [report_dir / name for name in files]}


def _overrides(**flags: Any) -> dict[str, Any]:
    """Flag name -> value for every flag the user gave (None means not given)."""
    out: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            continue
        flag = "--multi-label/--single-label" if name == "multi_label" else "--" + name.replace("_", "-")
        if flag == "--label-columns":
            value = [part.strip() for part in value.split(",")]
        out[flag] = value
    return out


@click.command(cls=OneLineErrorCommand, epilog=EXAMPLES,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--create-config", "create_config", metavar="PATH",
              help="Write a commented default config to PATH and exit.")
@click.option("--force", is_flag=True, help="With --create-config: replace an existing file.")
@click.option("--config", "config_path", metavar="PATH", help="YAML config (data, models.ml, models.llm, fusion, ...).")
@click.option("--data", metavar="CSV", help="Labelled training data (data.train_path).")
@click.option("--test-data", metavar="CSV", help="Held-out test data for the metrics (data.test_path).")
@click.option("--text-column", help="Column that holds the text (data.text_column).")
@click.option("--label-columns", metavar="A,B", help="Comma-separated label column(s) (data.label_columns).")
@click.option("--multi-label/--single-label", "multi_label", default=None,
              help="Several labels per text, one 0/1 column each (data.multi_label).")
@click.option("--ml-model", metavar="NAME", help="Encoder: hub name or local folder (models.ml.model_name).")
@click.option("--llm-provider", metavar="P",
              help="deepseek | openai | gemini | openai-compatible | local (models.llm.provider).")
@click.option("--llm-model", metavar="M", help="LLM model name, or a GGUF path for local (models.llm.model).")
@click.option("--llm-base-url", metavar="URL", help="LLM API base URL (models.llm.base_url).")
@click.option("--output", metavar="DIR", help="Output folder (output_dir).")
@click.option("--cache-dir", metavar="DIR", help="LLM score cache folder (cache_dir).")
@click.option("--seed", type=int, help="Random seed (seed).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def main(create_config: str | None, force: bool, config_path: str | None, quiet: bool, debug: bool,
         **flags: Any) -> None:
    """Train a fusion classifier (fine-tuned encoder + calibrated LLM scores) and write its report."""
    overrides: dict[str, Any] = {}
    try:
        overrides = _overrides(**flags)
        if create_config:
            _create_config(create_config, force, config_path, overrides)
            return
        if not config_path and not overrides:
            raise ConfigError("nothing to do: give --config FILE, --data CSV or --create-config FILE "
                              "(fusion-train --help shows examples).")
        cfg = resolve_config(config_path, overrides)
        result = train_from_config(cfg, progress=not quiet)
    except KeyboardInterrupt:
        if debug:
            raise
        raise click.ClickException("interrupted; LLM answers so far are kept in the cache.") from None
    except (TextClassifyError, OSError) as e:
        if debug:
            raise
        message = one_line(e)
        if isinstance(e, ConfigError):  # raised late (e.g. the encoder failed to load): still in YAML terms
            message = _name_flag(to_yaml_terms(message), {f: FLAG_PATHS[f] for f in overrides})
        raise click.ClickException(message) from None
    from textclassify.train.reports import format_summary

    click.echo(format_summary(result["classifier"].metadata_))
    click.echo("")
    click.echo(f"Model:   {result['model_dir']}")
    click.echo(f"Metrics: {result['metrics']}")
    click.echo(f"Report:  {result['report_dir']} ({len(result['report_files'])} files)")


def _create_config(path: str, force: bool, config_path: str | None, overrides: Mapping[str, Any]) -> None:
    others = (["--config"] if config_path else []) + [f.split("/")[0] for f in overrides]
    if others:
        raise ConfigError(f"--create-config writes a config file and trains nothing; give it alone "
                          f"(also given: {', '.join(others)}).")
    if Path(path).expanduser().exists() and not force:
        raise ConfigError(f"{path}: already exists; choose another path or add --force to replace it.")
    written = write_default_config(path, overwrite=force)
    click.echo(f"Wrote the default config to {written}. Set data.train_path and data.label_columns, then run:\n"
               f"  fusion-train --config {written}")
