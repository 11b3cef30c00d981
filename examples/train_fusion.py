"""Full command-line training script: the seed's train_fusion.py, running the `fusion-train` command.

    python train_fusion.py --create-config fusion_config.yaml
    python train_fusion.py --config fusion_config.yaml
    python train_fusion.py --data data/train.csv --ml-model roberta-base --llm-provider deepseek \\
        --llm-model deepseek-chat --output fusion_output
    python train_fusion.py --config fusion_config.yaml --test-data data/test.csv

Every flag is fusion-train's (`python train_fusion.py --help`). One change from the seed: when neither
--llm-provider nor --config names the LLM, the provider comes from the environment variable
TEXTCLASSIFY_LLM_PROVIDER, default "local" (the embedded llama.cpp server: nothing paid, no API key).
"""
from __future__ import annotations

import os
import sys

from textclassify.train.cli import main


def _with_default_provider(argv: list[str]) -> list[str]:
    names = {arg.split("=", 1)[0] for arg in argv}
    if names & {"--llm-provider", "--config", "--create-config", "-h", "--help"}:
        return argv
    return [*argv, "--llm-provider", os.environ.get("TEXTCLASSIFY_LLM_PROVIDER", "local")]


if __name__ == "__main__":
    main(args=_with_default_provider(sys.argv[1:]), prog_name="train_fusion.py")
