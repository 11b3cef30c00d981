"""parity: the comparisons of the export gate on hand-made outputs (names, shapes, values, agreement)."""
from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from textclassify.export.model_onnx import encoder_spec
from textclassify.export.parity import (
    Outputs,
    Reference,
    check_signature,
    compare_fp32,
    compare_reduced,
    decisions,
    parity_data,
    served_agreement,
)
from textclassify.runtime.errors import ExportError

FUSED = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [-1.0, -2.0, 3.0]], dtype=np.float32)
ML = np.zeros((3, 3), dtype=np.float32)


def reference() -> Reference:
    return Reference(ml={1: ML, 7: ML}, fused={1: FUSED, 7: FUSED})


def outputs(fused_1: np.ndarray, fused_7: np.ndarray | None = None) -> Outputs:
    return Outputs(ml={1: ML, 7: ML}, fused={1: fused_1, 7: FUSED if fused_7 is None else fused_7})


class FakeArg:
    def __init__(self, name: str, type_: str) -> None:
        self.name, self.type = name, type_


class FakeSession:
    def __init__(self, inputs: dict[str, str], outputs_: dict[str, str]) -> None:
        self._in, self._out = inputs, outputs_

    def get_inputs(self):
        return [FakeArg(k, v) for k, v in self._in.items()]

    def get_outputs(self):
        return [FakeArg(k, v) for k, v in self._out.items()]


def test_equal_outputs_pass_and_report_zero():
    """Identical outputs give no findings and zero differences."""
    found, figures = compare_fp32("model.onnx", reference(), outputs(FUSED.copy()), 1e-4)
    assert found.problems() == []
    assert figures == {"max_abs_diff_fused": 0.0, "max_abs_diff_ml": 0.0, "tolerance": 1e-4}


def test_value_mismatch_names_output_batch_size_and_row():
    """A difference above the tolerance names the output, the batch size, the worst row and its size."""
    bad = FUSED.copy()
    bad[2, 1] += 0.25
    found, figures = compare_fp32("model.onnx", reference(), outputs(bad), 1e-4)
    assert found.values == ["model.onnx fused_logits: max |diff| 0.25 > 0.0001 (batch size 1, text 2)"]
    assert figures["max_abs_diff_fused"] == 0.25


def test_nan_output_is_a_mismatch():
    """NaN never passes the gate (a comparison with NaN is false)."""
    bad = FUSED.copy()
    bad[0, 0] = np.nan
    found, _ = compare_fp32("model.onnx", reference(), outputs(bad), 1e-4)
    assert found.values == ["model.onnx fused_logits: max |diff| nan > 0.0001 (batch size 1, text 0)"]


def test_shape_mismatch_comes_before_values():
    """A wrong shape is reported as such and values are not compared."""
    found, figures = compare_fp32("model.onnx", reference(), outputs(FUSED[:2]), 1e-4)
    assert found.shapes == ["model.onnx fused_logits: shape (2, 3), expected (3, 3) (batch size 1)"]
    assert found.values == [] and figures == {}


def test_names_and_types_are_checked_against_the_spec():
    """Missing inputs and wrong dtypes are name findings, listed first."""
    session = FakeSession({"input_ids": "tensor(int64)", "attention_mask": "tensor(int32)"},
                          {"ml_logits": "tensor(float)", "logits": "tensor(float)"})
    found = check_signature(session, "encoder.onnx", encoder_spec())
    assert found.names == [
        "encoder.onnx: input 'attention_mask' has type tensor(int32), expected tensor(int64)",
        "encoder.onnx: outputs ['logits', 'ml_logits'], expected ['ml_logits']",
    ]


def test_reduced_precision_agreement_counts_whole_rows():
    """int8/fp16: a text flipped at either batch size disagrees; one of three is 66.67% agreement."""
    flipped = FUSED.copy()
    flipped[1] = [0.0, 0.2, 0.5]  # argmax moves from label 1 to label 2
    found, figures = compare_reduced("model.int8.onnx", reference(), outputs(FUSED.copy(), flipped), False, None,
                                     0.99)
    assert figures["agreement"] == pytest.approx(2 / 3) and figures["n_texts"] == 3
    assert found.values == ["model.int8.onnx: prediction agreement with PyTorch 66.67% < 99% (1 of 3 texts differ; "
                            "max |fused diff| 0.8)"]


def test_multilabel_decisions_use_per_label_thresholds():
    """Multi-label decisions compare sigmoid(logits) with each label's threshold."""
    got = decisions(np.array([[0.0, 2.0, -2.0]]), True, [0.5, 0.9, 0.1])
    assert got.tolist() == [[1, 0, 1]]
    assert decisions(FUSED, False, None).ravel().tolist() == [0, 1, 2]


def test_parity_data_adds_a_truncated_text(tiny_roberta_dir):
    """Without any text longer than max_length, one is added (with text 0's scores)."""
    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    data = parity_data(["a short ticket", "another one"], [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], 3, tok, 16)
    assert len(data.texts) == 3 and data.truncated == 1
    assert len(tok(data.texts[-1], verbose=False)["input_ids"]) > 16
    assert data.raw_scores[-1].tolist() == pytest.approx([0.2, 0.3, 0.5])


def test_parity_data_rejects_empty_texts(tiny_roberta_dir):
    """A blank text cannot be part of the gate."""
    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    with pytest.raises(ExportError) as info:
        parity_data(["ok", " "], np.ones((2, 3)), 3, tok, 16)
    assert str(info.value) == "Parity texts[1] must be a non-empty string (got ' ')."


def _binary_case(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch-side fused logits with wide margins, and an 'int8' copy moved by at most 0.05 per logit."""
    rng = np.random.default_rng(seed)
    ref = np.stack([np.zeros(n), rng.choice([-1.0, 1.0], n) * rng.uniform(1.0, 3.0, n)], axis=1).astype(np.float32)
    return ref, (ref + rng.uniform(-0.05, 0.05, ref.shape)).astype(np.float32)


def _two_sizes(fused: np.ndarray) -> dict[int, np.ndarray]:
    return {1: fused, 7: fused}


def test_the_int8_gate_judges_close_calls_after_the_recheck():
    """Near-tie texts flipped by int8 are rechecked in serving, so the gate passes; raw agreement is reported."""
    ref, got = _binary_case()
    ref[[3, 8]] = [[0.0, 0.01], [0.0, -0.02]]  # two near-ties ...
    got[[3, 8]] = [[0.0, -0.02], [0.0, 0.03]]  # ... that int8 flips
    zeros = np.zeros_like(ref)
    reference, outs = Reference(ml=_two_sizes(zeros), fused=_two_sizes(ref)), Outputs(ml=_two_sizes(zeros),
                                                                                       fused=_two_sizes(got))
    found, figures = compare_reduced("model.int8.onnx", reference, outs, False, None, 0.99, recheck_safety=1.0)
    assert found.problems() == [] and figures["agreement"] == pytest.approx(38 / 40)
    assert figures["agreement_with_recheck"] == 1.0
    found, _ = compare_reduced("model.int8.onnx", reference, outs, False, None, 0.99)  # no recheck: refused
    assert found.values[0].startswith("model.int8.onnx: prediction agreement with PyTorch 95.00% < 99% (2 of 40")


def test_a_flip_far_beyond_the_other_half_margin_still_fails_the_gate():
    """The recheck margin judging a row comes from the other half of the texts: an outlier is not excused."""
    ref, got = _binary_case()
    got[5, 1] = -ref[5, 1]  # int8 flips a confident text: a change no other text shows
    zeros = np.zeros_like(ref)
    reference, outs = Reference(ml=_two_sizes(zeros), fused=_two_sizes(ref)), Outputs(ml=_two_sizes(zeros),
                                                                                       fused=_two_sizes(got))
    found, figures = compare_reduced("model.int8.onnx", reference, outs, False, None, 0.99, recheck_safety=1.0)
    assert figures["agreement_with_recheck"] == pytest.approx(39 / 40)
    assert found.values[0].startswith("model.int8.onnx: prediction agreement with PyTorch 97.50% < 99% "
                                      "(with the fp32 recheck of close calls; int8 alone 97.50%: 1 of 40 texts")
    single = Reference(ml=_two_sizes(zeros[:1]), fused=_two_sizes(ref[:1]))
    assert served_agreement(single, Outputs(ml=_two_sizes(zeros[:1]), fused=_two_sizes(-ref[:1])), False, None,
                            1.0) == 0.0  # one text: nothing to measure a margin on, nothing rechecked
