"""export.fp16: the float16 encoder keeps its per-row head (and any llm_scores input) float32; what a check may claim;
an fp16 graph whose check failed never enters a bundle."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support.data import LABELS
from tests.support.fitted_model import make_fitted_model
from textclassify.export import constants as EK
from textclassify.export import export_bundle
from textclassify.export.fp16 import CPU_NOTE, convert_fp16, fp32_head_nodes, parity_entry
from textclassify.runtime import constants as K
from textclassify.runtime.errors import ExportError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HEAD = ["pool", "head", "concat", "fuse"]


def _save(graph: onnx.GraphProto, path) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture()
def encoder_and_head(tmp_path) -> str:
    """A per-token MatMul [B, T, 16] (the encoder), token 0 pooled, a head to [B, 3], then a fusion layer that
    concatenates the logits with an llm_scores input [B, 3] -- the shape of a format-1 model.onnx."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("W_tok", (16, 16)), ("W_head", (16, 3)), ("W_fuse", (6, 3)))]
    inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    nodes = [helper.make_node("MatMul", ["x", "W_tok"], ["h"], name="token_proj"),
             helper.make_node("Gather", ["h", "zero"], ["pooled"], name="pool", axis=1),
             helper.make_node("MatMul", ["pooled", "W_head"], ["ml_logits"], name="head"),
             helper.make_node("Concat", ["ml_logits", "llm_scores"], ["both"], name="concat", axis=1),
             helper.make_node("MatMul", ["both", "W_fuse"], ["fused_logits"], name="fuse")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 16]),
         helper.make_tensor_value_info("llm_scores", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("ml_logits", "fused_logits")],
        initializer=inits)
    return _save(graph, tmp_path / "g.onnx")


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_per_row_nodes_stay_float32(encoder_and_head, tmp_path) -> None:
    """The pooled head and the fusion layer are blocked; the per-token MatMul is converted."""
    assert fp32_head_nodes(onnx.load(encoder_and_head)) == ["head", "concat", "fuse"]
    facts = convert_fp16(encoder_and_head, tmp_path / "h.onnx")
    assert facts == {"method": "onnxruntime.transformers.float16", "keep_io_types": True,
                     "fp32_nodes": ["head", "concat", "fuse"]}
    model = onnx.load(str(tmp_path / "h.onnx"))
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["W_tok"] == TensorProto.FLOAT16
    assert (types["W_head"], types["W_fuse"]) == (TensorProto.FLOAT, TensorProto.FLOAT)
    assert [n.op_type for n in model.graph.node if "llm_scores" in n.input] == ["Concat"]  # no cast on the way in
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in model.graph.output)


def test_large_llm_scores_keep_their_precision(encoder_and_head, tmp_path) -> None:
    """Scores near 1000 lose ~0.5 per step in fp16; kept float32 the fused logits stay within fp16 rounding of
    the encoder part alone, where converting everything moves them much further."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    convert_fp16(encoder_and_head, tmp_path / "blocked.onnx")
    everything = OnnxModel(onnx.load(encoder_and_head))
    everything.convert_float_to_float16(keep_io_types=True)
    everything.save_model_to_file(str(tmp_path / "all.onnx"))
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(6, 5, 16)).astype(np.float32),
             "llm_scores": (1000 + rng.uniform(0, 1, (6, 3))).astype(np.float32)}
    ref = _run(encoder_and_head, feeds)[1]
    blocked = np.abs(_run(tmp_path / "blocked.onnx", feeds)[1] - ref).max()
    converted = np.abs(_run(tmp_path / "all.onnx", feeds)[1] - ref).max()
    assert blocked < 0.05 < converted


def test_per_token_graph_is_converted_whole(tmp_path) -> None:
    """A graph with no per-row part stores float16 weights and still takes and returns float32."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"], name="proj"), helper.make_node("Add", ["xw", "b"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", 4])],
        initializer=[numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "W"),
                     numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")])
    src = _save(graph, tmp_path / "g.onnx")
    assert convert_fp16(src, tmp_path / "h.onnx")["fp32_nodes"] == []
    model = onnx.load(str(tmp_path / "h.onnx"))
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = rng.normal(size=(3, 2, 16)).astype(np.float32)
    assert np.abs(_run(tmp_path / "h.onnx", {"x": x})[0] - _run(src, {"x": x})[0]).max() < 0.05


def test_unreadable_graph(tmp_path) -> None:
    """A file that is no ONNX graph is an ExportError naming it."""
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    with pytest.raises(ExportError, match=r"^fp16 conversion of bad\.onnx failed: "):
        convert_fp16(tmp_path / "bad.onnx", tmp_path / "h.onnx")


def test_parity_entry_validates_only_on_cuda() -> None:
    """A pass on CUDA validates; a pass on the CPU provider is recorded as checked on cpu, not validated."""
    figures = {"agreement": 1.0, "provider": "x"}
    assert parity_entry(figures, "CUDAExecutionProvider") == {"validated": True, "checked_on": "cuda", **figures}
    assert parity_entry(figures, "CPUExecutionProvider") == {"validated": False, "checked_on": "cpu", **figures,
                                                             "note": CPU_NOTE}


@pytest.fixture(scope="module")
def fitted(tiny_roberta_dir):
    return make_fitted_model(tiny_roberta_dir, LABELS, multi_label=False)


def test_export_on_cpu_records_fp16_as_checked_on_cpu(fitted, tmp_path) -> None:
    """Exported where only the CPU provider exists: the fp16 file ships, marked validated false, checked on cpu,
    and its head is float32."""
    out = export_bundle(fitted, tmp_path / "b", fp16=True, progress=False)
    manifest = json.loads((out / K.MANIFEST_FILE).read_text())
    entry = manifest["parity"]["fp16"]
    assert (entry["validated"], entry["checked_on"], entry["note"]) == (False, "cpu", CPU_NOTE)
    assert entry["agreement"] >= EK.REDUCED_PRECISION_MIN_AGREEMENT
    assert manifest["variants"]["fp16"] == K.ENCODER_FP16_FILE and manifest["graph"]["fp16"]["fp32_nodes"]


def test_failed_fp16_check_writes_nothing(fitted, tmp_path, monkeypatch) -> None:
    """An fp16 graph whose check fails is never written: the export is refused and the target stays absent."""
    monkeypatch.setattr(EK, "REDUCED_PRECISION_MIN_AGREEMENT", 1.01)  # no graph can agree on more than every row
    with pytest.raises(ExportError, match=r"^Export refused, nothing written to .*encoder\.fp16\.onnx"):
        export_bundle(fitted, tmp_path / "b", fp16=True, progress=False)
    assert not (tmp_path / "b").exists()
