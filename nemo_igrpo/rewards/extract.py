"""Final-answer extraction from a model response (the ``boxed`` policy): the last run of ``\\boxed{...}`` or the last
``<answer>...</answer>``, and the same reduction for gold answers written as whole solutions.

A final answer with several parts is often written as several boxes (``\\boxed{-2} \\quad\\text{and}\\quad
\\boxed{1}``, ``\\boxed{(2, 2)}, \\boxed{(6, 2)}``). Those boxes are one answer: walking back from the last box, an
earlier box belongs to the same run when the text between the two is shorter than ``RUN_GAP_CHARS``, or shorter than
``RUN_SEPARATED_GAP_CHARS`` and contains "and", "or", a comma or a semicolon (the rule math-verify applies through
latex2sympy2_extended's box extraction, so that both graders see the same answer). A box whose content repeats the
box after it is counted once. The parts are joined with ``", "``, which math-verify reads as a set.

Model outputs are untrusted and can be huge (a runaway generation, an adversarial string), so every function here
does bounded work: a few reverse searches in windows of bounded size plus at most ``MAX_CANDIDATES`` + ``MAX_RUN``
forward scans of at most ``MAX_ANSWER_CHARS`` characters each, independent of how many boxes the text contains.
"""

from __future__ import annotations

import re

# An answer longer than this is not a final answer but a runaway generation; it is treated as absent. Real final
# answers of math problems are a few dozen characters; 10k leaves room for long tuples and matrices.
MAX_ANSWER_CHARS = 10_000
# How many of the last box commands are tried when the last one is unterminated (e.g. a truncated generation).
MAX_CANDIDATES = 4
# Box-run grouping (see the module docstring): gaps always joined, gaps joined when they hold a separator, and the
# most boxes looked at for one answer (longer runs keep their last MAX_RUN boxes).
RUN_GAP_CHARS = 10
RUN_SEPARATED_GAP_CHARS = 70
MAX_RUN = 32
_SEPARATOR = re.compile(r"\b(?:and|or)\b|[,;]")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
# `\boxed 5`: TeX would take one token, but models mean the whole number/word that follows.
_BARE_ARG = re.compile(r"[^\s$\\{}]+")


def _scan_braced(text: str, open_pos: int, limit: int) -> int | None:
    """Index of the brace closing the one at ``open_pos``, or None if it is not closed within ``limit`` chars."""
    depth = 0
    end = min(len(text), open_pos + limit + 2)
    i = open_pos
    while i < end:
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped brace `\{` does not count
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _box_argument(text: str, cmd_end: int, limit: int) -> tuple[str, int] | None:
    """The argument of a box command ending at ``cmd_end`` and the index just past it, or None if malformed."""
    if text[cmd_end:cmd_end + 1].isalpha():
        return None  # `\boxedfoo` is another macro, not a box
    i = cmd_end
    stop = min(len(text), cmd_end + 64)  # bounded: `\boxed` followed by a megabyte of spaces is not an answer
    while i < stop and text[i] in " \t":
        i += 1
    if text[i:i + 1] == "{":
        close = _scan_braced(text, i, limit)
        if close is None:
            return None
        return text[i + 1:close], close + 1
    m = _BARE_ARG.match(text, i, min(len(text), i + limit))
    if m is None:
        return None
    return m.group(0).rstrip(".,;:"), m.end()


def _last_box(text: str, limit: int) -> tuple[str, int, int] | None:
    """(content, start, end) of the last well-formed box command in ``text``."""
    # Collect the last few command positions across both spellings, latest first.
    positions: list[tuple[int, str]] = []
    for cmd in _BOX_COMMANDS:
        hi = len(text)
        for _ in range(MAX_CANDIDATES):
            pos = text.rfind(cmd, 0, hi)
            if pos < 0:
                break
            positions.append((pos, cmd))
            hi = pos
    positions.sort(reverse=True)
    for pos, cmd in positions[:MAX_CANDIDATES]:
        arg = _box_argument(text, pos + len(cmd), limit)
        if arg is not None:
            return arg[0], pos, arg[1]
    return None


def _last_answer_tag(text: str, limit: int) -> tuple[str, int, int] | None:
    """(content, start, end) of the last closed ``<answer>...</answer>`` whose content fits in ``limit``."""
    close = text.rfind(_ANSWER_CLOSE)
    if close < 0:
        return None
    # Only the window just before the closing tag can hold an answer that fits.
    lo = max(0, close - limit - len(_ANSWER_OPEN))
    open_ = text.rfind(_ANSWER_OPEN, lo, close)
    if open_ < 0:
        return None
    return text[open_ + len(_ANSWER_OPEN):close], open_, close + len(_ANSWER_CLOSE)


def _previous_box(text: str, before: int, limit: int) -> tuple[str, int, int] | None:
    """(content, start, end) of the box command closest before ``before`` if it is well formed and ends at or
    before ``before`` (not an enclosing box), else None. Searches a bounded window only."""
    lo = max(0, before - RUN_SEPARATED_GAP_CHARS - limit - 16)
    pos, cmd = max((text.rfind(c, lo, before), c) for c in _BOX_COMMANDS)
    if pos < 0:
        return None
    arg = _box_argument(text, pos + len(cmd), limit)
    if arg is None or arg[1] > before:
        return None
    return arg[0], pos, arg[1]


def _box_run(text: str, last: tuple[str, int, int], limit: int) -> tuple[list[str], int]:
    """The contents of the run of boxes ending with ``last`` (in order), and the run's start index."""
    parts = [last[0].strip()]
    start = last[1]
    for _ in range(MAX_RUN - 1):  # bounded in boxes looked at, repeats included
        prev = _previous_box(text, start, limit)
        if prev is None:
            break
        content, pos, end = prev[0].strip(), prev[1], prev[2]
        gap = text[end:start]
        if not content:
            break
        if len(gap) < RUN_GAP_CHARS:
            pass
        elif not (len(gap) < RUN_SEPARATED_GAP_CHARS and content != parts[-1] and _SEPARATOR.search(gap)):
            break
        if content != parts[-1]:
            parts.append(content)
        start = pos
    parts.reverse()
    return parts, start


def final_answer_parts(text: str, max_chars: int = MAX_ANSWER_CHARS) -> list[str] | None:
    """The parts of the final answer in ``text``: the contents of the last run of ``\\boxed{...}`` /
    ``\\fbox{...}`` / ``\\boxed X``, or the content of the last ``<answer>...</answer>`` tag, whichever ends later
    (a box run inside the chosen tag wins over the tag's prose). None when there is no answer or it is empty."""
    if not isinstance(text, str) or not text:
        return None
    box = _last_box(text, max_chars)
    tag = _last_answer_tag(text, max_chars)
    if tag is not None and (box is None or tag[2] > box[2]):
        inner = _last_box(tag[0], max_chars)
        parts = _box_run(tag[0], inner, max_chars)[0] if inner is not None else [tag[0].strip()]
    elif box is not None:
        parts = _box_run(text, box, max_chars)[0]
    else:
        return None
    parts = [p for p in parts if p]
    return parts or None


def join_parts(parts: list[str]) -> str:
    """One answer string from its parts; ``", "`` (with the space) is read as a list separator by math-verify,
    never as a thousands separator."""
    return ", ".join(parts)


def extract_answer(text: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """The final answer in ``text`` as one string (``final_answer_parts`` joined by ``join_parts``). Returns None
    when there is no answer, it is empty, or it is longer than ``max_chars``."""
    parts = final_answer_parts(text, max_chars)
    if parts is None:
        return None
    content = join_parts(parts)
    if len(content) > max_chars:
        return None
    return content


def reduce_gold(gold: str, max_chars: int = MAX_ANSWER_CHARS) -> str:
    """A gold answer as the grader compares it: a whole solution (MATH's ``solution`` field, anything holding a
    ``\\boxed{}``) is reduced to its final answer exactly as a response is; any other gold is returned stripped."""
    gold = str(gold).strip()
    if "\\boxed" in gold or "\\fbox" in gold:
        answer = extract_answer(gold, max_chars)
        if answer is not None:
            return answer
    return gold


def has_answer_section(text: str) -> bool:
    """True if ``text`` contains a non-empty final answer (a box or an answer tag)."""
    return extract_answer(text) is not None
