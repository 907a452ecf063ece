"""Evaluation metrics over per-problem samples: avg@k, maj@k, unbiased pass@k, and the uncertainty of avg@k.

Pure Python (no torch, no numpy) so that it can be imported and unit-tested anywhere, and so that the numbers do not
depend on a backend. Inputs are per-problem lists: ``correct[i][j]`` is whether sample ``j`` of problem ``i`` was graded
correct, ``answers[i][j]`` is the answer extracted from it (``None`` when none was found).

Definitions (the same as docs/evaluation.md):

- **avg@k**: for each problem, the fraction of its ``k`` samples that are correct (an unbiased estimate of pass@1 at the
  sampling temperature); averaged over problems. This is what the iGRPO paper and NeMo-Skills report as "pass@1
  (avg of k)".
- **stderr of avg@k**: sample standard deviation (ddof = 1) of the per-problem means divided by sqrt(#problems). It
  measures how much the score would move with a different draw of problems from the same distribution *and* of
  samples, which is the uncertainty that matters when comparing two checkpoints on 30 AIME problems. The 95% CI is the
  normal approximation ``mean +- 1.96 * stderr`` clipped to [0, 1].
- **maj@k**: for each problem, the extracted answers of the ``k`` samples vote; equivalent answers vote together; the
  problem counts as solved when the winning answer is correct. Averaged over problems.
- **pass@k** (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): with ``n`` samples of which ``c``
  are correct, ``1 - C(n - c, k) / C(n, k)`` is the unbiased estimate of the probability that at least one of ``k``
  samples is correct. Reported for k in (1, 4, 16, 64) where ``n >= k``, and for k = n.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Hashable, Sequence

# The k of pass@k reported by default: powers of 4 up to the AIME sample count, plus n itself (see pass_at_k_table).
DEFAULT_PASS_KS: tuple[int, ...] = (1, 4, 16, 64)
# Two-sided 95% quantile of the standard normal distribution.
Z_95 = 1.959963984540054


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``.

    Evaluated as the product ``prod_{i=n-c+1}^{n} (1 - k / i)`` which equals the ratio of binomials but never forms
    them: ``C(64, 32)`` is ~1.8e18 and the ratio of two such numbers loses precision in floating point, while the
    product of ``c`` factors in (0, 1] is stable.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        # Every subset of k samples contains a correct one.
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def pass_at_k_ks(n: int, ks: Sequence[int] = DEFAULT_PASS_KS) -> list[int]:
    """The k values reported for ``n`` samples per problem: those of ``ks`` with ``k <= n``, plus ``n`` itself (so
    that a k = 8 evaluation reports pass@8, the "any sample correct" rate)."""
    return sorted({k for k in ks if 1 <= k <= n} | ({n} if n >= 1 else set()))


def per_problem_means(correct: Sequence[Sequence[bool | float]]) -> list[float]:
    """The fraction of correct samples of each problem; a problem without samples is an error (it has no estimate)."""
    means = []
    for i, samples in enumerate(correct):
        if len(samples) == 0:
            raise ValueError(f"problem {i} has no samples")
        means.append(sum(float(x) for x in samples) / len(samples))
    return means


@dataclass
class MeanWithError:
    """A mean over problems with its standard error and 95% confidence interval."""

    mean: float
    stderr: float
    ci95_low: float
    ci95_high: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "stderr": self.stderr, "ci95": [self.ci95_low, self.ci95_high], "n": self.n}


def mean_with_error(values: Sequence[float], lo: float = 0.0, hi: float = 1.0) -> MeanWithError:
    """Mean, standard error (sample std with ddof = 1 over sqrt(n)) and the normal-approximation 95% CI clipped to
    ``[lo, hi]``. With one value the spread is unknown: stderr is 0 and the CI collapses to the mean (reported as such,
    rather than NaN, so that a one-problem smoke run still writes a table)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_with_error of no values")
    mean = sum(values) / n
    if n == 1:
        stderr = 0.0
    else:
        var = sum((v - mean) ** 2 for v in values) / (n - 1)
        stderr = math.sqrt(var / n)
    half = Z_95 * stderr
    return MeanWithError(mean, stderr, max(lo, mean - half), min(hi, mean + half), n)


def avg_at_k(correct: Sequence[Sequence[bool | float]]) -> MeanWithError:
    """avg@k: mean over problems of the per-problem fraction correct, with its standard error and 95% CI."""
    return mean_with_error(per_problem_means(correct))


def mean_pass_at_k(correct: Sequence[Sequence[bool | float]], k: int) -> float | None:
    """pass@k averaged over the problems that have at least ``k`` samples; None when no problem has."""
    values = [pass_at_k(len(s), int(sum(bool(x) for x in s)), k) for s in correct if len(s) >= k]
    return sum(values) / len(values) if values else None


# --- answer normalisation for majority voting -------------------------------------------------------------------------

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_SLASH_FRACTION = re.compile(r"^([+-]?\d+)/([+-]?\d+)$")
_TEX_FRACTION = re.compile(r"^([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_TEX_FRACTION_SHORT = re.compile(r"^([+-]?)\\[dt]?frac(\d)(\d)$")  # \frac12
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
# Thousands separators: "1,000" and "1{,}000" but not the tuple "1,2".
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$")


def normalize_answer(answer: str | None) -> Hashable | None:
    """A voting key for an extracted answer: equal keys vote together.

    Numbers are compared by value (``"1/2"``, ``"0.5"``, ``"\\frac{1}{2}"``, ``"\\dfrac12"`` and ``"0.50"`` all map to
    ``Fraction(1, 2)``; ``"1,000"`` to 1000), everything else by a whitespace- and wrapper-insensitive string
    (``$``, ``\\left``/``\\right``, ``\\text{}``, ``\\!``, a trailing period and the degree sign dropped). This is a
    cheap, deterministic, in-process approximation of math-verify equivalence: it covers the integer answers of
    AIME and common fraction/decimal forms. Use ``majority_vote(..., equivalent=...)`` with a math-verify comparison
    for symbolic answers. ``None`` (no answer, or an empty one) does not vote.
    """
    if answer is None:
        return None
    s = str(answer).strip()
    for token in ("$", "\\left", "\\right", "\\!", "\\,", "\\;", "\\ ", "{,}", "^\\circ", "^{\\circ}", "\\%", "%"):
        s = s.replace(token, "," if token == "{,}" else "")
    s = _TEXT_WRAPPER.sub(r"\1", s)
    s = "".join(s.split()).rstrip(".")
    if not s:
        return None
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    value = _to_fraction(s)
    if value is not None:
        return ("num", value)
    return ("str", s.lower())


def _to_fraction(s: str) -> Fraction | None:
    """The exact rational value of a plain number or a numeric fraction, or None."""
    if _NUMBER.match(s):
        return Fraction(s)
    m = _SLASH_FRACTION.match(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    m = _TEX_FRACTION.match(s) or _TEX_FRACTION_SHORT.match(s)
    if m and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return -value if m.group(1) == "-" else value
    return None


@dataclass
class Vote:
    """The outcome of one problem's majority vote."""

    answer: str | None  # the winning answer as first written (None: no sample had an answer)
    votes: int  # size of the winning group
    correct: bool  # whether the winning group's samples were graded correct
    num_groups: int  # distinct answers (after equivalence)


def majority_vote(
    answers: Sequence[str | None],
    correct: Sequence[bool | float],
    key: Callable[[str | None], Hashable | None] = normalize_answer,
    equivalent: Callable[[str, str], bool] | None = None,
) -> Vote:
    """Majority vote over one problem's extracted answers.

    Grouping: by ``key`` (default ``normalize_answer``), or, when ``equivalent`` is given, greedily: each answer joins
    the first earlier group whose first answer is ``equivalent`` to it (e.g. a math-verify comparison run in a worker).
    Samples whose key is None do not vote.

    Ties (equal group sizes) go to the group whose first member came first in sample order: deterministic, independent
    of hashing, and it favours nothing but sample index, which is itself fixed by the seed.

    A group is "correct" when the majority of its members were graded correct; members of one equivalence group
    almost always agree, and the majority keeps a single grader disagreement from flipping the result.
    """
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness flags")
    groups: list[list[int]] = []  # sample indices, in order of first appearance
    by_key: dict[Hashable, int] = {}
    for j, ans in enumerate(answers):
        k = key(ans)
        if k is None:
            continue
        if equivalent is None:
            g = by_key.get(k)
        else:
            g = next((gi for gi, members in enumerate(groups) if equivalent(answers[members[0]], ans)), None)
        if g is None:
            g = len(groups)
            groups.append([])
            by_key[k] = g
        groups[g].append(j)
    if not groups:
        return Vote(answer=None, votes=0, correct=False, num_groups=0)
    # max() keeps the first maximal element, i.e. the earliest-appearing group among equal sizes.
    best = max(groups, key=len)
    n_correct = sum(bool(correct[j]) for j in best)
    return Vote(answer=answers[best[0]], votes=len(best), correct=2 * n_correct > len(best), num_groups=len(groups))


def maj_at_k(
    answers: Sequence[Sequence[str | None]],
    correct: Sequence[Sequence[bool | float]],
    key: Callable[[str | None], Hashable | None] = normalize_answer,
    equivalent: Callable[[str, str], bool] | None = None,
) -> float:
    """maj@k: the fraction of problems whose majority answer is correct (see ``majority_vote``)."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} problems of answers but {len(correct)} of correctness flags")
    if not answers:
        raise ValueError("maj_at_k of no problems")
    wins = [majority_vote(a, c, key=key, equivalent=equivalent).correct for a, c in zip(answers, correct)]
    return sum(wins) / len(wins)


def summarize(
    correct: Sequence[Sequence[bool | float]],
    answers: Sequence[Sequence[str | None]] | None = None,
    ks: Sequence[int] = DEFAULT_PASS_KS,
) -> dict:
    """All metrics of one dataset as a JSON-ready dict.

    Keys: ``num_problems``, ``k`` (samples per problem; the minimum if problems differ), ``avg@k``, ``avg@k_stderr``,
    ``avg@k_ci95`` ([low, high]), ``maj@k`` (when answers are given), ``pass@<k>`` for each reported k, and
    ``per_problem_accuracy``.
    """
    if not correct:
        raise ValueError("summarize of no problems")
    k = min(len(s) for s in correct)
    avg = avg_at_k(correct)
    out: dict = {
        "num_problems": len(correct),
        "k": k,
        "avg@k": avg.mean,
        "avg@k_stderr": avg.stderr,
        "avg@k_ci95": [avg.ci95_low, avg.ci95_high],
    }
    if answers is not None:
        out["maj@k"] = maj_at_k(answers, correct)
    for kk in pass_at_k_ks(k, ks):
        out[f"pass@{kk}"] = mean_pass_at_k(correct, kk)
    out["per_problem_accuracy"] = per_problem_means(correct)
    return out
