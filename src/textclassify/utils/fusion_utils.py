"""The seed's import path `textclassify.utils.fusion_utils`: a re-export of `textclassify.train.fusion_utils`."""
from textclassify.train.fusion_utils import FusionUtils

__all__ = ["FusionUtils"]
