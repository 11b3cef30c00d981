"""textclassify.export: turn a fitted AutoFusionClassifier into an ONNX bundle (`fusion-export`)."""
from __future__ import annotations

from textclassify.export.api import export_bundle

__all__ = ["export_bundle"]
