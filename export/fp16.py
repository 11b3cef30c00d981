"""The fp16 variant of the encoder graph (for CUDA), and what its parity check may claim.

Conversion: ONNX Runtime's own float16 converter (`onnxruntime.transformers`, no onnxconverter-common),
float32 inputs and outputs kept (`keep_io_types`), so the runtime feeds every variant the same arrays.
The per-row part of the graph stays float32 (`node_block_list`): every node whose activations, in and
out, have rank <= 2 -- the classifier head after the sequence is pooled, and in a graph that also holds
it, the fusion MLP with its `llm_scores` input (which would otherwise be cast to fp16 on the way in and
lose precision on large calibrated scores). These nodes are a few [B, H] x [H, C] products: fp16 buys
nothing there, and the logits keep fp32 precision. Ranks come from ONNX Runtime's symbolic shape
inference, which also types its fused contrib ops (Attention, SkipLayerNormalization).

The check: ONNX Runtime's CPU provider has no fp16 kernels for most of these ops; it inserts casts and
computes in fp32, so a check there measures weight rounding, not CUDA's fp16 arithmetic. Only a check
whose session really ran on CUDA validates the variant; a CPU pass is recorded as
`validated: false, checked_on: "cpu"`, and the runtime's `auto` does not serve it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from textclassify.runtime.errors import ExportError, first_line

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
CPU_NOTE = ("passed on ONNX Runtime's CPU provider, which computes most fp16 ops in fp32 after casts, so it is not "
            "evidence for CUDA; export on a CUDA machine (textclassify[gpu]) to validate it there")


def fp32_head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes to keep float32: those whose float activations, inputs and outputs, all have rank <= 2.

    Raises ExportError when a node that must stay float32 has no name (the converter selects by name), or
    when a float graph output of rank <= 2 would be produced by a converted node.
    """
    ranks = _float_ranks(model)
    initializers = {t.name for t in model.graph.initializer}
    keep: list[str] = []
    for node in model.graph.node:
        inputs = [n for n in node.input if n in ranks and n not in initializers]
        outputs = [n for n in node.output if n in ranks]
        if not inputs or not outputs:  # no float activation flows through it (shape arithmetic, constants)
            continue
        if all(0 <= ranks[n] <= 2 for n in inputs + outputs):
            if not node.name:
                raise ExportError(f"fp16 conversion: a {node.op_type} node producing {list(node.output)} must stay "
                                  "float32 but has no name to select it by")
            keep.append(node.name)
    producers = {out: node.name for node in model.graph.node for out in node.output}
    kept = set(keep)
    for output in model.graph.output:
        if output.name in ranks and 0 <= ranks[output.name] <= 2 and producers.get(output.name) not in kept:
            raise ExportError(f"fp16 conversion: the graph output {output.name!r} (rank {ranks[output.name]}) would "
                              "be computed in fp16; its producer is not a per-row node")
    return keep


def convert_fp16(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write the float16 model of `src` to `dst`: inputs, outputs and the per-row head kept float32."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    name = Path(src).name
    try:
        source = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001 -- onnx raises DecodeError and friends
        raise ExportError(f"fp16 conversion of {name} failed: {first_line(e)}") from e
    keep = fp32_head_nodes(source)
    try:
        model = OnnxModel(source)
        model.convert_float_to_float16(keep_io_types=True, node_block_list=keep)
        model.save_model_to_file(str(dst), use_external_data_format=False)
    except Exception as e:  # noqa: BLE001 -- the converter raises plain exceptions
        raise ExportError(f"fp16 conversion of {name} failed: {first_line(e)}") from e
    converted = onnx.load(str(dst))
    cast_inputs = _inputs_cast_to_fp16(converted)
    if cast_inputs:
        raise ExportError(f"fp16 conversion of {name}: the float32 input(s) {cast_inputs} feed per-row nodes yet "
                          "were cast to fp16")
    return {"method": "onnxruntime.transformers.float16", "keep_io_types": True, "fp32_nodes": keep}


def check_providers() -> list[str]:
    """Where the export checks the fp16 graph: CUDA first when this onnxruntime offers it, else the CPU."""
    import onnxruntime as ort

    return [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]


def parity_entry(figures: dict[str, Any], provider_used: str) -> dict[str, Any]:
    """The manifest's `parity.fp16` for a check that passed, on the provider its session really used."""
    if provider_used == CUDA:
        return {"validated": True, "checked_on": "cuda", **figures}
    return {"validated": False, "checked_on": "cpu", **figures, "note": CPU_NOTE}


def _float_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every float tensor (-1 where unknown), from ONNX Runtime's symbolic shape inference."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
    except Exception as e:  # noqa: BLE001 -- the inference raises plain exceptions on ops it cannot type
        raise ExportError(f"fp16 conversion: shape inference failed ({first_line(e)}); cannot tell the per-row "
                          "head from the encoder") from e
    if inferred is None:
        raise ExportError("fp16 conversion: shape inference could not type every node; cannot tell the per-row "
                          "head from the encoder")
    ranks: dict[str, int] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.elem_type in _FLOATS:
            ranks[info.name] = len(tensor.shape.dim) if tensor.HasField("shape") else -1
    for init in graph.initializer:
        if init.data_type in _FLOATS:
            ranks[init.name] = len(init.dims)
    return ranks


def _inputs_cast_to_fp16(model: onnx.ModelProto) -> list[str]:
    """Float32 graph inputs of rank <= 2 (per-row, such as llm_scores) that the converted graph casts to fp16."""
    float_inputs = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    cast_to_fp16 = [n for n in model.graph.node if n.op_type == "Cast" and n.input and n.input[0] in float_inputs
                    and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)]
    ranks_ok = {i.name for i in model.graph.input
                if len(i.type.tensor_type.shape.dim) <= 2 and i.name in float_inputs}
    return sorted({n.input[0] for n in cast_to_fp16 if n.input[0] in ranks_ok})
