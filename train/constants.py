"""Defaults that only training reads (the runtime's own are in textclassify.runtime.constants)."""
from __future__ import annotations

DEFAULT_OUTPUT_DIR = "fusion_output"
DEFAULT_ML_MODEL = "roberta-base"

# LLM-score calibration (train fits it, calibrator.onnx serves it)
TEMPERATURE_BOUNDS = (0.01, 100.0)  # search range of the multi-class temperature T
# Isotonic calibration never outputs exactly 0 or 1: a certain-but-wrong score would cost unbounded log loss.
ISOTONIC_BOUNDS = (0.01, 0.99)

# Floor for the spread used to standardise fusion inputs. A collapsed encoder has near-constant logits whose small
# differences still carry signal, so the floor is low; too low a floor multiplies ONNX Runtime's numeric noise past
# the export parity gate and makes joint training diverge.
FEATURE_SCALE_FLOOR = 1e-2
