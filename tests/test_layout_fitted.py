"""One "not fitted" rule: runtime.errors.check_is_fitted, and every model class raises through it."""
from __future__ import annotations

import pytest

from textclassify.runtime.errors import NotFittedError, check_is_fitted
from textclassify.train.auto import AutoFusionClassifier
from textclassify.train.calibration import IsotonicCalibrator, TemperatureCalibrator
from textclassify.train.encoder_classifier import RoBERTaClassifier
from textclassify.train.ensembles import FusionEnsemble, VotingEnsemble, WeightedEnsemble
from textclassify.train.llm_classifiers import DeepSeekClassifier


class Thing:
    pass


def test_check_is_fitted():
    """Unset or False: NotFittedError with scikit-learn's message; any other value (even None) passes."""
    thing = Thing()
    with pytest.raises(NotFittedError, match=r"^This Thing instance is not fitted yet\. Call 'fit' first\.$"):
        check_is_fitted(thing, "model_")
    thing.model_ = False
    with pytest.raises(NotFittedError):
        check_is_fitted(thing, "model_")
    for value in (0, [], None, "x"):
        thing.model_ = value
        check_is_fitted(thing, "model_")


@pytest.mark.parametrize(("make", "call"), [
    (lambda: AutoFusionClassifier({}), lambda m: m.predict(["x"])),
    (RoBERTaClassifier, lambda m: m.predict(["x"])),
    (DeepSeekClassifier, lambda m: m.predict(["x"])),
    (FusionEnsemble, lambda m: m.predict(["x"])),
    (lambda: VotingEnsemble([]), lambda m: m.predict(["x"])),
    (lambda: WeightedEnsemble([]), lambda m: m.predict(["x"])),
    (TemperatureCalibrator, lambda m: m.transform([[0.5, 0.5]])),
    (IsotonicCalibrator, lambda m: m.transform([[0.5, 0.5]])),
])
def test_every_model_says_the_same_thing(make, call):
    """Each class raises NotFittedError naming itself, with the one message."""
    model = make()
    with pytest.raises(NotFittedError) as info:
        call(model)
    assert str(info.value) == f"This {type(model).__name__} instance is not fitted yet. Call 'fit' first."
