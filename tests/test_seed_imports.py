"""Every import path of the seed works, and each is a thin re-export of the one real class."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# seed module -> {name: the module that defines it}
SEED_PATHS: dict[str, dict[str, str]] = {
    "textclassify.ensemble.fusion": {"FusionEnsemble": "textclassify.train.ensembles",
                                     "EnsembleConfig": "textclassify.train.ensembles",
                                     "FusionMLP": "textclassify.train.fusion_model",
                                     "FusionWrapper": "textclassify.train.fusion_model"},
    "textclassify.ml.roberta_classifier": {"RoBERTaClassifier": "textclassify.train.encoder_classifier"},
    "textclassify.llm.deepseek_classifier": {"DeepSeekClassifier": "textclassify.train.llm_classifiers"},
    "textclassify.core.types": {"EnsembleConfig": "textclassify.train.ensembles",
                                "TrainingData": "textclassify.runtime.types",
                                "ClassificationType": "textclassify.runtime.types",
                                "ClassificationResult": "textclassify.runtime.types"},
    "textclassify.utils.fusion_utils": {"FusionUtils": "textclassify.train.fusion_utils"},
    "textclassify.ensemble": {"VotingEnsemble": "textclassify.train.ensembles",
                              "WeightedEnsemble": "textclassify.train.ensembles",
                              "FusionEnsemble": "textclassify.train.ensembles"},
}

# The seed README's import lines, verbatim.
SEED_IMPORTS = """\
from textclassify.ensemble.fusion import FusionEnsemble
from textclassify.ml.roberta_classifier import RoBERTaClassifier
from textclassify.llm.deepseek_classifier import DeepSeekClassifier
from textclassify.core.types import EnsembleConfig, TrainingData, ClassificationType
from textclassify.utils.fusion_utils import FusionUtils
from textclassify.ensemble import VotingEnsemble, WeightedEnsemble, FusionEnsemble
from textclassify import AutoFusionClassifier
"""


@pytest.mark.parametrize("module", sorted(SEED_PATHS))
def test_seed_path_re_exports_the_real_object(module):
    """Each name imported through a seed path is the very object its home module defines."""
    mod = importlib.import_module(module)
    for name, home in SEED_PATHS[module].items():
        assert getattr(mod, name) is getattr(importlib.import_module(home), name), f"{module}.{name}"
        assert name in mod.__all__


@pytest.mark.parametrize("module", sorted(SEED_PATHS))
def test_seed_module_defines_nothing(module):
    """A seed module is imports and __all__ only: no class, function or assignment of its own."""
    path = Path(importlib.import_module(module).__file__)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        assert isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["__all__"], (
            f"{path}: line {node.lineno} is more than a re-export")


def test_seed_imports_verbatim_in_a_fresh_interpreter():
    """The seed's import lines run as printed, from the repo root, in a new process."""
    proc = subprocess.run([sys.executable, "-c", SEED_IMPORTS + "print(FusionEnsemble.__module__)"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "textclassify.train.ensembles"


def test_seed_types_path_loads_no_torch():
    """`textclassify.core.types` stays on the torch-free side, like the runtime types it re-exports."""
    probe = ("import sys; import textclassify.core.types; "
             "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'pandas') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
