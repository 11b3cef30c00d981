"""The original API's import path `textclassify.ensemble.fusion`: FusionEnsemble and the fusion network.

A re-export of `textclassify.train.ensembles` and `textclassify.train.fusion_model`.
"""
from textclassify.train.ensembles import EnsembleConfig, FusionEnsemble
from textclassify.train.fusion_model import FusionMLP, FusionWrapper

__all__ = ["EnsembleConfig", "FusionEnsemble", "FusionMLP", "FusionWrapper"]
