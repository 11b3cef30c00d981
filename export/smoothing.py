"""SmoothQuant for the int8 variant: move activation outliers into the weights before dynamic quantisation.

Dynamic quantisation gives each activation tensor one int8 scale per batch, so the few channels that
carry large values (a BERT encoder's LayerNorm and GELU outputs reach 25 where most channels stay
under 2) squeeze every other channel into a handful of levels. SmoothQuant (Xiao et al., 2023)
divides input channel j of a MatMul by s_j = amax_x[j]**alpha / amax_w[j]**(1 - alpha) and multiplies
row j of its weights by s_j: the same product, flatter activations, slightly wider weights. The
division is one Mul node per input tensor, shared by every MatMul reading that tensor (Q, K and V).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Floors for the per-channel maxima: a channel that is always 0 (or a weight row of zeros) gets scale 1-ish
# instead of a division by zero.
RANGE_FLOOR = 1e-5
SMOOTH_SUFFIX = "_smoothquant"


Groups = dict[str, list[int]]  # activation tensor -> indices of the MatMul nodes reading it


def load_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """`model` itself when it is already loaded, else the graph read from its path."""
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _copy(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """A model this module may change: a fresh load of a path, or a copy of a loaded model."""
    if not isinstance(model, onnx.ModelProto):
        return onnx.load(str(model))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def smoothing_groups(model: onnx.ModelProto) -> Groups:
    """Indices of the MatMuls int8 quantises, grouped by the activation tensor they read.

    Those are MatMuls with a constant 2-D float weight of their own, reading a per-token tensor (rank 3 or
    more, as ONNX shape inference sees it): the encoder's projections, where the compute is. The pooled
    head and the fusion MLP read [batch, features], cost nothing and sit next to the output, so they stay
    fp32. A weight that another node also reads (tied weights) is left alone, and so is its whole group:
    rescaling it would change that other node's result.
    """
    ranks = _tensor_ranks(model)
    weights = {init.name: init for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    groups: dict[str, list[int]] = {}
    tied: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if node.op_type != "MatMul" or node.input[1] not in weights or ranks.get(node.input[0], 0) < 3:
            continue
        weight = weights[node.input[1]]
        if weight.data_type == onnx.TensorProto.FLOAT and len(weight.dims) == 2:
            groups.setdefault(node.input[0], []).append(index)
            if uses[node.input[1]] > 1:
                tied.add(node.input[0])
    return {tensor: indices for tensor, indices in groups.items() if tensor not in tied}


def _tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor whose shape ONNX shape inference can tell (graph inputs included)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks


def activation_ranges(model: str | Path | onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]],
                      groups: Groups | None = None) -> dict[str, np.ndarray]:
    """Per-channel max |x| of every smoothing group's input over `feeds`, running the fp32 graph.

    `groups` (smoothing_groups of `model`) saves a second shape inference when the caller has them.
    """
    from textclassify.runtime.sessions import CPU, inference_session, session_options

    model = _copy(model)
    names = list(smoothing_groups(model) if groups is None else groups)
    if not names:
        return {}
    model.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = inference_session(model.SerializeToString(), [CPU], session_options())
    ranges: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, dict(feed))):
            amax = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = amax if name not in ranges else np.maximum(ranges[name], amax)
    if len(ranges) != len(names):
        raise ValueError("no calibration batches: activation ranges need at least one feed")
    return ranges


def smooth_model(model: onnx.ModelProto, ranges: Mapping[str, np.ndarray], alpha: float,
                 groups: Groups | None = None) -> onnx.ModelProto:
    """A copy of `model` with SmoothQuant scales (strength `alpha` in [0, 1]) folded into each group's weights.

    `groups` (smoothing_groups of `model`) saves a shape inference when the caller has them.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha!r})")
    out = _copy(model)
    weights = {init.name: init for init in out.graph.initializer}
    divide_before: dict[int, onnx.NodeProto] = {}  # index of the group's first reader -> the Mul to insert
    for tensor, indices in (smoothing_groups(out) if groups is None else groups).items():
        if tensor not in ranges:
            continue
        readers = [out.graph.node[i] for i in indices]
        arrays = [numpy_helper.to_array(weights[node.input[1]]) for node in readers]
        w_amax = np.max([np.abs(a).max(axis=1) for a in arrays], axis=0)
        scale = (np.power(np.maximum(ranges[tensor], RANGE_FLOOR), alpha)
                 / np.power(np.maximum(w_amax, RANGE_FLOOR), 1.0 - alpha)).astype(np.float32)
        inverse, smoothed = f"{tensor}{SMOOTH_SUFFIX}_inverse_scale", f"{tensor}{SMOOTH_SUFFIX}"
        out.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        divide_before[indices[0]] = helper.make_node("Mul", [tensor, inverse], [smoothed],
                                                          name=f"{tensor}{SMOOTH_SUFFIX}_mul")
        for node, array in zip(readers, arrays):
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(
                (array * scale[:, None]).astype(np.float32), node.input[1]))
            node.input[0] = smoothed
    nodes = []
    for index, node in enumerate(out.graph.node):
        if index in divide_before:
            nodes.append(divide_before[index])
        kept = onnx.NodeProto()
        kept.CopyFrom(node)  # a copy: clearing the field below detaches the originals
        nodes.append(kept)
    out.graph.ClearField("node")
    out.graph.node.extend(nodes)
    return out
