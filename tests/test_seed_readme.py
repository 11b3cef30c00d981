"""The seed README's code blocks, copied verbatim, run offline with the fake LLM reached through the environment.

Every block that is code rather than a sketch is here. The README's provider is deepseek, so
DEEPSEEK_BASE_URL points at the loopback fake server (DEEPSEEK_API_KEY is a dummy); "roberta-base" is a
local folder of that name holding the tiny test RoBERTa; the working folder and HOME are temporary.
What a block leaves to the reader (`your_dataframe`, `ml_config`, `test_texts`, ...), or imports in an
earlier block, is defined by the test before the block runs. Not run: the two architecture sketches
(`class FusionMLP`, `class FusionWrapper`, whose bodies are comments) and the command-line block, which
tests/test_seed_examples.py runs.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.support.llm_server import FakeLLMServer
from tests.support.seed_data import GENRES, movie_frame, movie_rows, sentiment_rows
from textclassify.runtime.errors import DataError

SENTIMENTS = ["negative", "neutral", "positive"]

# "Super Simple Interface - AutoFusion"
SUPER_SIMPLE = '''\
from textclassify import AutoFusionClassifier

# This is ALL you need! üöÄ
config = {
    'llm_provider': 'deepseek',  # Choose: 'deepseek', 'openai', or 'gemini'
    'label_columns': ['positive', 'negative', 'neutral']
}

classifier = AutoFusionClassifier(config)
classifier.fit(your_dataframe)  # Automatic ML+LLM fusion training
result = classifier.predict(test_texts)  # Get superior predictions
'''

# "Method 1: AutoFusion"
QUICK_START = '''\
from textclassify import AutoFusionClassifier
import pandas as pd

# Your data
df = pd.DataFrame({
    'text': ["I love this!", "This is terrible", "It's okay"],
    'sentiment': ['positive', 'negative', 'neutral']
})

# Super simple configuration
config = {
    'llm_provider': 'deepseek',  # or 'openai', 'gemini'
    'label_columns': ['sentiment']
}

# That's it! Everything else is automatic
classifier = AutoFusionClassifier(config)
classifier.fit(df)
predictions = classifier.predict(["This is amazing!"])
print(predictions.predictions[0])  # 'positive'
'''

# "Multi-Label with AutoFusion"
MULTI_LABEL_AUTO = '''\
# Multi-label is just as simple
config = {
    'llm_provider': 'deepseek',
    'label_columns': ['action', 'comedy', 'drama', 'horror', 'romance'],
    'multi_label': True  # Just set this to True!
}

classifier = AutoFusionClassifier(config)
classifier.fit(movie_dataframe)
result = classifier.predict(["A funny action movie"])
print(result.predictions[0])  # ['action', 'comedy']
'''

# "Method 2: Advanced Manual Configuration"
MANUAL_FUSION = '''\
from textclassify.ensemble.fusion import FusionEnsemble
from textclassify.ml.roberta_classifier import RoBERTaClassifier
from textclassify.llm.deepseek_classifier import DeepSeekClassifier
from textclassify.core.types import EnsembleConfig, TrainingData, ClassificationType

# Create your ML and LLM models (using existing implementations)
ml_model = RoBERTaClassifier(config=ml_config)
llm_model = DeepSeekClassifier(config=llm_config, label_columns=labels)

# Create fusion ensemble
fusion_config = EnsembleConfig(
    ensemble_method='fusion',
    models=[ml_model, llm_model],
    parameters={
        'fusion_hidden_dims': [64, 32],
        'ml_lr': 1e-5,           # Small LR for ML backbone
        'fusion_lr': 1e-3,       # Higher LR for fusion MLP
        'num_epochs': 10,
        'batch_size': 16
    }
)

fusion_ensemble = FusionEnsemble(fusion_config)
fusion_ensemble.add_ml_model(ml_model)
fusion_ensemble.add_llm_model(llm_model)

# Train
training_data = TrainingData(texts=texts, labels=labels, classification_type=ClassificationType.MULTI_CLASS)
fusion_ensemble.fit(training_data)

# Predict with automatic metrics calculation
result = fusion_ensemble.predict(test_texts, test_labels)
print(f"Accuracy: {result.metadata['metrics']['accuracy']:.4f}")
'''

# "Multi-Label Support"
MULTI_LABEL_ENSEMBLE = '''\
# Multi-label configuration
training_data = TrainingData(
    texts=texts,
    labels=binary_labels,  # [[1,0,1], [0,1,0], ...]
    classification_type=ClassificationType.MULTI_LABEL
)

# Fusion ensemble automatically adapts
fusion_ensemble.fit(training_data)

# Get multi-label predictions
result = fusion_ensemble.predict(test_texts, test_labels)
# result.predictions = [['action', 'drama'], ['comedy'], ...]
'''

# "Utilities and Helpers"
UTILITIES = '''\
from textclassify.utils.fusion_utils import FusionUtils

# Data preparation
train_df, test_df = FusionUtils.prepare_data_for_fusion(
    df, text_column='text', label_columns=['label'], multi_label=False
)

# Data validation
stats = FusionUtils.validate_fusion_data(df, 'text', ['label'])
print(f"Data valid: {stats['valid']}")
print(f"Text stats: {stats['statistics']['text']}")

# Model evaluation
evaluation = FusionUtils.evaluate_fusion_model(
    fusion_ensemble, test_texts, test_labels, save_results=True
)

# Visualizations (requires matplotlib)
FusionUtils.plot_fusion_results(evaluation, save_path='plots/')

# Model persistence
FusionUtils.save_fusion_model(fusion_ensemble, 'models/fusion_v1/')
loaded_model = FusionUtils.load_fusion_model('models/fusion_v1/')
'''

# "Custom Fusion MLP Architecture"
CUSTOM_MLP = '''\
fusion_config = EnsembleConfig(
    ensemble_method='fusion',
    parameters={
        'fusion_hidden_dims': [128, 64, 32],  # Deeper network
        'ml_lr': 5e-6,                        # Even smaller ML LR
        'fusion_lr': 2e-3,                    # Higher fusion LR  
        'num_epochs': 15
    }
)
'''

# "Integration with Existing Code"
INTEGRATION = '''\
# Works with other ensemble methods
from textclassify.ensemble import VotingEnsemble, WeightedEnsemble, FusionEnsemble

# All ensembles follow the same interface
ensembles = [
    VotingEnsemble(voting_config),
    WeightedEnsemble(weighted_config), 
    FusionEnsemble(fusion_config)
]

for ensemble in ensembles:
    ensemble.fit(training_data)
    result = ensemble.predict(test_texts, test_labels)
    print(f"{type(ensemble).__name__}: {result.metadata['metrics']['accuracy']:.4f}")
'''


@pytest.fixture(scope="module")
def llm():
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def seed_env(tmp_path, tiny_roberta_dir, llm, monkeypatch, one_torch_thread):
    """A working folder with ./roberta-base, HOME there, and deepseek pointed at the fake server."""
    (tmp_path / "roberta-base").symlink_to(tiny_roberta_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DEEPSEEK_BASE_URL", llm.base_url)
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test")
    return tmp_path


def run_block(code: str, namespace: dict) -> dict:
    exec(compile(code, "<seed README>", "exec"), namespace)
    return namespace


def sentiment_frame() -> pd.DataFrame:
    """Reviews with one 0/1 column per sentiment (the super-simple block's label_columns)."""
    return pd.DataFrame([{"text": t, **{s: int(s == y) for s in SENTIMENTS}} for t, y in sentiment_rows()])


ML_CONFIG = {"model_name": "roberta-base", "num_epochs": 3, "learning_rate": 1e-3, "max_length": 32}
LLM_CONFIG = {"model": "deepseek-chat", "temperature": 0.0}


def manual_setup() -> dict:
    rows = sentiment_rows()
    return {"ml_config": dict(ML_CONFIG), "llm_config": dict(LLM_CONFIG), "labels": list(SENTIMENTS),
            "texts": [t for t, _ in rows], "test_texts": [t for t, _ in rows[::4]],
            "test_labels": [y for _, y in rows[::4]]}


@pytest.mark.timeout(900)
def test_super_simple_interface(seed_env, llm):
    """`AutoFusionClassifier({'llm_provider': 'deepseek', 'label_columns': [...]})` fits and predicts."""
    test_texts = ["I adore the garden.", "I regret the trip.", "I noticed the car."]
    before = llm.requests
    ns = run_block(SUPER_SIMPLE, {"your_dataframe": sentiment_frame(), "test_texts": test_texts})
    assert len(ns["result"].predictions) == 3
    assert set(ns["result"].predictions) <= set(SENTIMENTS)
    assert ns["result"].probabilities.shape == (3, 3)
    assert llm.requests > before
    metrics = json.loads((seed_env / "fusion_output" / "metrics.json").read_text())
    # 72 reviews leave about 20 fusion rows: the MLP candidates sit out, and the summary says why
    assert set(metrics["combiner"]["left_out"]) == {"mlp", "mlp+lexical"}
    assert not {"mlp", "mlp+lexical"} & {row["combiner"] for row in metrics["combiner"]["cv_table"]}
    assert "  not compared: mlp, mlp+lexical (too few fusion rows" in (
        seed_env / "fusion_output" / "report" / "summary.txt").read_text()


def test_quick_start_three_rows_is_refused_clearly(seed_env, llm):
    """The three-row frame of the quick start is too small to train: a DataError says why, before any LLM call."""
    before = llm.requests
    with pytest.raises(DataError, match=r"label '\w+' is seen 1 time\(s\); each label needs at least 2 examples"):
        run_block(QUICK_START, {})
    assert llm.requests == before


@pytest.mark.timeout(900)
def test_multi_label_with_autofusion(seed_env, capsys):
    """multi_label=True with one 0/1 column per genre; the printed prediction is a list of genres."""
    from textclassify import AutoFusionClassifier  # imported by the README's earlier blocks

    ns = run_block(MULTI_LABEL_AUTO, {"movie_dataframe": movie_frame(), "AutoFusionClassifier": AutoFusionClassifier})
    printed = capsys.readouterr().out.strip()
    first = ns["result"].predictions[0]
    assert isinstance(first, list) and set(first) <= set(GENRES)
    assert printed == str(first)


def _manual_fusion(capsys) -> dict:
    """The Method 2 block. It uses `labels` for the label names (DeepSeekClassifier) and, further down, for
    the per-text labels (TrainingData); the test runs its two halves verbatim and rebinds `labels` between."""
    first, second = MANUAL_FUSION.split("# Train\n")
    ns = run_block(first, manual_setup())
    ns["labels"] = [y for _, y in sentiment_rows()]
    run_block("# Train\n" + second, ns)
    return ns


@pytest.mark.timeout(900)
def test_advanced_manual_configuration(seed_env, capsys):
    """RoBERTaClassifier(config=...), DeepSeekClassifier(config=..., label_columns=...), fit, predict."""
    ns = _manual_fusion(capsys)
    printed = capsys.readouterr().out.strip()
    accuracy = ns["result"].metadata["metrics"]["accuracy"]
    assert printed == f"Accuracy: {accuracy:.4f}"
    config = ns["fusion_ensemble"].classifier_.config_
    assert config["fusion"]["hidden_dims"] == [64, 32]
    assert (config["fusion"]["ml_lr"], config["fusion"]["fusion_lr"], config["fusion"]["num_epochs"]) == (
        1e-5, 1e-3, 10)
    assert (config["ml_model"], config["llm_provider"], config["llm_model"]) == ("roberta-base", "deepseek",
                                                                                  "deepseek-chat")


def test_custom_fusion_mlp_parameters(seed_env):
    """The custom-architecture EnsembleConfig's parameters become the fusion config FusionEnsemble trains with."""
    setup = manual_setup()
    from textclassify.core.types import EnsembleConfig, TrainingData
    from textclassify.ensemble.fusion import FusionEnsemble
    from textclassify.llm.deepseek_classifier import DeepSeekClassifier
    from textclassify.ml.roberta_classifier import RoBERTaClassifier

    ns = run_block(CUSTOM_MLP, {"EnsembleConfig": EnsembleConfig})
    ensemble = FusionEnsemble(ns["fusion_config"])
    ensemble.add_ml_model(RoBERTaClassifier(config=setup["ml_config"]))
    ensemble.add_llm_model(DeepSeekClassifier(config=setup["llm_config"]))
    rows = sentiment_rows()
    fusion = ensemble.to_config(TrainingData([t for t, _ in rows], [y for _, y in rows]))["fusion"]
    assert (fusion["hidden_dims"], fusion["ml_lr"], fusion["fusion_lr"], fusion["num_epochs"]) == (
        [128, 64, 32], 5e-6, 2e-3, 15)


@pytest.mark.timeout(1500)
def test_integration_with_voting_and_weighted_ensembles(seed_env, capsys):
    """Voting, weighted and fusion ensembles share fit(TrainingData) / predict(texts, labels)."""
    ns = _manual_fusion(capsys)
    capsys.readouterr()
    from textclassify.core.types import EnsembleConfig

    models = [ns["ml_model"], ns["llm_model"]]
    ns["voting_config"] = EnsembleConfig(ensemble_method="voting", models=models)
    ns["weighted_config"] = EnsembleConfig(ensemble_method="weighted", models=models)
    run_block(INTEGRATION, ns)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["VotingEnsemble", "WeightedEnsemble", "FusionEnsemble"]
    for line, ensemble in zip(lines, ns["ensembles"]):
        accuracy = ensemble.predict(ns["test_texts"], ns["test_labels"]).metadata["metrics"]["accuracy"]
        assert line == f"{type(ensemble).__name__}: {accuracy:.4f}"


@pytest.mark.timeout(900)
def test_utilities_and_helpers(seed_env, capsys):
    """FusionUtils: train/test frames, validation report, evaluation saved, plot, save and load."""
    ns = _manual_fusion(capsys)
    capsys.readouterr()
    ns["df"] = pd.DataFrame(sentiment_rows(), columns=["text", "label"])
    run_block(UTILITIES, ns)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Data valid: True"
    assert printed[1] == f"Text stats: {ns['stats']['statistics']['text']}"
    assert len(ns["train_df"]) + len(ns["test_df"]) == len(ns["df"]) and len(ns["test_df"]) > 0
    saved = json.loads((seed_env / "fusion_results" / "evaluation.json").read_text())
    assert saved["accuracy"] == ns["evaluation"]["accuracy"]
    assert (seed_env / "plots" / "fusion_results.png").read_bytes()[:4] == b"\x89PNG"
    texts = ns["test_texts"]
    assert ns["loaded_model"].predict(texts).predictions == ns["fusion_ensemble"].predict(texts).predictions


@pytest.mark.timeout(900)
def test_multi_label_support_with_binary_rows(seed_env):
    """TrainingData of 0/1 rows (named by the LLM classifier's label_columns) trains a multi-label ensemble."""
    from textclassify.core.types import ClassificationType, EnsembleConfig, TrainingData
    from textclassify.ensemble.fusion import FusionEnsemble
    from textclassify.llm.deepseek_classifier import DeepSeekClassifier
    from textclassify.ml.roberta_classifier import RoBERTaClassifier

    genres = list(GENRES)
    rows = movie_rows()
    binary = [[int(g in gs) for g in genres] for _, gs in rows]
    ml_model = RoBERTaClassifier(config=dict(ML_CONFIG))
    llm_model = DeepSeekClassifier(config=dict(LLM_CONFIG), label_columns=genres)
    ensemble = FusionEnsemble(EnsembleConfig(ensemble_method="fusion", models=[ml_model, llm_model],
                                             parameters={"num_epochs": 2}))
    ns = run_block(MULTI_LABEL_ENSEMBLE, {
        "texts": [t for t, _ in rows], "binary_labels": binary, "fusion_ensemble": ensemble,
        "test_texts": [t for t, _ in rows[::5]], "test_labels": binary[::5],
        "TrainingData": TrainingData, "ClassificationType": ClassificationType})
    result = ns["result"]
    assert ns["training_data"].label_names is None  # unnamed 0/1 rows, as in the README
    assert ensemble.labels_ == genres and ensemble.multi_label_  # named by label_columns, in column order
    assert result.labels == genres and all(set(p) <= set(genres) for p in result.predictions)
    assert 0.0 <= result.metadata["metrics"]["subset_accuracy"] <= 1.0

