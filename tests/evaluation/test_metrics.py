"""Metrics against values computed by hand (explicit combinatorics, explicit arithmetic)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from nemo_igrpo.evaluation import metrics as M


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    hit = sum(any(i < c for i in s) for s in subsets)
    return hit / len(subsets)


@pytest.mark.parametrize("n,c,k", [(4, 1, 1), (4, 1, 2), (5, 2, 3), (6, 0, 2), (6, 6, 3), (8, 3, 4), (7, 5, 3)])
def test_pass_at_k_equals_enumeration(n, c, k):
    assert M.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k), abs=1e-12)


def test_pass_at_k_binomial_formula_large_n():
    # 1 - C(n-c, k)/C(n, k) with exact integers, versus the stable product.
    for n, c, k in [(64, 1, 16), (64, 10, 4), (64, 32, 64), (64, 3, 64), (100, 7, 50)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert M.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_edges_and_errors():
    assert M.pass_at_k(64, 0, 64) == 0.0
    assert M.pass_at_k(64, 1, 64) == 1.0
    assert M.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    with pytest.raises(ValueError):
        M.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        M.pass_at_k(4, 1, 5)
    assert M.pass_at_k_ks(64) == [1, 4, 16, 64]
    assert M.pass_at_k_ks(8) == [1, 4, 8]
    assert M.pass_at_k_ks(2) == [1, 2]


def test_avg_at_k_stderr_and_ci():
    correct = [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    # per-problem means 0.5, 0.25, 0, 1 -> mean 0.4375
    # deviations .0625 -.1875 -.4375 .5625; squares .00390625 .03515625 .19140625 .31640625 = .546875
    # var (ddof 1) = .546875/3 = .18229166..; stderr = sqrt(var/4)
    r = M.avg_at_k(correct)
    assert r.mean == pytest.approx(0.4375)
    se = math.sqrt(0.546875 / 3 / 4)
    assert r.stderr == pytest.approx(se)
    assert r.ci95_low == pytest.approx(0.4375 - 1.959963984540054 * se)
    assert r.ci95_high == pytest.approx(0.4375 + 1.959963984540054 * se)
    one = M.avg_at_k([[1, 0]])
    assert (one.mean, one.stderr, one.ci95_low, one.ci95_high) == (0.5, 0.0, 0.5, 0.5)
    # The CI is clipped to [0, 1].
    # mean .75, stderr .25 -> 1.24 before clipping.
    assert M.avg_at_k([[1], [1], [1], [0]]).ci95_high == 1.0
    assert M.avg_at_k([[0], [0], [0], [1]]).ci95_low == 0.0


def test_normalize_equivalent_forms():
    half = M.normalize_answer("1/2")
    for form in ["0.5", "\\frac{1}{2}", "\\dfrac{1}{2}", "\\frac12", "0.50", " $0.5$ ", "1/2."]:
        assert M.normalize_answer(form) == half, form
    assert M.normalize_answer("1,000") == M.normalize_answer("1000")
    assert M.normalize_answer("1,2") != M.normalize_answer("12")  # a tuple, not a thousands separator
    assert M.normalize_answer("-\\frac{3}{4}") == M.normalize_answer("-0.75")
    assert M.normalize_answer("\\text{ x+1 }") == M.normalize_answer("x + 1")
    assert M.normalize_answer(None) is None and M.normalize_answer("  ") is None


def test_maj_at_k_equivalent_answers_vote_together():
    # "1/2" and "0.5" are one answer with 3 votes; "2" has 2 votes; None does not vote.
    answers = ["2", "1/2", "0.5", "2", "\\frac{1}{2}", None]
    correct = [0, 1, 1, 0, 1, 0]
    vote = M.majority_vote(answers, correct)
    assert (vote.answer, vote.votes, vote.correct, vote.num_groups) == ("1/2", 3, True, 2)
    # As a string vote, "2" (2 votes) would have beaten each single spelling of one half.
    assert M.majority_vote(answers, correct, key=lambda a: a).answer == "2"


def test_maj_at_k_ties_go_to_first_seen_answer():
    assert M.majority_vote(["7", "3", "3", "7"], [0, 1, 1, 0]).answer == "7"
    assert M.majority_vote(["3", "7", "7", "3"], [1, 0, 0, 1]).answer == "3"
    assert M.majority_vote([None, None], [0, 0]).answer is None


def test_maj_at_k_over_problems_and_custom_equivalence():
    answers = [["1", "1", "2"], ["5", "4", "4"], [None, None, "9"]]
    correct = [[1, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert M.maj_at_k(answers, correct) == pytest.approx(2 / 3)
    # A custom equivalence (what a math-verify comparison would plug in): 4 == 5 here, so problem 2 gets 3 votes
    # for "5", which was graded correct once and wrong twice -> the group is wrong by majority.
    eq = lambda a, b: {a, b} <= {"4", "5"} or a == b  # noqa: E731
    assert M.maj_at_k(answers, correct, equivalent=eq) == pytest.approx(2 / 3)


def test_summarize_keys_and_values():
    correct = [[1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]]
    answers = [["1", "2", "3", "3", "4", "5", "6", "7"], ["9"] * 4 + ["8"] * 4]
    s = M.summarize(correct, answers)
    assert s["num_problems"] == 2 and s["k"] == 8
    assert s["avg@k"] == pytest.approx((1 / 8 + 4 / 8) / 2)
    assert s["maj@k"] == pytest.approx(0.5)  # p1 majority "3" is wrong; p2 tie 9 vs 8 -> "9" (first) is right
    assert set(k for k in s if k.startswith("pass@")) == {"pass@1", "pass@4", "pass@8"}
    assert s["pass@8"] == 1.0
    p4 = (_pass_at_k_by_enumeration(8, 1, 4) + _pass_at_k_by_enumeration(8, 4, 4)) / 2
    assert s["pass@4"] == pytest.approx(p4)
    assert s["per_problem_accuracy"] == [0.125, 0.5]
