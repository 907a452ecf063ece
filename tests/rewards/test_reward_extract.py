import time

import pytest

from nemo_igrpo.rewards.extract import extract_answer
from nemo_igrpo.rewards.format_reward import format_reward


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} and finally \\boxed{3}", "3"),
    ("nested \\boxed{\\frac{a}{b^{2}}}", "\\frac{a}{b^{2}}"),
    ("escaped braces \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\fbox{7}", "7"),
    ("bare: $\\boxed 42$.", "42"),
    ("bare at end \\boxed 5.", "5"),
    ("space before brace \\boxed  {8}", "8"),
    ("<answer> 4 </answer> then \\boxed{9}", "9"),
    ("\\boxed{9} then <answer>4</answer>", "4"),
    ("<answer>the answer is \\boxed{5}.</answer>", "5"),
    ("\\boxed{1} and a truncated \\boxed{2", "1"),
    ("\\boxed{}", None),
    ("\\boxedfoo{3}", None),
    ("<answer>5", None),
    ("no answer here", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_is_bounded_on_huge_inputs():
    huge = [
        "\\boxed{" * 200_000,                        # many unterminated boxes
        "x" * 2_000_000 + "\\boxed{" + "{" * 500_000,  # one box that never closes
        "<answer>" + "7" * 1_000_000 + "</answer>",  # answer far beyond the length cap
        "\\boxed " + " " * 1_000_000 + "5",
    ]
    t0 = time.perf_counter()
    for text in huge:
        assert extract_answer(text) is None
    assert time.perf_counter() - t0 < 2.0
    assert extract_answer("y" * 3_000_000 + "\\boxed{12}") == "12"


@pytest.mark.parametrize("text, expected", [
    ("<think>reasoning</think>\nThe answer is \\boxed{5}.", 1.0),
    ("  <think>r</think><answer>5</answer>", 1.0),
    ("<think>r</think>", 0.0),                            # no answer section
    ("<think>r</think> \\boxed{}", 0.0),                  # empty answer
    ("<think>r \\boxed{5}</think> done", 0.0),            # answer only inside the reasoning
    ("preamble <think>r</think> \\boxed{5}", 0.0),        # text before <think>
    ("<think>a</think><think>b</think> \\boxed{5}", 0.0),  # two reasoning blocks
    ("<think></think> \\boxed{5}", 0.0),                  # empty reasoning
    ("\\boxed{5}", 0.0),
])
def test_format_reward(text, expected):
    assert format_reward(text) == expected


def test_format_reward_think_opened_in_prompt():
    assert format_reward("reasoning</think> \\boxed{5}", think_opened_in_prompt=True) == 1.0
    assert format_reward("<think>reasoning</think> \\boxed{5}", think_opened_in_prompt=True) == 0.0
    assert format_reward("reasoning \\boxed{5}", think_opened_in_prompt=True) == 0.0
