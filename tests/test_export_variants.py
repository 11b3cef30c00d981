"""variants: int8 dynamic quantisation and the fp16 conversion on a small hand-built graph."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from textclassify.export.variants import quantize_int8
from textclassify.runtime.errors import ExportError


@pytest.fixture()
def matmul_graph(tmp_path):
    """y = x @ W + b on per-token x [batch, tokens, 16] with a 16x4 weight, float32 in and out."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"], name="proj"), helper.make_node("Add", ["xw", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", 4])], initializer=[weight, bias])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_int8_quantises_weights_per_channel(matmul_graph, tmp_path):
    """The int8 graph uses integer MatMul with per-channel int8 weights and stays close to fp32."""
    facts = quantize_int8(matmul_graph, tmp_path / "q.onnx")
    assert facts == {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
                     "per_channel": True, "reduce_range": True, "op_types": ["MatMul"], "matmul_const_b_only": True,
                     "quantised_matmuls": 1, "smoothquant_alpha": None}
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}
    scales = [t for t in model.graph.initializer if t.name.startswith("W") and "scale" in t.name]
    assert [list(t.dims) for t in scales] == [[4]]  # one scale per output channel
    x = np.random.default_rng(1).normal(size=(5, 3, 16)).astype(np.float32)
    assert np.abs(run(tmp_path / "q.onnx", x) - run(matmul_graph, x)).max() < 0.2


def test_int8_weights_keep_clear_of_the_int16_saturation_of_avx2(matmul_graph, tmp_path):
    """7-bit weights: |w| <= 64, so a uint8 activation pair times them sums to at most 32,640 and the int16
    accumulation of a CPU without VNNI cannot saturate; the graph computes the same on every x86 CPU."""
    quantize_int8(matmul_graph, tmp_path / "q.onnx")
    model = onnx.load(str(tmp_path / "q.onnx"))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8
               and t.name.endswith("_quantized")]
    assert len(weights) == 1 and weights[0].size == 16 * 4
    assert 255 * int(np.abs(weights[0].astype(np.int32)).max()) * 2 <= 32_767


def test_unreadable_graph_is_an_export_error(tmp_path):
    """A failed quantisation is an ExportError naming the step."""
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    with pytest.raises(ExportError, match=r"^int8 quantisation of encoder\.onnx failed: "):
        quantize_int8(tmp_path / "bad.onnx", tmp_path / "q.onnx")


def test_pooled_matmuls_stay_float(tmp_path):
    """Only per-token MatMuls are quantised; a graph with none is refused rather than quantised whole."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="head")], "pooled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "p.onnx"))
    with pytest.raises(ExportError, match="no per-token MatMul with a constant weight to quantise"):
        quantize_int8(tmp_path / "p.onnx", tmp_path / "q.onnx")


def test_a_loaded_source_is_quantised_without_being_changed(matmul_graph, tmp_path):
    """Export quantises one loaded graph once per SmoothQuant strength: each call must leave it as it was."""
    from textclassify.export.smoothing import smoothing_groups

    model = onnx.load(str(matmul_graph))
    before = model.SerializeToString()
    x = np.random.default_rng(4).normal(size=(4, 3, 16)).astype(np.float32)
    ranges = {"x": np.abs(x).max(axis=(0, 1))}
    for alpha in (None, 0.5):
        quantize_int8(model, tmp_path / f"q{alpha}.onnx", ranges=ranges, alpha=alpha, groups=smoothing_groups(model))
        assert model.SerializeToString() == before
        assert np.abs(run(tmp_path / f"q{alpha}.onnx", x) - run(matmul_graph, x)).max() < 0.2
