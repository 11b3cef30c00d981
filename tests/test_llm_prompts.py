"""Tests of textclassify.runtime.llm.prompts: message layout, codes, the one-line text contract."""
from __future__ import annotations

import pytest

from tests.support.llm_server import parse_prompt
from textclassify.runtime.llm.prompts import build_messages, label_codes, labels_need_codes, one_line

LABELS = ["billing", "shipping", "technical"]


def _checker_extract(messages: list[dict[str, str]]) -> str:
    """What the external acceptance checker's fake server reads as the text."""
    prompt = "\n".join(str(m.get("content", "")) for m in messages)
    start = prompt.find("ticket ")
    return prompt[start:].split("\n")[0] if start >= 0 else prompt


@pytest.mark.parametrize("method,multi", [("json", False), ("json", True), ("logprobs", False)])
def test_text_is_found_by_the_acceptance_checker(method: str, multi: bool) -> None:
    """The text sits on one line of its own after instructions free of 'ticket ' (external checker contract)."""
    text = "ticket 7: my invoice\nis wrong\r\nagain"
    messages = build_messages(text, LABELS, multi_label=multi, method=method)
    assert _checker_extract(messages) == "ticket 7: my invoice is wrong again"
    assert "ticket" not in messages[0]["content"]


def test_user_message_layout() -> None:
    """The user message is the prefix line then the text on exactly one line."""
    messages = build_messages("a\nb", LABELS, multi_label=False, method="json")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == "Text to classify:\na b"


def test_one_line_replaces_every_line_break() -> None:
    """CR, LF, vertical tab, form feed and unicode line separators all become spaces."""
    assert one_line("a\r\nb\nc\u2028d\x0be\x0cf") == "a b c d e f"


def test_json_prompt_lists_labels_and_asks_for_exact_keys() -> None:
    """A multi-class JSON prompt lists each label and asks for a JSON object keyed by label name."""
    system = build_messages("x", LABELS, multi_label=False, method="json")[0]["content"]
    assert "Labels:\n- billing\n- shipping\n- technical\n\n" in system
    assert "JSON object whose keys are exactly the label names" in system
    assert "sum to 1" in system and "multi-class" in system


def test_multi_label_prompt_asks_for_independent_scores() -> None:
    """A multi-label prompt says each label is judged independently and scores need not sum to 1."""
    system = build_messages("x", LABELS, multi_label=True, method="json")[0]["content"]
    assert "independently" in system and "need not sum to 1" in system and "multi-label" in system


def test_logprobs_prompt_with_codes_lists_codes() -> None:
    """With codes, labels are listed as 'A: name' and the answer asked for is one code letter."""
    labels = ["tech support", "technical", "billing"]
    system = build_messages("x", labels, multi_label=False, method="logprobs", use_codes=True)[0]["content"]
    assert "Labels:\nA: tech support\nB: technical\nC: billing\n\n" in system
    assert "code letter of the correct label (A, B, C)" in system


def test_logprobs_prompt_rejects_multi_label() -> None:
    """Logprobs prompts exist for multi-class only."""
    with pytest.raises(ValueError, match="multi-class tasks only"):
        build_messages("x", LABELS, multi_label=True, method="logprobs")


@pytest.mark.parametrize("labels,expected", [
    (["billing", "shipping", "technical"], False),
    (["tech support", "technical"], True),      # same first 3 characters
    (["art", "arts"], True),                    # one is a prefix of the other
    (["Positive", "positive-ish"], True),       # case-insensitive
    (["bill", "bug"], False),
])
def test_labels_need_codes(labels: list[str], expected: bool) -> None:
    """Codes are used exactly when two labels could share a first token."""
    assert labels_need_codes(labels) is expected


def test_label_codes_are_letters_in_order() -> None:
    """Codes are A, B, C, ... in label order."""
    assert label_codes(["x", "y", "z"]) == ["A", "B", "C"]


def test_fake_server_reads_back_what_the_prompt_says() -> None:
    """The test server's independent parser recovers text, labels, codes and task."""
    messages = build_messages("hi\nthere", ["tech support", "technical"], multi_label=False, method="logprobs",
                              use_codes=True)
    prompt = parse_prompt(messages)
    assert (prompt.text, prompt.labels, prompt.codes, prompt.multi_label) == (
        "hi there", ["tech support", "technical"], ["A", "B"], False)
    multi = parse_prompt(build_messages("t", LABELS, multi_label=True, method="json"))
    assert (multi.labels, multi.codes, multi.multi_label) == (LABELS, None, True)
