"""The original API's import path `textclassify.utils.fusion_utils`.

A re-export of `textclassify.train.fusion_utils`.
"""
from textclassify.train.fusion_utils import FusionUtils

__all__ = ["FusionUtils"]
