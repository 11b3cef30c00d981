"""Defaults that only export reads (the bundle's file and tensor names, which the runtime reads too, are in
textclassify.runtime.constants)."""
from __future__ import annotations

ONNX_OPSET = 17
FP32_PARITY_TOL = 1e-4  # max |difference| between the exported graphs and PyTorch, on probabilities and logits
REDUCED_PRECISION_MIN_AGREEMENT = 0.99  # int8/fp16 variants: share of rows whose decisions match fp32
