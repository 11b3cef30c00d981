"""The original API's import path for the ensembles: `from textclassify.ensemble import VotingEnsemble, ...`.

A re-export of `textclassify.train.ensembles`; the classes live there.
"""
from textclassify.train.ensembles import EnsembleConfig, FusionEnsemble, VotingEnsemble, WeightedEnsemble

__all__ = ["EnsembleConfig", "FusionEnsemble", "VotingEnsemble", "WeightedEnsemble"]
