"""Short arithmetic word problems for small instruct models (the SmolLM2 recipes): a chain of integer operations on
one quantity, told as a story with a question at the end.

    Mia has 7 stickers. She buys 5 more. Then she gives away 4. How many stickers does Mia have now?

The arithmetic is the demo task's kind (a left-to-right chain of ``+``, ``-``, ``*`` on small non-negative
integers), but a pretrained chat model reads English far better than ``Compute (7 + 5) * 3 - 4.``; a 135 M-parameter
instruct model then solves a fair share of the problems at temperature 0.7, which is what RL needs (some rewards of
1 in most groups, not all). Pure Python (no torch): ``python -m nemo_igrpo.data.word_problems --output DIR`` writes
the train / validation / test JSONL files a recipe points at.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_igrpo.data.splits import draw_splits
from nemo_igrpo.data.splits import write_splits as write_split_files


# (name, subject pronoun, object pronoun, possessive)
_PEOPLE = [("Tom", "he", "him", "his"), ("Mia", "she", "her", "her"), ("Sam", "he", "him", "his"),
           ("Anna", "she", "her", "her"), ("Leo", "he", "him", "his"), ("Lily", "she", "her", "her"),
           ("Ben", "he", "him", "his"), ("Emma", "she", "her", "her"), ("Max", "he", "him", "his"),
           ("Zoe", "she", "her", "her")]
_ITEMS = ["apples", "marbles", "stickers", "coins", "books", "pencils", "cards", "shells", "stamps", "cookies"]
_ADD = ["{He} buys {b} more.", "{He} finds {b} more.", "A friend gives {him} {b} more.", "{He} gets {b} more."]
_SUB = ["{He} gives away {b}.", "{He} loses {b}.", "{He} sells {b}.", "{He} gives {b} to a friend."]
_MUL = {2: ["Then the number of {items} {he} has doubles."], 3: ["Then the number of {items} {he} has triples."]}
_MUL_ANY = ["Then {he} ends up with {b} times as many {items} as before."]


@dataclass
class WordProblemConfig:
    """Size and difficulty of the task. Defaults measured on SmolLM2-135M-Instruct (docs/models.md)."""

    seed: int = 0
    num_train: int = 1000
    num_validation: int = 100
    num_test: int = 200
    # Operations per problem, inclusive range.
    min_ops: int = 1
    max_ops: int = 2
    # Added or subtracted amounts are drawn from [1, max_operand]; the starting amount from [2, max_operand].
    max_operand: int = 10
    # Multipliers are drawn from [2, max_multiplier].
    max_multiplier: int = 3
    # Every intermediate value and the answer stay in [0, max_value].
    max_value: int = 50
    # Operators to draw from, any of "+", "-", "*".
    operators: str = "+-"


def _check(cfg: WordProblemConfig) -> None:
    if not cfg.operators or set(cfg.operators) - set("+-*"):
        raise ValueError(f"word problems: operators must be a non-empty subset of '+-*', got {cfg.operators!r}")
    if not 1 <= cfg.min_ops <= cfg.max_ops:
        raise ValueError(f"word problems: need 1 <= min_ops <= max_ops, got {cfg.min_ops}..{cfg.max_ops}")
    if cfg.max_operand < 2 or cfg.max_value < cfg.max_operand or cfg.max_multiplier < 2:
        raise ValueError(f"word problems: need 2 <= max_operand <= max_value and max_multiplier >= 2, got "
                         f"max_operand={cfg.max_operand}, max_value={cfg.max_value}, "
                         f"max_multiplier={cfg.max_multiplier}")


def _choices(value: int, cfg: WordProblemConfig) -> list[tuple[str, int, int]]:
    """(op, lo, hi) of the operations that keep the value in [0, max_value] and change it."""
    out = []
    for op in cfg.operators:
        if op == "+":
            lo, hi = 1, min(cfg.max_operand, cfg.max_value - value)
        elif op == "-":
            lo, hi = 1, min(cfg.max_operand, value)
        else:
            lo, hi = 2, min(cfg.max_multiplier, cfg.max_value // value) if value else 0
        if lo <= hi:
            out.append((op, lo, hi))
    return out


def sample_problem(rng: random.Random, cfg: WordProblemConfig) -> dict[str, Any]:
    """One problem drawn from ``rng``: ``{"problem", "answer", "solution"}`` (no id)."""
    name, he, him, his = rng.choice(_PEOPLE)
    items = rng.choice(_ITEMS)
    value = rng.randint(2, cfg.max_operand)  # "1 apples" reads wrong
    sentences = [f"{name} has {value} {items}."]
    steps = []
    for _ in range(rng.randint(cfg.min_ops, cfg.max_ops)):
        choices = _choices(value, cfg)
        if not choices:
            return sample_problem(rng, cfg)  # only with a narrow operator set; start over rather than emit a no-op
        op, lo, hi = rng.choice(choices)
        b = rng.randint(lo, hi)
        if op == "+":
            template, new = rng.choice(_ADD), value + b
        elif op == "-":
            template, new = rng.choice(_SUB), value - b
        else:
            template, new = rng.choice(_MUL.get(b, []) + _MUL_ANY), value * b
        text = template.format(He=he.capitalize(), he=he, him=him, his=his, b=b, items=items)
        sentences.append(text[0].upper() + text[1:])
        steps.append(f"{value} {op} {b} = {new}.")
        value = new
    sentences.append(f"How many {items} does {name} have now?")
    return {"problem": " ".join(sentences), "answer": str(value),
            "solution": f"{' '.join(steps)} The answer is \\boxed{{{value}}}."}


def generate_splits(cfg: WordProblemConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """The three splits, a pure function of ``cfg``; no problem text is shared between them. Test is drawn first,
    then validation, then train, so a larger train split never changes the evaluation sets."""
    cfg = cfg or WordProblemConfig()
    _check(cfg)
    rng = random.Random(f"igrpo-word-problems-{cfg.seed}")
    sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
    return draw_splits(lambda r: sample_problem(r, cfg), rng, sizes, "word")


def write_splits(out_dir: str | Path, cfg: WordProblemConfig | None = None) -> dict[str, Path]:
    """``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` in ``out_dir`` (each written atomically)."""
    return write_split_files(out_dir, generate_splits(cfg))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="directory for train/validation/test.jsonl")
    p.add_argument("--seed", type=int, default=WordProblemConfig.seed)
    args = p.parse_args(argv)
    for split, path in write_splits(args.output, WordProblemConfig(seed=args.seed)).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
