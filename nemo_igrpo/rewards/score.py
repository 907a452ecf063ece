"""``igrpo score``: grade a JSONL file of responses offline with the training reward (accuracy + format).

Input: one JSON object per line with ``response`` and ``answer`` strings (``problem`` optional; blank lines are
skipped). Output: each input object plus ``reward``, ``accuracy``, ``format`` and ``extracted_answer``, one per line,
to ``--output`` or stdout. The whole input, and the output path, are validated before any grading; a malformed line
is reported with the file name and line number (exit code 2).

Results are written as they are graded (``CHUNK`` lines at a time) to ``OUTPUT.partial``, which is renamed to
``OUTPUT`` when every line is done: an interrupted run never leaves a half-written ``OUTPUT``, and running the same
command again continues after the lines already in ``OUTPUT.partial`` instead of grading them again. Strings that are
valid JSON but not valid UTF-8 (a lone surrogate such as ``"\ud800"``) are written back escaped, as JSON allows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from nemo_igrpo.errors import UserError
from nemo_igrpo.rewards.config import GradingConfig, RewardConfig
from nemo_igrpo.rewards.math_grader import EXTRACTION_MODES


# Lines graded between two writes of the output.
CHUNK = 256
_ADDED_KEYS = ("reward", "accuracy", "format", "extracted_answer")


class InputError(UserError, ValueError):
    """A malformed input line, or an unusable input or output path; the message names the file (and line)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``score`` subcommand."""
    p = subparsers.add_parser("score", help="grade a JSONL file of responses (math-verify accuracy + format)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="JSONL with 'response' and 'answer' (optional 'problem')")
    p.add_argument("--output", default=None, help="output JSONL (default: stdout)")
    p.add_argument("--workers", type=int, default=2, help="grading worker processes (default 2)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-answer grading limit in CPU seconds (default 5)")
    p.add_argument("--extraction", choices=EXTRACTION_MODES, default="boxed",
                   help="boxed (default, the training reward's policy): the last run of \\boxed{} or <answer> tag, "
                        "no box scores 0; full: math-verify's own extraction from the whole response (reproduces "
                        "math-verify's verdicts on free-form answers). See docs/evaluation.md")
    p.add_argument("--think-opened-in-prompt", action="store_true",
                   help="format reward for chat templates that open <think> in the prompt")
    p.set_defaults(func=run)
    return p


def read_items(path: str) -> list[dict]:
    """Parse and check every line of ``path``; raises InputError naming the file and line of the first problem."""
    items = []
    try:
        fh = open(path, "rb")
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{where}: not UTF-8 ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                raise InputError(f"{where}: not valid JSON ({err})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key in ("response", "answer"):
                if key not in obj:
                    raise InputError(f"{where}: missing key '{key}'")
            for key in ("response", "answer", "problem"):
                if key in obj and not isinstance(obj[key], str):
                    raise InputError(f"{where}: '{key}' must be a string, got {type(obj[key]).__name__}")
            items.append(obj)
    return items


def json_line(row: dict) -> str:
    """``row`` as one JSON line, readable (non-ASCII kept) unless it holds a string UTF-8 cannot encode (a lone
    surrogate, which JSON's ``\\uXXXX`` escapes allow): that line is then written ASCII-escaped, same content."""
    text = json.dumps(row, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(row, ensure_ascii=True)
    return text + "\n"


class _Output:
    """Where graded lines go: stdout, or ``PATH.partial`` renamed to ``PATH`` at the end. Opened (and so checked)
    before any grading; ``done`` lines of an interrupted earlier run with the same input are kept, not regraded."""

    def __init__(self, path: str | None, items: list[dict]) -> None:
        self.path = Path(path) if path else None
        self.done_rows: list[dict] = []
        if self.path is None:
            self._fh = sys.stdout
            return
        if self.path.is_dir():
            raise InputError(f"--output {self.path}: is a directory")
        parent = self.path.parent
        if not parent.is_dir():
            raise InputError(f"--output {self.path}: directory {str(parent)!r} does not exist")
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.done_rows = _graded_prefix(self.partial, items)
        try:
            self._fh = open(self.partial, "r+" if self.partial.exists() else "w", encoding="utf-8")
        except OSError as err:
            raise InputError(f"--output {self.path}: cannot write {self.partial} ({err.strerror or err})") from None
        # Keep exactly the lines that match the input (drops a torn last line of a killed run).
        self._fh.seek(0)
        self._fh.write("".join(json_line(r) for r in self.done_rows))
        self._fh.truncate()
        self._fh.flush()

    def write(self, lines: list[str]) -> None:
        self._fh.writelines(lines)
        self._fh.flush()
        if self.path is not None:
            os.fsync(self._fh.fileno())

    def commit(self) -> None:
        if self.path is not None:
            self._fh.close()
            os.replace(self.partial, self.path)


def _graded_prefix(partial: Path, items: list[dict]) -> list[dict]:
    """The rows of ``partial`` (an earlier, interrupted run) that are, in order, the grading of ``items``' first
    lines; reading stops at the first row that is not."""
    if not partial.is_file():
        return []
    rows = []
    with open(partial, encoding="utf-8", errors="replace") as fh:
        for line, item in zip(fh, items):
            try:
                row = json.loads(line)
            except ValueError:
                break
            if not isinstance(row, dict) or {k: v for k, v in row.items() if k not in _ADDED_KEYS} != item \
                    or any(k not in row for k in _ADDED_KEYS):
                break
            rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    """Entry point of ``igrpo score``; returns the exit code (0 ok; bad input or arguments raise ``InputError``,
    which ``igrpo`` reports with exit code 2)."""
    from nemo_igrpo.rewards.reward_fn import RewardFunction

    if args.workers < 1 or not args.timeout > 0:
        raise InputError("--workers must be >= 1 and --timeout > 0")
    items = read_items(args.input)
    output = _Output(args.output, items)
    done = output.done_rows
    if done:
        print(f"igrpo score: {len(done)} of {len(items)} lines already graded in {output.partial}; continuing",
              file=sys.stderr)
    accuracy = [float(r["accuracy"]) for r in done]
    fmt = [float(r["format"]) for r in done]
    timeouts = 0
    cfg = RewardConfig(weights={"accuracy": 1.0, "format": 1.0}, num_workers=args.workers, timeout_s=args.timeout,
                       think_opened_in_prompt=args.think_opened_in_prompt,
                       grading=GradingConfig(extraction=args.extraction))
    with RewardFunction(cfg) as reward_fn:
        for start in range(len(done), len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            out = reward_fn([it.get("problem", "") for it in chunk], [it["response"] for it in chunk],
                            [it["answer"] for it in chunk])
            output.write([json_line(dict(it, reward=out.total[i], accuracy=out.components["accuracy"][i],
                                         format=out.components["format"][i], extracted_answer=out.extracted[i]))
                          for i, it in enumerate(chunk)])
            accuracy += out.components["accuracy"]
            fmt += out.components["format"]
            timeouts += out.timeouts
    output.commit()
    n = len(items)
    mean_acc = sum(accuracy) / n if n else 0.0
    mean_fmt = sum(fmt) / n if n else 0.0
    print(f"igrpo score: n={n} accuracy={mean_acc:.4f} format={mean_fmt:.4f} timeouts={timeouts}",
          file=sys.stderr)
    return 0
