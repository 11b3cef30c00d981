"""export_bundle end to end on the tiny RoBERTa: files, manifest, parity gate, variants, atomic writes."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.support.data import LABELS, make_tickets
from tests.support.fitted_model import make_fitted_model, raw_scores
from textclassify.export import constants as EK
from textclassify.export import export_bundle, model_onnx, optimize
from textclassify.runtime import constants as K
from textclassify.runtime.errors import ExportError
from textclassify.runtime.manifest import load_manifest
from textclassify.runtime.recheck import RECHECK_SAFETY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mc_model(tiny_roberta_dir):
    return make_fitted_model(tiny_roberta_dir, LABELS, multi_label=False)


@pytest.fixture(scope="module")
def ml_model(tiny_roberta_dir):
    return make_fitted_model(tiny_roberta_dir, LABELS, multi_label=True)


@pytest.fixture(scope="module")
def mc_bundle(mc_model, tmp_path_factory) -> Path:
    return export_bundle(mc_model, tmp_path_factory.mktemp("export") / "mc", int8=True, progress=False)


@pytest.fixture(scope="module")
def ml_bundle(ml_model, tmp_path_factory) -> Path:
    return export_bundle(ml_model, tmp_path_factory.mktemp("export") / "ml", int8=True, fp16=True, progress=False)


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / K.MANIFEST_FILE).read_text())


def tree(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def shift_output_bias(graph: onnx.ModelProto, delta: float) -> None:
    """Perturb a graph's output bias: the fusion head's (moves fused_logits only) or the encoder head's."""
    (bias,) = [t for t in graph.graph.initializer if t.name.endswith(("net.6.bias", "out_proj.bias"))]
    values = onnx.numpy_helper.to_array(bias) + np.float32(delta)
    bias.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), bias.name))


def test_multiclass_bundle_has_contract_files_and_manifest(mc_bundle, mc_model):
    """A multi-class bundle holds exactly the contract's files and a manifest the runtime verifies."""
    assert sorted(p.name for p in mc_bundle.iterdir()) == sorted(
        [K.MANIFEST_FILE, K.ENCODER_FILE, K.ENCODER_INT8_FILE, K.FUSION_FILE, K.CALIBRATOR_FILE, K.TOKENIZER_FILE])
    man = manifest_of(mc_bundle)
    assert (man["format"], man["format_version"], man["task"]) == ("textclassify-bundle", 2, "multi_class")
    assert man["labels"] == LABELS and man["thresholds"] is None and man["max_length"] == 64
    steps = man["pipeline"]
    assert [(s["name"], s["role"], s["file"]) for s in steps] == [
        ("encoder", "component", "encoder.onnx"), ("calibrator", "calibrator", "calibrator.onnx"),
        ("fusion", "fusion", "fusion.onnx")]
    assert steps[0]["inputs"] == {"input_ids": {"dtype": "int64", "shape": ["batch", "sequence"],
                                                "from": "tokenizer.input_ids"},
                                  "attention_mask": {"dtype": "int64", "shape": ["batch", "sequence"],
                                                     "from": "tokenizer.attention_mask"}}
    assert steps[2]["inputs"]["llm_present"] == {"dtype": "float32", "shape": ["batch", 1], "from": "llm.present"}
    assert steps[2]["outputs"] == {"fused_logits": {"dtype": "float32", "shape": ["batch", 3]}}
    assert man["calibrator"] == {"kind": "temperature"}
    assert man["gate"] == {"rule": "top_probability", "threshold": None}
    assert man["variants"] == {"fp32": "encoder.onnx", "int8": "encoder.int8.onnx"}
    assert man["tokenizer"]["pad_token"] == "<pad>" and man["tokenizer"]["pad_token_id"] == 1
    assert (man["tokenizer"]["truncation"], man["tokenizer"]["padding"]) == (True, "longest")
    assert man["llm"] == mc_model.llm_settings_.to_dict()
    assert man["metrics"] == {"fused": {"accuracy": 0.9}, "note": None}  # NaN becomes null: strict JSON
    assert man["versions"]["opset"] == 17 and man["versions"]["onnxruntime"]
    assert man["created_at"].endswith("Z")
    verified = load_manifest(mc_bundle)
    assert set(verified.files) == {n for n in tree(mc_bundle) if n != K.MANIFEST_FILE}
    for name, entry in man["files"].items():
        data = (mc_bundle / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_multilabel_bundle_records_thresholds_isotonic_and_fp16(ml_bundle):
    """A multi-label bundle carries per-label thresholds, the isotonic calibrator and an fp16 graph checked on CPU
    (passed, but recorded as not validated: the CPU provider computes it in fp32)."""
    man = manifest_of(ml_bundle)
    assert man["task"] == "multi_label" and man["thresholds"] == [0.5, 0.5, 0.5]
    assert man["calibrator"]["kind"] == "isotonic"
    assert man["variants"] == {"fp32": "encoder.onnx", "int8": "encoder.int8.onnx", "fp16": "encoder.fp16.onnx"}
    fp16 = man["parity"]["fp16"]
    assert (fp16["validated"], fp16["checked_on"], fp16["provider"]) == (False, "cpu", "CPUExecutionProvider")
    assert fp16["agreement"] >= EK.REDUCED_PRECISION_MIN_AGREEMENT
    graph = onnx.load(str(ml_bundle / K.ENCODER_FP16_FILE))
    io_types = {v.name: v.type.tensor_type.elem_type for v in [*graph.graph.input, *graph.graph.output]}
    assert io_types["ml_logits"] == onnx.TensorProto.FLOAT  # keep_io_types
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    load_manifest(ml_bundle)


@pytest.mark.parametrize("which", ["mc_bundle", "ml_bundle"])
def test_parity_figures_are_recorded(which, request):
    """fp32 and calibrator differences are measured at batch sizes 1 and 7, truncation included."""
    parity = manifest_of(request.getfixturevalue(which))["parity"]
    fp32 = parity["fp32"]
    assert fp32["batch_sizes"] == [1, 7] and fp32["n_texts"] == 41 and fp32["truncated_texts"] >= 1
    assert 0 <= fp32["max_abs_diff_fused"] <= EK.FP32_PARITY_TOL
    assert 0 <= fp32["max_abs_diff_ml"] <= EK.FP32_PARITY_TOL
    assert 0 <= fp32["max_abs_diff_no_llm"] <= EK.FP32_PARITY_TOL
    assert 0 <= parity["calibrator"]["max_abs_diff"] <= EK.FP32_PARITY_TOL
    int8 = parity["int8"]
    assert int8["n_texts"] == 41 and int8["batch_sizes"] == [1, 7]
    assert int8["agreement"] >= EK.REDUCED_PRECISION_MIN_AGREEMENT
    assert int8["max_abs_diff_fused"] > fp32["max_abs_diff_fused"]  # quantised weights really differ


def test_int8_agreement_matches_an_independent_check(mc_bundle, mc_model):
    """Running encoder.int8.onnx then fusion.onnx by hand on fresh texts agrees with PyTorch as the manifest claims."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    texts = [t for t, _ in make_tickets(60, seed=99)]
    calibrated = mc_model.calibrator_.transform(raw_scores(texts, LABELS, False))
    enc = mc_model.tokenizer_(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = mc_model.model_(enc["input_ids"], enc["attention_mask"], torch.from_numpy(calibrated)).fused_logits
    tok = Tokenizer.from_file(str(mc_bundle / K.TOKENIZER_FILE))  # carries its own truncation and padding
    batch = tok.encode_batch(texts)
    feeds = {"input_ids": np.array([e.ids for e in batch], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in batch], dtype=np.int64)}
    int8 = ort.InferenceSession(str(mc_bundle / K.ENCODER_INT8_FILE), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(mc_bundle / K.ENCODER_FILE), providers=["CPUExecutionProvider"])
    fusion = ort.InferenceSession(str(mc_bundle / K.FUSION_FILE), providers=["CPUExecutionProvider"])

    def fused(encoder):
        ml = encoder.run(["ml_logits"], feeds)[0]
        return fusion.run(["fused_logits"], model_onnx.fusion_feeds(ml, calibrated, np.ones(len(ml))))[0]

    assert np.abs(fused(fp32) - want.numpy()).max() < EK.FP32_PARITY_TOL
    agreement = (fused(int8).argmax(1) == want.numpy().argmax(1)).mean()
    assert agreement >= 0.98


def test_optimised_graph_is_kept_when_parity_holds(mc_bundle):
    """ONNX Runtime's optimizer fused attention, parity held, and encoder.onnx is the fused graph."""
    man = manifest_of(mc_bundle)
    opt = man["graph"]["optimization"]
    assert opt["applied"] is True and opt["kept"] is True and opt["model_type"] == "bert"
    assert opt["fused_operators"]["Attention"] == 2 and man["parity"]["fp32"]["graph"] == "optimized"
    ops = {n.op_type for n in onnx.load(str(mc_bundle / K.ENCODER_FILE)).graph.node}
    assert "Attention" in ops and man["graph"]["attention"] == "eager"
    assert "SkipLayerNormalization" not in ops and opt["disabled_fusions"] == ["enable_skip_layer_norm",
                                                                              "enable_bias_skip_layer_norm"]


def test_int8_is_the_smoothquant_strength_closest_to_pytorch(mc_bundle):
    """Every SmoothQuant strength was tried on the parity texts; the shipped one had the least error."""
    int8 = manifest_of(mc_bundle)["graph"]["int8"]
    tried = int8["smoothquant_tried"]
    assert set(tried) == {"none", "0.6", "0.75", "0.9"}
    errors = {k: v["mean_abs_diff_fused"] for k, v in tried.items()}
    chosen = "none" if int8["smoothquant_alpha"] is None else str(int8["smoothquant_alpha"])
    assert errors[chosen] == min(errors.values())
    assert int8["source_graph"] == "plain" and int8["matmul_const_b_only"] is True
    ops = [n.op_type for n in onnx.load(str(mc_bundle / K.ENCODER_INT8_FILE)).graph.node]
    # 2 layers x Q, K, V, attention out, FFN in, FFN out; the pooled head stays float
    assert "Attention" not in ops and ops.count("MatMulInteger") == 2 * 6 == int8["quantised_matmuls"]
    assert ops.count("MatMul") >= 2 * 2  # the attention's scores and context stay float too
    parity = manifest_of(mc_bundle)["parity"]["int8"]
    assert parity["recheck_safety"] == RECHECK_SAFETY
    for logits in ("fused", "ml"):
        suffix = "" if logits == "fused" else "_ml"
        moved = parity[f"max_margin_change_{logits}"]
        assert parity[f"recheck_margin{suffix}"] == pytest.approx(RECHECK_SAFETY * moved)
        # a margin is a difference of two logits: it moves by at most twice the largest logit change
        assert 0 < moved <= 2 * parity[f"max_abs_diff_{logits}"]


def test_int8_candidates_that_cannot_run_ship_the_unsmoothed_graph(mc_model, tmp_path, monkeypatch):
    """When no SmoothQuant candidate runs in the search, each reason is recorded and the unsmoothed graph
    (quantised once) goes through the gate."""
    from textclassify.export import parity, variants

    real_open, real_quantize = parity.open_session, variants.quantize_int8
    written: list[str] = []

    def no_candidates(path, *args, **kwargs):
        if Path(path).name.startswith("encoder.int8.alpha-"):
            raise RuntimeError("no kernel for this candidate")
        return real_open(path, *args, **kwargs)

    def counting(src, dst, **kwargs):
        written.append(Path(dst).name)
        return real_quantize(src, dst, **kwargs)

    monkeypatch.setattr(parity, "open_session", no_candidates)
    monkeypatch.setattr(variants, "quantize_int8", counting)
    bundle = export_bundle(mc_model, tmp_path / "b", int8=True, progress=False)
    int8 = manifest_of(bundle)["graph"]["int8"]
    assert int8["smoothquant_alpha"] is None
    assert set(int8["smoothquant_tried"]) == {"none", "0.6", "0.75", "0.9"}
    assert all(v == "could not run: no kernel for this candidate" for v in int8["smoothquant_tried"].values())
    assert written == [f"encoder.int8.alpha-{a}.onnx" for a in ("none", "0.6", "0.75", "0.9")]  # "none" once


def test_optimised_graph_failing_parity_falls_back_to_plain(mc_model, tmp_path, monkeypatch):
    """When the optimised graph breaks parity, the plain graph ships and the manifest says why."""
    real = optimize.optimize_onnx

    def broken(src, dst, config):
        result = real(src, dst, config)
        graph = onnx.load(str(dst))
        shift_output_bias(graph, 0.5)
        onnx.save(graph, str(dst))
        return result

    monkeypatch.setattr(optimize, "optimize_onnx", broken)
    bundle = export_bundle(mc_model, tmp_path / "b", progress=False)
    man = manifest_of(bundle)
    opt = man["graph"]["optimization"]
    assert opt["applied"] is True and opt["kept"] is False and man["parity"]["fp32"]["graph"] == "plain"
    assert opt["rejected"].startswith("parity failed on the optimised graph: encoder.onnx + fusion.onnx "
                                      "(optimised encoder) ml_logits:")
    assert "Attention" not in {n.op_type for n in onnx.load(str(bundle / K.ENCODER_FILE)).graph.node}
    assert man["parity"]["fp32"]["max_abs_diff_fused"] <= EK.FP32_PARITY_TOL


def test_refused_export_writes_nothing(mc_model, tmp_path, monkeypatch):
    """With a zero tolerance every graph 'differs': ExportError lists the mismatches, no bundle appears."""
    monkeypatch.setattr(EK, "FP32_PARITY_TOL", 0.0)
    target = tmp_path / "bundle"
    with pytest.raises(ExportError) as info:
        export_bundle(mc_model, target, progress=False)
    message = str(info.value)
    assert message.startswith(f"Export refused, nothing written to {str(target)!r}: the ONNX bundle does not "
                              "match PyTorch (")
    assert "encoder.onnx + fusion.onnx fused_logits: max |diff| " in message
    assert "> 0 (batch size 1, text " in message
    assert "\n" not in message
    assert not target.exists() and leftovers(tmp_path) == []


def test_refused_export_keeps_the_previous_bundle(mc_model, mc_bundle, tmp_path, monkeypatch):
    """Perturbed ONNX weights are caught; an existing bundle at the target stays byte for byte."""
    target = tmp_path / "bundle"
    shutil.copytree(mc_bundle, target)
    before = tree(target)
    real = model_onnx.export_fusion_onnx

    def perturbed(*args, **kwargs):
        facts = real(*args, **kwargs)
        graph = onnx.load(str(args[1]))
        shift_output_bias(graph, 0.01)
        onnx.save(graph, str(args[1]))
        return facts

    monkeypatch.setattr(model_onnx, "export_fusion_onnx", perturbed)
    with pytest.raises(ExportError, match=r"encoder\.onnx \+ fusion\.onnx fused_logits: max \|diff\| 0\.01 > "
                                          r"0\.0001 \(batch size 1, text \d+\)"):
        export_bundle(mc_model, target, int8=True, progress=False)
    assert tree(target) == before and leftovers(tmp_path) == []


def test_low_int8_agreement_is_refused(mc_model, tmp_path, monkeypatch):
    """A reduced-precision variant below the agreement floor refuses the whole bundle."""
    monkeypatch.setattr(EK, "REDUCED_PRECISION_MIN_AGREEMENT", 1.01)
    with pytest.raises(ExportError, match=r"encoder\.int8\.onnx: prediction agreement with PyTorch 100\.00% < 101% "
                                          r"\(with the fp32 recheck of close calls; int8 alone 100\.00%: "
                                          r"0 of 41 texts differ; max \|fused diff\| "):
        export_bundle(mc_model, tmp_path / "b", int8=True, progress=False)
    assert leftovers(tmp_path) == [] and not (tmp_path / "b").exists()


def test_export_replaces_an_existing_bundle(mc_model, mc_bundle, tmp_path):
    """A successful export over an old bundle swaps it out whole; given texts and max_length are used."""
    target = tmp_path / "bundle"
    shutil.copytree(mc_bundle, target)
    texts = [t for t, _ in make_tickets(9, seed=5)]
    export_bundle(mc_model, target, max_length=32, texts=texts, raw_llm_scores=raw_scores(texts, LABELS, False),
                  progress=False)
    man = manifest_of(target)
    assert K.ENCODER_INT8_FILE not in man["variants"] and not (target / K.ENCODER_INT8_FILE).exists()
    assert man["max_length"] == 32 and man["parity"]["fp32"]["n_texts"] == 10
    assert json.loads((target / K.TOKENIZER_FILE).read_text())["truncation"]["max_length"] == 32
    assert leftovers(tmp_path) == []
    load_manifest(target)


def test_no_pickle_anywhere_in_a_bundle(ml_bundle):
    """Every file is ONNX protobuf or JSON: no pickle stream, no torch zip archive."""
    for path in ml_bundle.iterdir():
        data = path.read_bytes()
        assert not data.startswith(b"\x80") and not data.startswith(b"PK\x03\x04"), path.name
        if path.suffix == ".onnx":
            onnx.checker.check_model(onnx.load_from_string(data))
        else:
            json.loads(data)


def test_non_bundle_directory_is_refused_before_any_work(mc_model, tmp_path):
    """A non-empty folder that is not a bundle is never replaced."""
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError) as info:
        export_bundle(mc_model, target, progress=False)
    assert str(info.value) == (f"Output directory {str(target)!r} is not empty and holds no textclassify bundle; "
                               "choose a new path (export replaces only an existing bundle).")
    assert (target / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"texts": ["a text"]}, "Pass 'texts' and 'raw_llm_scores' together (the raw LLM scores of those texts), "
                            "or neither to use the model's validation texts."),
    ({"texts": ["a text"], "raw_llm_scores": np.ones((1, 2))},
     "raw_llm_scores must have shape (1, 3), one row per text and one column per label (got (1, 2))."),
    ({"max_length": 65}, "'max_length' 65 is more than the encoder allows (64 tokens, from "
                         "max_position_embeddings); choose 64 or less."),
    ({"opset": 11}, "'opset' must be an int >= 14 (got 11)."),
    ({"int8": "yes"}, "'int8' must be a bool (got 'yes', a str)."),
])
def test_bad_arguments_are_clear_errors(mc_model, tmp_path, kwargs, message):
    """Bad arguments fail before any export work with a message naming the argument."""
    with pytest.raises(ExportError) as info:
        export_bundle(mc_model, tmp_path / "b", progress=False, **kwargs)
    assert str(info.value) == message
    assert list(tmp_path.iterdir()) == []


def test_unfitted_object_is_refused(tmp_path):
    """Something that is not a fitted classifier names the attributes it lacks."""
    with pytest.raises(ExportError, match=r"^export needs a fitted AutoFusionClassifier or a saved-model folder; "
                                          r"the object given lacks \['model_', 'tokenizer_'"):
        export_bundle(object(), tmp_path / "b", progress=False)
