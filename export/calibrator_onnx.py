"""calibrator.onnx: raw LLM scores [B, C] -> calibrated scores [B, C], converted with skl2onnx.

Multi-class: the temperature calibrator's LogisticRegression (coefficients I/T) converted by
skl2onnx, behind a small hand-built log(clip(x, eps, 1)) step joined with `onnx.compose.merge_models`.
Multi-label: scikit-learn's IsotonicRegression has no skl2onnx converter, so this module registers
one (`update_registered_converter`) that computes scipy's interp1d exactly (searchsorted, then
slope * (x - x_lo) + y_lo), in float64 inside the graph: float64 matched scikit-learn to 3e-8 here,
float32 only to 1e-4. A second registered converter, for `IsotonicCalibrator`, slices each column,
converts each label's regressor through the registry and concatenates the results.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn, update_registered_converter
from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
from skl2onnx.algebra.onnx_ops import OnnxConcat, OnnxGather
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.isotonic import IsotonicRegression

from textclassify.export import constants as EK
from textclassify.runtime import constants
from textclassify.runtime.errors import ExportError
from textclassify.train.calibration import IsotonicCalibrator, TemperatureCalibrator

ISOTONIC_ALIAS = "SklearnIsotonicRegression"
ISOTONIC_CALIBRATOR_ALIAS = "TextClassifyIsotonicCalibrator"
MIN_OPSET = 13  # ReduceSum takes its axes as an input from 13 on


# ---------------------------------------------------------------- IsotonicRegression converter


def _isotonic_shape_calculator(operator) -> None:
    """Input [N] or [N, 1], float or double; output [N, 1] of the same type (skl2onnx's regressor shape)."""
    if len(operator.inputs) != 1:
        raise ExportError(f"IsotonicRegression takes one input (got {len(operator.inputs)}).")
    in_type = operator.inputs[0].type
    if not isinstance(in_type, FloatTensorType | DoubleTensorType):
        raise ExportError(f"IsotonicRegression's ONNX input must be float or double (got {in_type}).")
    shape = in_type.shape
    if len(shape) > 2 or (len(shape) == 2 and shape[1] not in (1, None)):
        raise ExportError(f"IsotonicRegression takes one feature, shape [N] or [N, 1] (got {shape}).")
    operator.outputs[0].type = type(in_type)([shape[0] if shape else None, 1])


def _segments(reg: IsotonicRegression) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds and, per segment, x_lo, y_lo and slope as scipy's interp1d computes them (float64)."""
    xs = np.asarray(reg.X_thresholds_, dtype=np.float64)
    ys = np.asarray(reg.y_thresholds_, dtype=np.float64)
    if len(xs) == 1:  # scikit-learn predicts the single y everywhere
        return xs, xs.copy(), ys.copy(), np.zeros(1)
    return xs, xs[:-1], ys[:-1], (ys[1:] - ys[:-1]) / (xs[1:] - xs[:-1])


def _convert_isotonic(scope, operator, container) -> None:
    """Emit the nodes of one fitted IsotonicRegression.predict (interp1d with clipping or NaN outside)."""
    reg: IsotonicRegression = operator.raw_operator
    if reg.out_of_bounds not in ("clip", "nan"):
        raise ExportError(f"IsotonicRegression(out_of_bounds={reg.out_of_bounds!r}) cannot be expressed in "
                          "ONNX; use out_of_bounds='clip' or 'nan'.")
    opset = container.target_opset
    if opset < MIN_OPSET:
        raise ExportError(f"The IsotonicRegression converter needs opset >= {MIN_OPSET} (got {opset}).")
    xs, x_lo, y_lo, slope = _segments(reg)
    is_double = isinstance(operator.inputs[0].type, DoubleTensorType)

    def name(seed: str) -> str:
        return scope.get_unique_variable_name(seed)

    def const(seed: str, values: np.ndarray, dtype: int = TensorProto.DOUBLE) -> str:
        var = name(seed)
        container.add_initializer(var, dtype, list(values.shape), values.ravel().tolist())
        return var

    def node(op_type: str, inputs: list[str], seed: str, **attrs) -> str:
        out = name(seed)
        container.add_node(op_type, inputs, [out], name=scope.get_unique_operator_name(op_type), **attrs)
        return out

    x = node("Reshape", [operator.inputs[0].full_name, const("iso_col", np.array([-1, 1]), TensorProto.INT64)],
             "iso_x")
    if not is_double:
        x = node("Cast", [x], "iso_xd", to=TensorProto.DOUBLE)
    x_min, x_max = const("iso_xmin", np.array(reg.X_min_, dtype=np.float64)), const(
        "iso_xmax", np.array(reg.X_max_, dtype=np.float64))
    xc = node("Clip", [x, x_min, x_max], "iso_xc")
    # searchsorted(xs, x, side="left") = how many thresholds are < x; interp1d then clips the
    # upper index to [1, K-1], so the segment index is clip(count - 1, 0, segments - 1).
    below = node("Less", [const("iso_xs", xs.reshape(1, -1)), xc], "iso_below")
    count = node("ReduceSum", [node("Cast", [below], "iso_below_i", to=TensorProto.INT64),
                               const("iso_axis", np.array([1]), TensorProto.INT64)], "iso_count", keepdims=1)
    lo = node("Clip", [node("Sub", [count, const("iso_one", np.array(1), TensorProto.INT64)], "iso_cm1"),
                       const("iso_zero", np.array(0), TensorProto.INT64),
                       const("iso_last", np.array(len(x_lo) - 1), TensorProto.INT64)], "iso_lo")
    gathered = [node("Gather", [const(seed, arr), lo], seed + "_at", axis=0)
                for seed, arr in (("iso_x_lo", x_lo), ("iso_y_lo", y_lo), ("iso_slope", slope))]
    offset = node("Sub", [xc, gathered[0]], "iso_dx")
    y = node("Add", [node("Mul", [gathered[2], offset], "iso_rise"), gathered[1]], "iso_yd")
    if reg.out_of_bounds == "nan":
        outside = node("Or", [node("Less", [x, x_min], "iso_lt"), node("Greater", [x, x_max], "iso_gt")],
                       "iso_outside")
        y = node("Where", [outside, const("iso_nan", np.array(np.nan)), y], "iso_ynan")
    if is_double:
        container.add_node("Identity", [y], [operator.outputs[0].full_name],
                           name=scope.get_unique_operator_name("Identity"))
    else:
        container.add_node("Cast", [y], [operator.outputs[0].full_name], to=TensorProto.FLOAT,
                           name=scope.get_unique_operator_name("Cast"))


# ---------------------------------------------------------------- IsotonicCalibrator converter


def _calibrator_shape_calculator(operator) -> None:
    """Input float [N, C] with C the calibrator's label count; output float [N, C]."""
    n_labels = operator.raw_operator.n_labels_
    shape = operator.inputs[0].type.shape
    if len(shape) != 2 or shape[1] not in (n_labels, None):
        raise ExportError(f"IsotonicCalibrator takes raw scores [N, {n_labels}] (got {shape}).")
    operator.outputs[0].type = FloatTensorType([shape[0], n_labels])


def _convert_isotonic_calibrator(scope, operator, container) -> None:
    """Slice each label's column, convert its IsotonicRegression through the registry, concatenate."""
    opv = container.target_opset
    x = operator.inputs[0]
    columns = [
        OnnxSubEstimator(reg, OnnxGather(x, np.array([j], dtype=np.int64), axis=1, op_version=opv),
                         op_version=opv)
        for j, reg in enumerate(operator.raw_operator.regressors_)
    ]
    OnnxConcat(*columns, axis=1, op_version=opv, output_names=operator.outputs[:1]).add_to(scope, container)


def register_calibrator_converters() -> None:
    """Register the IsotonicRegression and IsotonicCalibrator converters with skl2onnx (idempotent)."""
    update_registered_converter(IsotonicRegression, ISOTONIC_ALIAS, _isotonic_shape_calculator,
                                _convert_isotonic, overwrite=True)
    update_registered_converter(IsotonicCalibrator, ISOTONIC_CALIBRATOR_ALIAS, _calibrator_shape_calculator,
                                _convert_isotonic_calibrator, overwrite=True)


register_calibrator_converters()


# ---------------------------------------------------------------- temperature (LogisticRegression)


def _prune_to_output(model: onnx.ModelProto, source: str, target: str, n_labels: int) -> None:
    """Keep only the nodes that compute `source`, rename it `target` and make it the single output."""
    graph = model.graph
    needed, kept = {source}, []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    kept.reverse()
    for node in kept:
        node.output[:] = [target if o == source else o for o in node.output]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(target, TensorProto.FLOAT, ["batch", n_labels]))


def _dedupe_opsets(model: onnx.ModelProto) -> None:
    """One opset import per domain (skl2onnx and merge_models can list the default domain twice)."""
    versions: dict[str, int] = {}
    for op in model.opset_import:
        domain = "" if op.domain == "ai.onnx" else op.domain
        versions[domain] = max(versions.get(domain, 0), op.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(versions.items()))


def _temperature_to_onnx(calibrator: TemperatureCalibrator, n_labels: int, opset: int) -> onnx.ModelProto:
    lr = calibrator.to_sklearn()
    lr_model = convert_sklearn(lr, initial_types=[("log_scores", FloatTensorType([None, n_labels]))],
                               options={id(lr): {"zipmap": False}}, target_opset=opset)
    front = helper.make_graph(
        [helper.make_node("Clip", ["raw", "eps", "one"], ["clipped"]),
         helper.make_node("Log", ["clipped"], ["log_scores"])],
        "log_clip",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", n_labels])],
        [helper.make_tensor_value_info("log_scores", TensorProto.FLOAT, ["batch", n_labels])],
        initializer=[helper.make_tensor("eps", TensorProto.FLOAT, [], [calibrator.eps]),
                     helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    _dedupe_opsets(lr_model)
    front_model = helper.make_model(front, opset_imports=[op for op in lr_model.opset_import if op.domain == ""])
    front_model.ir_version = lr_model.ir_version
    merged = onnx.compose.merge_models(onnx.compose.add_prefix(front_model, "logclip_"),
                                       onnx.compose.add_prefix(lr_model, "lr_"),
                                       io_map=[("logclip_log_scores", "lr_log_scores")])
    _prune_to_output(merged, "lr_probabilities", constants.CALIBRATOR_OUTPUT, n_labels)
    merged.graph.input[0].name = constants.CALIBRATOR_INPUT
    for node in merged.graph.node:
        node.input[:] = [constants.CALIBRATOR_INPUT if i == "logclip_raw" else i for i in node.input]
    return merged


# ---------------------------------------------------------------- entry point


def calibrator_to_onnx(calibrator: TemperatureCalibrator | IsotonicCalibrator, n_labels: int,
                       opset: int = EK.ONNX_OPSET) -> onnx.ModelProto:
    """The calibrator as one ONNX graph: `llm_scores_raw` float32 [batch, C] -> `llm_scores` float32 [batch, C]."""
    if not isinstance(calibrator, TemperatureCalibrator | IsotonicCalibrator):
        raise ExportError(f"calibrator_to_onnx takes a TemperatureCalibrator or IsotonicCalibrator "
                          f"(got {type(calibrator).__name__}).")
    fitted_labels = getattr(calibrator, "n_labels_", None)
    if fitted_labels is None:
        raise ExportError(f"This {type(calibrator).__name__} instance is not fitted yet. Call 'fit' first.")
    if fitted_labels != n_labels:
        raise ExportError(f"The calibrator was fitted on {fitted_labels} labels, but n_labels={n_labels}.")
    if opset < MIN_OPSET:
        raise ExportError(f"calibrator.onnx needs opset >= {MIN_OPSET} (got {opset}).")
    if isinstance(calibrator, TemperatureCalibrator):
        model = _temperature_to_onnx(calibrator, n_labels, opset)
        kind = "temperature"
    else:
        model = convert_sklearn(
            calibrator, initial_types=[(constants.CALIBRATOR_INPUT, FloatTensorType([None, n_labels]))],
            final_types=[(constants.CALIBRATOR_OUTPUT, FloatTensorType([None, n_labels]))], target_opset=opset)
        kind = "isotonic"
    _dedupe_opsets(model)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.name = f"textclassify_calibrator_{kind}"
    helper.set_model_props(model, {"textclassify.calibrator": kind, "textclassify.n_labels": str(n_labels)})
    onnx.checker.check_model(model, full_check=True)
    return model
