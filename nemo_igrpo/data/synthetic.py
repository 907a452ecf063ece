"""The embedded demo task: multi-step integer arithmetic with a worked, checkable solution.

A problem is a left-to-right chain ``((a op b) op c) op d`` printed with the fewest parentheses, for example
``Compute (7 + 5) * 3 - 4.``; its solution is ``<think>7+5=12. 12*3=36. 36-4=32.</think> \\boxed{32}``. Every value
stays a small non-negative integer so a tiny character-level model can learn the task in a minute of CPU time.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from nemo_igrpo.data.config import SyntheticTaskConfig
from nemo_igrpo.data.splits import draw_splits
from nemo_igrpo.data.splits import write_splits as write_split_files

_VALID_OPS = set("+-*")


def _split_sizes(cfg: SyntheticTaskConfig) -> dict[str, int]:
    return {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}


def _check(cfg: SyntheticTaskConfig) -> None:
    if not cfg.operators or set(cfg.operators) - _VALID_OPS:
        raise ValueError(f"synthetic.operators must be a non-empty subset of '+-*', got {cfg.operators!r}")
    if not 1 <= cfg.min_ops <= cfg.max_ops:
        raise ValueError(f"synthetic needs 1 <= min_ops <= max_ops, got {cfg.min_ops}..{cfg.max_ops}")
    if cfg.max_operand < 1 or cfg.max_value < cfg.max_operand:
        raise ValueError("synthetic needs 1 <= max_operand <= max_value")


def _operand_range(op: str, value: int, cfg: SyntheticTaskConfig) -> tuple[int, int] | None:
    """Operands for ``value op b`` that keep the result in [0, max_value] and are not a no-op; None if there is none."""
    if op == "+":
        lo, hi = 1, min(cfg.max_operand, cfg.max_value - value)
    elif op == "-":
        lo, hi = 1, min(cfg.max_operand, value)
    else:
        lo, hi = 2, (min(cfg.max_operand, cfg.max_value // value) if value else 0)
    return (lo, hi) if lo <= hi else None


def sample_problem(rng: random.Random, cfg: SyntheticTaskConfig) -> dict[str, Any]:
    """One problem drawn from ``rng``: ``{"problem", "answer", "solution"}`` (no id)."""
    num_ops = rng.randint(cfg.min_ops, cfg.max_ops)
    value = rng.randint(0, cfg.max_operand)
    expr, expr_prec = str(value), 3  # precedence of the outermost operator of expr; 3: an atom
    steps = []
    while len(steps) < num_ops:
        choices = [(op, r) for op in cfg.operators if (r := _operand_range(op, value, cfg)) is not None]
        if not choices:
            # Only possible with a narrow operator set (e.g. "-" after reaching 0); start over rather than emit a no-op.
            return sample_problem(rng, cfg)
        op, (lo, hi) = rng.choice(choices)
        b = rng.randint(lo, hi)
        new = value + b if op == "+" else value - b if op == "-" else value * b
        prec = 2 if op == "*" else 1
        # The chain is evaluated left to right; its left part needs parentheses only under a tighter operator.
        left = f"({expr})" if expr_prec < prec else expr
        expr, expr_prec = f"{left} {op} {b}", prec
        steps.append(f"{value}{op}{b}={new}.")
        value = new
    return {
        "problem": f"Compute {expr}.",
        "answer": str(value),
        "solution": f"<think>{' '.join(steps)}</think> \\boxed{{{value}}}",
    }


def generate_splits(cfg: SyntheticTaskConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """The train/validation/test splits of the task, a pure function of ``cfg``.

    Problems are unique across all splits (no problem text is shared). The test split is drawn first, then validation,
    then train, so changing ``num_train`` never changes the evaluation sets.
    """
    cfg = cfg or SyntheticTaskConfig()
    _check(cfg)
    # A string seed hashes the same on every platform and Python version (int seeds also do; the prefix keeps this
    # stream distinct from other users of the same seed).
    rng = random.Random(f"igrpo-synthetic-{cfg.seed}")
    return draw_splits(lambda r: sample_problem(r, cfg), rng, _split_sizes(cfg), "synth")


def write_splits(out_dir: str | Path, cfg: SyntheticTaskConfig | None = None) -> dict[str, Path]:
    """``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` in ``out_dir`` (each written atomically)."""
    return write_split_files(out_dir, generate_splits(cfg))


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        i, depth = start + len("\\boxed{"), 1
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j]
        # Unclosed: an earlier, complete box may still exist.
        start = text.rfind("\\boxed{", 0, start)
    return None


_INT = re.compile(r"^\s*[-+]?\d+\s*$")


def is_correct(completion: str, answer: str | int) -> bool:
    """Whether the last boxed value of ``completion`` is the integer ``answer``. A quick checker for the demo task;
    training rewards use the rewards package."""
    boxed = extract_boxed(completion)
    if boxed is None or not _INT.match(boxed):
        return False
    return int(boxed) == int(answer)
