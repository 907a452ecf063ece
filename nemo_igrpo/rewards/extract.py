"""Final-answer extraction from a model response: the last ``\\boxed{...}`` or ``<answer>...</answer>``.

Model outputs are untrusted and can be huge (a runaway generation, an adversarial string), so every function here
does bounded work: a few reverse searches plus at most ``MAX_CANDIDATES`` forward scans of at most
``MAX_ANSWER_CHARS`` characters each, independent of how many boxes the text contains.
"""

from __future__ import annotations

import re

# An answer longer than this is not a final answer but a runaway generation; it is treated as absent. Real final
# answers of math problems are a few dozen characters; 10k leaves room for long tuples and matrices.
MAX_ANSWER_CHARS = 10_000
# How many of the last box commands are tried when the last one is unterminated (e.g. a truncated generation).
MAX_CANDIDATES = 4

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


def extract_answer(text: str, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """The final answer in ``text``: the content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed X`` or of
    the last ``<answer>...</answer>`` tag, whichever ends later. A box inside the chosen answer tag wins over the
    tag's surrounding prose. Returns None when there is no answer, it is empty, or it is longer than ``max_chars``."""
    if not isinstance(text, str) or not text:
        return None
    box = _last_box(text, max_chars)
    tag = _last_answer_tag(text, max_chars)
    if tag is not None and (box is None or tag[2] > box[2]):
        inner = _last_box(tag[0], max_chars)
        content = inner[0] if inner is not None else tag[0]
    elif box is not None:
        content = box[0]
    else:
        return None
    content = content.strip()
    if not content or len(content) > max_chars:
        return None
    return content


def has_answer_section(text: str) -> bool:
    """True if ``text`` contains a non-empty final answer (a box or an answer tag)."""
    return extract_answer(text) is not None
