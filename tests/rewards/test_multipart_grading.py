"""Answers with several parts or solutions, both extraction policies, and gold answers written as whole solutions.

Every expected verdict below was decided by hand from the mathematics (is the response's final answer, read as a
whole, the gold's set / tuple / value?) and from the box-grouping rule math-verify applies (docs/rewards.md), not by
running a grader.
"""

import pytest

from nemo_igrpo.data.prepare import Report, convert
from nemo_igrpo.rewards.config import GradingConfig, RewardConfig
from nemo_igrpo.rewards.math_grader import MathGrader
from nemo_igrpo.rewards.reward_fn import RewardFunction

# (gold, response, verdict with extraction="boxed", verdict with extraction="full")
MULTI_PART = [
    # sets of solutions written as several boxes
    ("\\{1, 2, 3\\}", "The solutions are \\boxed{1}, \\boxed{2}, \\boxed{3}.", 1, 1),
    ("1, 2, 3", "$\\boxed{3}$, $\\boxed{1}$ and $\\boxed{2}$", 1, 1),                  # any order
    ("\\{1, 2, 3\\}", "\\boxed{1}, \\boxed{2}", 0, 0),                                 # one solution missing
    ("2", "$x = \\boxed{2}$ or $x = \\boxed{-2}$", 0, 0),                               # an extra, wrong solution
    # "and" / "or"-joined boxes
    ("-2, 1", "n = 1 and n = -2. Thus $\\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}$", 1, 1),
    ("\\pm 3", "$\\boxed{3}$ or $\\boxed{-3}$", 1, 1),
    # tuples: a set of pairs, in any order, but each pair ordered
    ("(2, 2), (6, 2)", "$\\boxed{(2, 2)}$ and $\\boxed{(6, 2)}$", 1, 1),
    ("(6, 2), (2, 2)", "$\\boxed{(2, 2)}$ and $\\boxed{(6, 2)}$", 1, 1),
    ("(2, 2), (6, 2)", "\\boxed{(2, 2)}, \\boxed{(2, 6)}", 0, 0),
    ("(3, 4)", "$x = \\boxed{3}$, $y = \\boxed{4}$", 1, 1),                            # a pair given coordinate-wise
    # pairs of equations
    ("x = 2, y = 3", "$x = \\boxed{2}$ and $y = \\boxed{3}$", 1, 1),
    ("k = 45, n = 2", "\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}", 1, 1),
    ("k = 45, n = 2", "\\boxed{n = 2}, \\boxed{k = 45}", 1, 1),
    ("k = 45, n = 2", "\\boxed{k = 45}, \\boxed{n = 3}", 0, 0),
    # boxes split across a sentence: joined when close and separated by and/or/,/; ...
    ("(3, 3), (1, 1)", "$$\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)} \\text{ for part (b)}$$", 1, 1),
    # ... not across a long stretch of prose (the earlier box was a step, not the answer) ...
    ("5", "First \\boxed{3}. Then, after a long and careful discussion of the second case, we get \\boxed{5}", 1, 1),
    # ... nor without a separator (math-verify's rule too: only the last part is read)
    ("3, 5", "Part (a): \\boxed{3}. Part (b): \\boxed{5}.", 0, 0),
    # a single box is graded as before; a repeated box counts once
    ("\\frac{1}{2}", "\\boxed{0.5}", 1, 1),
    ("7", "So \\boxed{7}. Final answer: \\boxed{7}", 1, 1),
    ("7", "\\boxed{7}, \\boxed{7}", 1, 1),
    # no box: only math-verify's own extraction ("full") finds the answer
    ("\\frac{1}{2}", "The final answer is $\\frac{1}{2}$. I hope it is correct.", 0, 1),
    ("42", "Answer: 42", 0, 1),
    ("5", "I don't know", 0, 0),
    # "final answer is ..." outranks an earlier box for math-verify; the boxed policy reads the box
    ("10455", "so $0.05 \\cdot 10200 / 2 = \\boxed{255}$ in interest. Final Answer: The final answer is $10,455$. "
              "I hope it is correct.", 0, 1),
]

# Gold answers as datasets write them: a whole solution whose final answer is in \boxed{} (MATH's "solution").
GOLD_SOLUTIONS = [
    ("We solve and get $\\frac{3}{4}$, so the answer is $\\boxed{\\frac{3}{4}}$.", "\\boxed{0.75}", 1),
    ("Setting $f(n) = n$ gives $(n - 1)(n + 2) = 0$, so $n = \\boxed{1}$ or $n = \\boxed{-2}$.", "\\boxed{-2, 1}", 1),
    ("Setting $f(n) = n$ gives $(n - 1)(n + 2) = 0$, so $n = \\boxed{1}$ or $n = \\boxed{-2}$.", "\\boxed{1}", 0),
    ("The pairs are $\\boxed{(1, 2)}$ and $\\boxed{(2, 1)}$.", "$\\boxed{(2, 1)}$, $\\boxed{(1, 2)}$", 1),
    ("The inequality holds exactly on $\\boxed{(1, 2]}$.", "\\boxed{(1,2]}", 1),
    ("Trying $x = 3$ gives $\\boxed{9}$, which is too big. After checking every smaller case carefully, the "
     "answer is $\\boxed{4}$.", "\\boxed{4}", 1),
    ("$\\boxed{1}$ no no no no no $\\boxed{2}$", "\\boxed{1, 2}", 0),  # far apart, no separator: only the last
]


@pytest.fixture(scope="module", params=["boxed", "full"])
def grader(request):
    with MathGrader(num_workers=2, timeout_s=20.0, extraction=request.param) as g:
        yield g


def test_multi_part_answers(grader):
    column = 2 if grader.extraction == "boxed" else 3
    results = grader.grade([c[1] for c in MULTI_PART], [c[0] for c in MULTI_PART])
    wrong = [(c[0], c[1], c[column], r) for c, r in zip(MULTI_PART, results) if r.score != c[column]]
    assert not wrong, wrong
    assert not any(r.timed_out for r in results)


def test_gold_written_as_a_whole_solution(grader):
    results = grader.grade([c[1] for c in GOLD_SOLUTIONS], [c[0] for c in GOLD_SOLUTIONS])
    wrong = [(c[0], c[1], c[2], r) for c, r in zip(GOLD_SOLUTIONS, results) if r.score != c[2]]
    assert not wrong, wrong


def test_extracted_answer_reports_every_part():
    with MathGrader(num_workers=1, timeout_s=20.0) as g:
        r = g.grade(["$\\boxed{(2, 2)}$ and $\\boxed{(6, 2)}$"], ["(2,2),(6,2)"])[0]
    assert r.extracted == "(2, 2), (6, 2)" and r.score == 1.0


def test_full_mode_reports_what_math_verify_found():
    with MathGrader(num_workers=1, timeout_s=20.0, extraction="full") as g:
        r = g.grade(["Answer: 42", "nothing here"], ["42", "1"])
    assert r[0].score == 1.0 and r[0].extracted == "42"
    assert r[1].score == 0.0 and r[1].extracted is None


def test_extraction_is_a_reward_config_choice():
    cfg = RewardConfig(weights={"accuracy": 1.0}, num_workers=1, timeout_s=20.0,
                       grading=GradingConfig(extraction="full"))
    with RewardFunction(cfg) as fn:
        assert fn.grader.extraction == "full"
        out = fn(["p"], ["The final answer is $\\frac{1}{2}$. I hope it is correct."], ["0.5"])
    assert out.components["accuracy"] == [1.0]
    with pytest.raises(ValueError, match="extraction"):
        MathGrader(num_workers=1, extraction="last")


def test_prepare_data_reduces_gold_solutions():
    """prepare-data writes the same reduced gold the grader compares against."""
    items = [
        ("a.jsonl:1", {"problem": "f(n) = n?", "solution": "So $n = \\boxed{1}$ or $n = \\boxed{-2}$."}),
        ("a.jsonl:2", {"problem": "pairs?", "solution": "They are $\\boxed{(1, 2)}$ and $\\boxed{(2, 1)}$."}),
        ("a.jsonl:3", {"problem": "one?", "solution": "Only $\\boxed{5}$."}),
    ]
    rows = convert("math", iter(items), Report(), lambda answers: [True] * len(answers))
    assert [r["answer"] for r in rows] == ["1, -2", "(1, 2), (2, 1)", "5"]
    # An answer field that holds a whole solution (some mirrors of other datasets) is reduced too.
    items = [("b.jsonl:1", {"problem": "p", "answer": "Adding up, the total is $\\boxed{12}$."})]
    rows = convert("acereason", iter(items), Report(), lambda answers: [True] * len(answers))
    assert rows[0]["answer"] == "12"


def test_whole_solution_gold_is_parseable():
    with MathGrader(num_workers=1, timeout_s=20.0) as g:
        assert g.parseable(["So $n = \\boxed{1}$ or $n = \\boxed{-2}$.", "It is $\\boxed{9^{9^{9^{9}}}}$."]) == [
            True, False]


def test_config_names_a_bad_grading_option():
    from nemo_igrpo.config import ConfigError, load_config

    assert load_config(None, ["reward.grading.extraction=full"]).reward.grading.extraction == "full"
    with pytest.raises(ConfigError, match="reward.grading.extraction"):
        load_config(None, ["reward.grading.extraction=last"])
    with pytest.raises(ConfigError, match="reward.grading.hung_worker_s"):
        load_config(None, ["reward.grading.hung_worker_s=1", "reward.timeout_s=5"])
