"""The demo's data preparation and report (the full run is `make demo`)."""
from __future__ import annotations

import bz2

import pandas as pd
import pytest

from textclassify.runtime.errors import DataError
from textclassify.runtime.llm import LLMSettings
from textclassify.runtime.llm.providers import PROVIDERS, resolve_base_url
from textclassify.train import demo
from textclassify.train.config import validate_config


def _metrics(acc: float, f1: float) -> dict[str, float]:
    return {"accuracy": acc, "macro_f1": f1}


def test_config_is_valid_and_runs_offline(monkeypatch):
    """The demo config passes validation and needs no API key or remote endpoint (the embedded local server)."""
    for var in ("DEEPSEEK_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY", "DEEPSEEK_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    settings = LLMSettings.from_config(validate_config(demo.demo_config("/models/minilm")))
    assert not PROVIDERS[settings.provider].key_required
    assert resolve_base_url(settings.provider, settings.base_url) is None


@pytest.mark.parametrize("preset", [None, "1"])
def test_main_gives_llama_cpp_every_core_unless_the_user_chose(tmp_path, monkeypatch, capsys, preset):
    """The demo's LLM calls run alone, so its server gets every usable core; a value the user set stays."""
    import os

    from textclassify.runtime import constants as K
    from textclassify.runtime.llm.local_server import usable_cores

    monkeypatch.delenv(K.LOCAL_THREADS_ENV, raising=False)
    if preset is not None:
        monkeypatch.setenv(K.LOCAL_THREADS_ENV, preset)
    assert demo.main(["--root", str(tmp_path), "--quiet"]) == 1  # no corpus here: fails before training
    assert "movie-review corpus is not at" in capsys.readouterr().err
    assert os.environ[K.LOCAL_THREADS_ENV] == (preset or str(usable_cores()))


def test_load_movie_reviews_cleans_the_corpus(tmp_path):
    """Empty and missing texts, duplicates, texts with two labels and unknown categories are dropped."""
    rows = pd.DataFrame({
        "category": ["fresh", "rotten", "plot", "fresh", "rotten", "fresh", "fresh", "other"],
        "text": ["good", "bad", "a story", "good", "good", None, "  ", "meh"],
        "movie_name": ["m"] * 8, "has_plot_and_reviews": [True] * 8,
    })
    path = tmp_path / "corpus.csv.bz2"
    path.write_bytes(bz2.compress(rows.to_csv(index=False).encode()))
    df = demo.load_movie_reviews(path)
    assert df.to_dict("records") == [{"text": "bad", "label": "rotten"}, {"text": "a story", "label": "plot"}]


def test_stratified_sample_is_disjoint_and_keeps_proportions():
    """Train and test share no row and keep the label shares of the corpus."""
    labels = ["fresh"] * 500 + ["rotten"] * 400 + ["plot"] * 100
    df = pd.DataFrame({"text": [f"t{i}" for i in range(1000)], "label": labels})
    train, test = demo.stratified_sample(df, 200, 100)
    assert len(train) == 200 and len(test) == 100
    assert not set(train["text"]) & set(test["text"])
    assert train["label"].value_counts().to_dict() == {"fresh": 100, "rotten": 80, "plot": 20}
    assert test["label"].value_counts().to_dict() == {"fresh": 50, "rotten": 40, "plot": 10}
    with pytest.raises(DataError) as info:
        demo.stratified_sample(df, 950, 100)
    assert str(info.value) == "asked for 950 training + 100 test rows but the corpus has 1000."


def test_verdict_says_when_fusion_leaned_on_the_encoder():
    """A weak LLM and a fused score close to the encoder's: the report says the LLM added little."""
    lines = demo.verdict({"ml": _metrics(0.8, 0.70), "llm": _metrics(0.5, 0.25), "fused": _metrics(0.8, 0.71),
                          "stacker": _metrics(0.79, 0.69)})
    assert lines == [
        "The LLM is weak here: SmolLM2-135M alone reaches macro-F1 0.250, the fine-tuned encoder 0.700.",
        "Fusion (0.710, +0.010 vs the encoder) leaned on the encoder and the LLM added little: a weak LLM did not "
        "drag the fused model down. That robustness is the point; set llm_provider/llm_model to a stronger model "
        "to let fusion gain from it.",
        "The stacker baseline (logistic regression on the same inputs) reaches 0.690.",
    ]


@pytest.mark.parametrize(("llm", "fused", "start"), [
    (0.25, 0.80, "Fusion adds +0.100"),
    (0.25, 0.60, "Fusion (0.600) came out 0.100 below"),
    (0.70, 0.71, "Fusion (0.710, +0.010) matches the encoder alone"),
])
def test_verdict_reports_gains_and_losses(llm, fused, start):
    """A clear gain or loss against the encoder is named with its size; a strong LLM is not called weak."""
    lines = demo.verdict({"ml": _metrics(0.8, 0.70), "llm": _metrics(0.5, llm), "fused": _metrics(0.8, fused)})
    assert lines[1].startswith(start)
    assert lines[0].startswith("The LLM is weak here" if llm < 0.5 else "The LLM alone (macro-F1 0.700)")


def test_format_report_shows_models_usage_and_timings():
    """The table has every model row, the bundle row, LLM usage per phase, stage times and the cache note."""
    run = demo.DemoRun(
        n_train=1200, n_test=300, label_counts={"fresh": 640, "rotten": 465, "plot": 95},
        metrics={k: _metrics(0.5, 0.4) for k in ("ml", "llm", "llm_raw", "stacker", "fused")},
        bundle_metrics=_metrics(0.51, 0.41), fit_usage={"requests": 10, "cache_hits": 590, "prompt_tokens": 1000},
        predict_usage={"requests": 2, "cache_hits": 298}, timings={"fit_s": 300.0, "total_s": 400.0},
        cache_existed=True, abstained=12, n_llm_scored=600, degraded_rows=3, llm_model="m.gguf",
    )
    text = demo.format_report(run)
    assert "  Fused (ONNX bundle, fp32, torch-free)          0.510     0.410" in text
    assert "  training (fit)                    10         590       1,000           0" in text
    assert "SmolLM2 named no label in its top answer tokens for 12 of 600 texts (2%)" in text
    assert "Reused the LLM cache (data/llm_cache) of an earlier run: 590 of 600 training texts came from it\n" in text
    assert "(3 bundle rows had no LLM score and were answered by the encoder alone)" in text
    assert "  total                                      400.0 s" in text


def test_format_report_shows_the_combiner_that_serves_and_its_cv_table():
    """The demo prints the lexical and no-LLM rows, the combiner serving, the CV table with one '<- serves' mark,
    the stage-1 line, and the best single part against the fused model."""
    table = [{"combiner": "encoder", "cv_log_loss": 0.61234, "cv_accuracy": 0.75, "cv_macro_f1": 0.7, "chosen": False,
              "cv_log_loss_vs_serving": 0.11234, "cv_log_loss_vs_serving_se": 0.0301},
             {"combiner": "stacker+lexical", "cv_log_loss": 0.5, "cv_accuracy": 0.8, "cv_macro_f1": 0.78,
              "chosen": True}]
    metrics = {k: _metrics(0.5, 0.4) for k in ("ml", "llm", "llm_raw", "stacker", "fused_no_llm")}
    metrics.update(lexical=_metrics(0.6, 0.55), fused=_metrics(0.62, 0.58))
    run = demo.DemoRun(
        n_train=1200, n_test=300, label_counts={"fresh": 640, "rotten": 465, "plot": 95}, metrics=metrics,
        bundle_metrics=_metrics(0.62, 0.58), fit_usage={}, predict_usage={}, timings={"combiner_s": 12.0},
        combiner={"chosen": "stacker+lexical", "folds": 5, "cv_table": table, "lexical": "served"},
        stage1="stage 1: lr 0.0001 (user), 100 of 100 steps (user length)",
    )
    text = demo.format_report(run)
    assert "  Lexical alone (TF-IDF + logistic regr.)        0.600     0.550" in text
    assert "  Fused without the LLM (no-LLM head)" in text
    assert ("Combiner serving: stacker+lexical (lowest 5-fold cross-fitted log-loss on the fusion rows; lexical "
            "component: served)") in text
    assert "  encoder                         0.6123       0.750       0.700  +0.1123 ± 0.0301\n" in text
    assert text.count("<- serves") == 1
    assert "  stacker+lexical                 0.5000       0.800       0.780  <- serves" in text
    assert "log-loss vs serving ± SE" in text and "another draw of as many rows could reverse the choice" in text
    assert "  stage 1: lr 0.0001 (user), 100 of 100 steps (user length)" in text
    assert "  combiners compared by cross-fitting         12.0 s" in text
    assert "Best single part: the lexical model (0.550); fused 0.580 (+0.030)." in text
    run.combiner["repeats"] = 3
    assert ("Combiner serving: stacker+lexical (lowest 5-fold cross-fitted log-loss on the fusion rows, mean of 3 "
            "random splits; lexical component: served)") in demo.format_report(run)


def test_a_cv_table_from_before_the_margins_prints_a_blank_column_and_no_key():
    """Metadata written before the margin fields existed still renders: no margins, and no line explaining them."""
    table = [{"combiner": "encoder", "cv_log_loss": 0.6, "cv_accuracy": 0.7, "cv_macro_f1": 0.6, "chosen": False},
             {"combiner": "stacker", "cv_log_loss": 0.5, "cv_accuracy": 0.8, "cv_macro_f1": 0.7, "chosen": True}]
    lines = demo.combiner_lines({"chosen": "stacker", "folds": 5, "cv_table": table, "lexical": "off"})
    assert lines[3] == "  encoder                         0.6000       0.700       0.600  "
    assert lines[4].endswith("<- serves") and len(lines) == 5
