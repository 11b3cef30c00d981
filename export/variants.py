"""The int8 variant of encoder.onnx (dynamic quantisation, CPU); the fp16 one (CUDA) is export/fp16.py.

int8: `quantize_dynamic(weight_type=QInt8, per_channel=True, reduce_range=True)` on the encoder's per-token MatMuls
with constant weights (export.smoothing.smoothing_groups: the attention's activation-by-activation
MatMuls, the head and the fusion MLP stay fp32), optionally after SmoothQuant (export/smoothing.py).
Per-channel weights: on a trained head they kept 99.6% agreement where per-tensor fell to 97%.
7-bit weights (`reduce_range`): the uint8-activation x int8-weight kernel of an x86 CPU without VNNI
(AVX2 only) adds pairs of products in int16 and saturates past 32,767 (255 x 127 x 2 = 64,770), so a
full-range int8 graph gives other answers there than on a VNNI CPU: on an AVX2 AMD EPYC a 16x4 MatMul
was off fp32 by 2.49 at most, against 0.15 with 7-bit weights (255 x 64 x 2 = 32,640 fits). The
export's agreement and recheck margin are thus measured on the numbers every CPU computes. Cost on
MiniLM there (benchmarks/README.md): 1.84x eager against 1.90x, a recheck margin of 0.52 against 0.34.
`DefaultTensorType` lets the quantizer type the outputs of contrib ops, which ONNX shape inference
cannot.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from textclassify.runtime.errors import ExportError, first_line


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer warns through the root logger ("consider pre-processing"); keep stderr for progress."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# SmoothQuant strengths the export tries (None: no smoothing); it keeps the one closest to PyTorch on the
# parity texts, so a strength that does not help a model is never shipped.
INT8_SMOOTHING_ALPHAS: tuple[float | None, ...] = (None, 0.6, 0.75, 0.9)


def quantize_int8(src: str | Path | onnx.ModelProto, dst: str | Path, *,
                  ranges: Mapping[str, np.ndarray] | None = None, alpha: float | None = None,
                  groups: dict[str, list[int]] | None = None) -> dict[str, object]:
    """Write the dynamically quantised (int8 weights per channel) model of `src` to `dst`.

    With `alpha`, the graph is first smoothed with SmoothQuant using the activation `ranges`
    (export.smoothing.activation_ranges of `src`). A loaded `src` and its `groups`
    (export.smoothing.smoothing_groups) spare the reload and the shape inference when it is
    quantised several times; `src` itself is not changed.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from textclassify.export.smoothing import load_model, smooth_model, smoothing_groups

    if alpha is not None and ranges is None:
        raise ValueError("SmoothQuant (alpha) needs the activation ranges of the source graph")
    try:
        model = load_model(src)
        groups = smoothing_groups(model) if groups is None else groups
        # smoothing inserts Mul nodes but renames nothing: the names of the source's readers still hold
        names = [model.graph.node[i].name for indices in groups.values() for i in indices]
        if alpha is not None:
            model = smooth_model(model, ranges or {}, alpha, groups)
        if not all(names):  # quantize_dynamic selects nodes by name, and an empty list would mean "all of them"
            raise ValueError(f"{len(names) - len([n for n in names if n])} MatMul node(s) to quantise have no name")
        if not names:
            raise ValueError("the graph has no per-token MatMul with a constant weight to quantise")
        with _quiet_root_logger():
            quantize_dynamic(model, str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             op_types_to_quantize=["MatMul"], nodes_to_quantize=names,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    except Exception as e:  # noqa: BLE001 -- the quantizer raises plain RuntimeError/ValueError
        raise ExportError(f"int8 quantisation of encoder.onnx failed: {first_line(e)}") from e
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8", "per_channel": True,
            "reduce_range": True, "op_types": ["MatMul"], "matmul_const_b_only": True, "quantised_matmuls": len(names),
            "smoothquant_alpha": alpha}
