"""``igrpo score``: grade a JSONL file of responses offline with the training reward (accuracy + format).

Input: one JSON object per line with ``response`` and ``answer`` strings (``problem`` optional; blank lines are
skipped). Output: each input object plus ``reward``, ``accuracy``, ``format`` and ``extracted_answer``, one per line,
to ``--output`` or stdout. The whole input is validated before any grading; a malformed line is reported with the
file name and line number (exit code 2). The output file is written to a temporary file and renamed, so a failed run
never leaves a partial output behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from nemo_igrpo.errors import UserError
from nemo_igrpo.rewards.config import RewardConfig


class InputError(UserError, ValueError):
    """A malformed input line; the message names the file and line."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``score`` subcommand."""
    p = subparsers.add_parser("score", help="grade a JSONL file of responses (math-verify accuracy + format)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="JSONL with 'response' and 'answer' (optional 'problem')")
    p.add_argument("--output", default=None, help="output JSONL (default: stdout)")
    p.add_argument("--workers", type=int, default=2, help="grading worker processes (default 2)")
    p.add_argument("--timeout", type=float, default=5.0, help="hard per-answer grading limit in seconds (default 5)")
    p.add_argument("--think-opened-in-prompt", action="store_true",
                   help="format reward for chat templates that open <think> in the prompt")
    p.set_defaults(func=run)
    return p


def read_items(path: str) -> list[dict]:
    """Parse and check every line of ``path``; raises InputError naming the file and line of the first problem."""
    items = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
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


def run(args: argparse.Namespace) -> int:
    """Entry point of ``igrpo score``; returns the exit code (0 ok, 2 bad input or arguments)."""
    from nemo_igrpo.rewards.reward_fn import RewardFunction

    if args.workers < 1 or not args.timeout > 0:
        print("igrpo score: --workers must be >= 1 and --timeout > 0", file=sys.stderr)
        return 2
    try:
        items = read_items(args.input)
    except InputError as err:
        print(f"igrpo score: error: {err}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as err:
        print(f"igrpo score: error: cannot read {args.input}: {err}", file=sys.stderr)
        return 2
    cfg = RewardConfig(weights={"accuracy": 1.0, "format": 1.0}, num_workers=args.workers, timeout_s=args.timeout,
                       think_opened_in_prompt=args.think_opened_in_prompt)
    with RewardFunction(cfg) as reward_fn:
        out = reward_fn([it.get("problem", "") for it in items], [it["response"] for it in items],
                        [it["answer"] for it in items])
    lines = []
    for i, it in enumerate(items):
        row = dict(it, reward=out.total[i], accuracy=out.components["accuracy"][i],
                   format=out.components["format"][i], extracted_answer=out.extracted[i])
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    if args.output:
        _write_atomic(args.output, "".join(lines))
    else:
        sys.stdout.writelines(lines)
        sys.stdout.flush()
    n = len(items)
    mean_acc = sum(out.components["accuracy"]) / n if n else 0.0
    mean_fmt = sum(out.components["format"]) / n if n else 0.0
    print(f"igrpo score: n={n} accuracy={mean_acc:.4f} format={mean_fmt:.4f} timeouts={out.timeouts}",
          file=sys.stderr)
    return 0


def _write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".score-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
