import time

import pytest

from nemo_igrpo.rewards.extract import extract_answer, final_answer_parts, reduce_gold
from nemo_igrpo.rewards.format_reward import format_reward


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} and finally \\boxed{3}", "\\frac{1}{2}, 3"),  # close, with "and": one run
    ("first \\boxed{\\frac{1}{2}}, then much later, after a long detour of prose that goes on and on and on, \\boxed{3}", "3"),
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


@pytest.mark.parametrize("text, parts", [
    # the last run of boxes is one answer; a box is joined to the next when the gap is < 10 characters ...
    ("\\boxed{1},\\boxed{2},\\boxed{3}", ["1", "2", "3"]),
    ("$$\\boxed{(2, 2)} \\quad \\boxed{(6, 2)}$$", ["(2, 2)", "(6, 2)"]),
    # ... or < 70 characters holding "and", "or", a comma or a semicolon
    ("\\boxed{-2} \\quad\\text{and}\\quad \\boxed{1}", ["-2", "1"]),
    ("$x = \\boxed{3}$ or $x = \\boxed{-3}$.", ["3", "-3"]),
    ("\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}", ["(3, 3)", "(1, 1)"]),
    ("\\boxed{k = 45}; \\boxed{n = 2}", ["k = 45", "n = 2"]),
    # not joined: long gap without a separator, long gap with one, a repeated answer at a distance
    ("\\boxed{1} no no no no no \\boxed{2}", ["2"]),
    ("\\boxed{1}" + ", and" + " x" * 40 + " \\boxed{2}", ["2"]),
    ("\\boxed{7}, i.e. again \\boxed{7}", ["7"]),
    # a repeat right next to it is counted once
    ("\\boxed{2}, \\boxed{2}", ["2"]),
    ("\\boxed{1}, \\boxed{2}, \\boxed{2}", ["1", "2"]),
    # an enclosing box ends the run; boxes inside the answer tag; bare boxes
    ("\\boxed{1}, \\boxed{a + \\boxed{5}}", ["5"]),
    ("\\boxed{9} <answer>\\boxed{1}, \\boxed{2}</answer>", ["1", "2"]),
    ("\\boxed 3 and \\boxed 4.", ["3", "4"]),
])
def test_box_runs(text, parts):
    assert final_answer_parts(text) == parts
    assert extract_answer(text) == ", ".join(parts)


def test_box_run_is_bounded():
    text = "\\boxed{1}," * 100_000
    t0 = time.perf_counter()
    parts = final_answer_parts(text)
    assert time.perf_counter() - t0 < 1.0
    assert parts == ["1"]  # identical neighbours collapse
    many = "".join(f"\\boxed{{{i}}}," for i in range(1000))
    assert len(final_answer_parts(many)) == 32  # MAX_RUN: the last 32 boxes
    assert final_answer_parts(many)[-1] == "999"


@pytest.mark.parametrize("gold, reduced", [
    ("5", "5"),
    ("  \\frac{1}{2} ", "\\frac{1}{2}"),
    ("We have $x^2 = 4$, so $x = \\boxed{2}$.", "2"),
    ("Setting $f(n) = n$ gives $n^2 + n - 2 = 0$, so $n = \\boxed{1}$ or $n = \\boxed{-2}$.", "1, -2"),
    ("The pairs are $\\boxed{(1, 2)}$ and $\\boxed{(2, 1)}$.", "(1, 2), (2, 1)"),
    ("\\boxed{1} no no no no no \\boxed{2}", "2"),
    ("a gold with a broken \\boxed{3", "a gold with a broken \\boxed{3"),
])
def test_reduce_gold(gold, reduced):
    assert reduce_gold(gold) == reduced


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
