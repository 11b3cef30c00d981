"""export.smoothing: SmoothQuant keeps the fp32 function, flattens activations, and leaves tied weights alone."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from textclassify.export.smoothing import SMOOTH_SUFFIX, activation_ranges, smooth_model, smoothing_groups
from textclassify.export.variants import quantize_int8

K_IN, K_MID, N_OUT = 6, 5, 3


def two_layer_graph(rng: np.random.Generator, tied: bool = False) -> onnx.ModelProto:
    """x -> MatMul(A) and MatMul(B) (one group: same input); h = relu(x@A) -> MatMul(C).

    Tied: h = relu(x) -> MatMul(A), so A is read from two different tensors.
    """
    a = rng.normal(size=(K_IN, K_MID)).astype(np.float32)
    b = rng.normal(size=(K_IN, K_MID)).astype(np.float32)
    c = rng.normal(size=(K_MID, N_OUT)).astype(np.float32)
    second = "A" if tied else "C"
    nodes = [helper.make_node("MatMul", ["x", "A"], ["xa"], name="mm_a"),  # names: quantize_dynamic picks by name
             helper.make_node("MatMul", ["x", "B"], ["xb"], name="mm_b"),
             helper.make_node("Relu", ["xa" if not tied else "x"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", second], ["y"], name="mm_c")]
    outputs = [helper.make_tensor_value_info("xb", TensorProto.FLOAT, ["n", "t", K_MID]),
               helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "t", N_OUT if not tied else K_MID])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t", K_IN])]
    weights = [numpy_helper.from_array(w, name) for w, name in ((a, "A"), (b, "B"), (c, "C"))]
    graph = helper.make_graph(nodes, "two_layer", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def outlier_inputs(rng: np.random.Generator, n: int = 64) -> np.ndarray:
    """Per-token activations [n, 4 tokens, K_IN] with one outlier channel, as a BERT LayerNorm output has."""
    x = rng.normal(size=(n, 4, K_IN)).astype(np.float32)
    x[..., 2] *= 40.0
    return x


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_smoothing_keeps_the_fp32_function(tmp_path, alpha):
    """Dividing the inputs and multiplying the weights by the same scales changes no output beyond float noise."""
    rng = np.random.default_rng(0)
    model = two_layer_graph(rng)
    onnx.save(model, tmp_path / "m.onnx")
    x = outlier_inputs(rng)
    ranges = activation_ranges(tmp_path / "m.onnx", [{"x": x[:32]}, {"x": x[32:]}])
    smoothed = smooth_model(model, ranges, alpha)
    for want, got in zip(run(model, x), run(smoothed, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_one_mul_per_group_and_alpha_one_flattens_to_unit_range(tmp_path):
    """Q/K/V-style readers of one tensor share one Mul; with alpha 1 every smoothed channel peaks at exactly 1."""
    rng = np.random.default_rng(1)
    model = two_layer_graph(rng)
    onnx.save(model, tmp_path / "m.onnx")
    x = outlier_inputs(rng)
    assert {t: len(i) for t, i in smoothing_groups(model).items()} == {"x": 2, "h": 1}
    ranges = activation_ranges(tmp_path / "m.onnx", [{"x": x}])
    np.testing.assert_allclose(ranges["x"], np.abs(x).max(axis=(0, 1)), rtol=1e-6)
    smoothed = smooth_model(model, ranges, 1.0)
    muls = [n for n in smoothed.graph.node if n.op_type == "Mul"]
    assert len(muls) == 2 and all(n.name.endswith(f"{SMOOTH_SUFFIX}_mul") for n in muls)
    smoothed.graph.output.extend([helper.make_tensor_value_info(f"x{SMOOTH_SUFFIX}", TensorProto.FLOAT, None)])
    flat = run(smoothed, x)[-1]
    np.testing.assert_allclose(np.abs(flat).max(axis=(0, 1)), np.ones(K_IN), rtol=1e-5)
    assert list(model.graph.node[0].input) == ["x", "A"]  # the input model is not modified


def test_tied_weights_are_left_alone(tmp_path):
    """A weight read by two MatMuls on different tensors cannot be rescaled for one of them: no Mul goes in."""
    rng = np.random.default_rng(2)
    model = two_layer_graph(rng, tied=True)
    groups = smoothing_groups(model)
    assert "h" not in groups and "x" not in groups  # A is read from x and from h
    onnx.save(model, tmp_path / "m.onnx")
    x = outlier_inputs(rng)
    smoothed = smooth_model(model, activation_ranges(tmp_path / "m.onnx", [{"x": x}]), 0.5)
    assert [n.op_type for n in smoothed.graph.node] == [n.op_type for n in model.graph.node]


def test_bad_alpha_and_missing_ranges_are_refused(tmp_path):
    """alpha outside [0, 1], or smoothing asked for without activation ranges, is a ValueError."""
    model = two_layer_graph(np.random.default_rng(3))
    with pytest.raises(ValueError, match="alpha must be in"):
        smooth_model(model, {}, 1.5)
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="needs the activation ranges"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", alpha=0.5)


def test_smoothing_lowers_int8_error_on_outlier_activations(tmp_path):
    """The reason it exists: with one outlier channel, smoothed int8 is closer to fp32 than plain int8."""
    rng = np.random.default_rng(4)
    model = two_layer_graph(rng)
    onnx.save(model, tmp_path / "m.onnx")
    x = outlier_inputs(rng, 256)
    ranges = activation_ranges(tmp_path / "m.onnx", [{"x": x[:128]}])
    want = run(model, x[128:])
    quantize_int8(tmp_path / "m.onnx", tmp_path / "plain.int8.onnx")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "smooth.int8.onnx", ranges=ranges, alpha=0.5)
    errors = {}
    for name in ("plain", "smooth"):
        got = run(onnx.load(str(tmp_path / f"{name}.int8.onnx")), x[128:])
        errors[name] = float(np.mean([np.abs(g - w).mean() for g, w in zip(got, want)]))
    assert errors["smooth"] < 0.5 * errors["plain"], errors
