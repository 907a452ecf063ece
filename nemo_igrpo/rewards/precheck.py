"""Cheap rejection of answers that are obviously pathological, before they reach math-verify.

Some answers make sympy compute for minutes or exhaust memory when math-verify evaluates them: an exponent tower of
numbers (``9^{9^{9^9}}`` has about 10^8 digits at its second level already), a huge factorial, thousands of nested
brackets. Each of these would cost a full per-item time limit and a worker restart; a batch full of them (a policy
that has collapsed into emitting towers) would cost minutes per step. ``pathological_reason`` recognises them in
time linear in the answer's length (one left-to-right scan, a recursion over ``^`` chains no deeper than
``MAX_NESTING``) without evaluating anything, so they score 0 at no cost. It only rejects what no real final answer
looks like; anything else goes to math-verify under the usual per-item limits.

Thresholds (measured with math-verify 0.9 on a 2-core x86_64 machine, 2026-12): a power of numbers with 10^6 digits
(``10^{10^6}``) parses and compares in 0.2 s, 10^7 digits takes 7 s, and ``9^{9^9}`` does not finish; ``1000000!``
(5.6 million digits) takes 5.6 s.
"""

from __future__ import annotations

import math
import re

# A power of numbers or a factorial whose value would have more decimal digits than this is rejected.
MAX_VALUE_DIGITS = 1_000_000
# A bracketed base (``(1/2)^{...}``) raised to an exponent above 10 ** this is rejected: sympy evaluates a rational
# base exactly, and any base other than 0 and +-1 then has more than MAX_VALUE_DIGITS digits.
MAX_GROUP_EXPONENT_LOG10 = 7
# Deeper bracket nesting than this is rejected (math-verify's parser recurses per level; real answers nest < 10).
MAX_NESTING = 100
# A run of more digits than this cannot be converted by Python's int() (its default limit is 4300 digits), so
# math-verify can only fail on it, slowly.
MAX_DIGIT_RUN = 4300

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# Anchored at the start of a digit run (the look-behind), so that a long run is scanned once, not once per digit.
_LONG_DIGITS = re.compile(r"(?<!\d)\d{%d,}" % (MAX_DIGIT_RUN + 1))
_FACTORIAL = re.compile(r"(?<!\d)(\d+)\s*!")
_SPACES = " \t\n"
_OPEN = "{(["
_CLOSE = "})]"


def _skip(s: str, i: int) -> int:
    while i < len(s) and s[i] in _SPACES:
        i += 1
    return i


def _magnitude(s: str, i: int, depth: int) -> tuple[float | None, int]:
    """log10 of the absolute value of the number or numeric power chain starting at ``s[i]`` (``a``, ``a^b``,
    ``a^{...}``, right-associative), and the index after it. None as the value when the chain is not made only of
    numbers (a symbol in an exponent): such an expression is not evaluated by sympy and is left alone."""
    if depth > MAX_NESTING:
        return math.inf, i  # a chain of more than MAX_NESTING powers of numbers
    m = _NUMBER.match(s, i)
    if m is None:
        return None, i
    base = float(m.group(0))
    # 0 and 1 stay small under any power; treat both as magnitude 0 (value <= 1).
    log_base = abs(math.log10(base)) if base > 0 else 0.0
    j = _skip(s, m.end())
    if j >= len(s) or s[j] != "^":
        return log_base, j
    exp_log, end = _exponent(s, j + 1, depth + 1)
    if exp_log is None:
        return None, end
    if log_base == 0.0:
        return 0.0, end
    # log10(base ** exponent) = exponent * log10(base), with exponent = 10 ** exp_log; capped to stay a float.
    return 10.0 ** min(exp_log, 300.0) * log_base, end


def _exponent(s: str, j: int, depth: int) -> tuple[float | None, int]:
    """``_magnitude`` of the exponent that starts at ``s[j]``, just after a ``^``: a braced group or a number."""
    j = _skip(s, j)
    if j < len(s) and s[j] == "{":
        k = _skip(s, j + 1)
        if k < len(s) and s[k] == "-":  # the size of 2^{-n} is that of 2^{n}
            k = _skip(s, k + 1)
        exp_log, k = _magnitude(s, k, depth)
        k = _skip(s, k)
        if exp_log is None or k >= len(s) or s[k] != "}":
            return None, k
        return exp_log, k + 1
    return _magnitude(s, j, depth)


def _max_nesting(s: str) -> int:
    depth = best = 0
    for ch in s:
        if ch in _OPEN:
            depth += 1
            best = max(best, depth)
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
    return best


def pathological_reason(answer: str) -> str | None:
    """Why ``answer`` is rejected without grading, or None if it may be graded. Linear time, evaluates nothing."""
    if _max_nesting(answer) > MAX_NESTING:
        return f"nested deeper than {MAX_NESTING} brackets"
    if _LONG_DIGITS.search(answer):
        return f"a number with more than {MAX_DIGIT_RUN} digits"
    for m in _FACTORIAL.finditer(answer):
        n = int(m.group(1)) if len(m.group(1)) < 12 else 10**12
        if n > 3 and math.lgamma(n + 1) / math.log(10) > MAX_VALUE_DIGITS:
            return f"a factorial with more than {MAX_VALUE_DIGITS} digits"
    i = answer.find("^")
    while i >= 0:
        # What stands right before this `^`: a number starts a chain judged as a whole; a bracketed group (such as
        # `(1/2)` or `\\left(\\frac{1}{2}\\right)`) is judged by its exponent alone.
        j = i
        while j > 0 and answer[j - 1] in _SPACES:
            j -= 1
        k = j
        while k > 0 and (answer[k - 1].isdigit() or answer[k - 1] == "."):
            k -= 1
        if k < j:
            log_value, end = _magnitude(answer, k, 0)
            if log_value is not None and log_value > MAX_VALUE_DIGITS:
                return f"a power with more than {MAX_VALUE_DIGITS} digits"
        else:
            # Any base: an exponent that is itself a huge number is computed first. A bracketed base (a rational
            # such as `(1/2)` is evaluated exactly) must also stay below a modest exponent.
            exp_log, _ = _exponent(answer, i + 1, 1)
            if exp_log is not None and exp_log > MAX_VALUE_DIGITS:
                return f"an exponent with more than {MAX_VALUE_DIGITS} digits"
            if j > 0 and answer[j - 1] in _CLOSE and exp_log is not None and exp_log > MAX_GROUP_EXPONENT_LOG10:
                return f"a bracketed base raised to a power above 10^{MAX_GROUP_EXPONENT_LOG10}"
            end = i + 1  # the exponent may hold chains of its own
        i = answer.find("^", max(end, i + 1))
    return None
