"""The warm start's teacher: what the demo's supervised examples look like (see docs/demo.md).

The synthetic task (``data/synthetic.py``) gives each problem one worked solution, ``<think>7+5=12. 12*2=24.</think>
\\boxed{24}``. The teacher the warm start imitates is less tidy than that, in two ways a real SFT corpus also is:

- **It sometimes answers without working** (``direct_fraction`` of its single-shot answers): ``<think>Answer
  directly.</think> \\boxed{24}``. The answer is right, but a tiny model cannot compute a 2-3 step chain in its
  head, so imitating this style mostly yields guesses. Nothing in the supervised data says which style pays off; the
  reward does. That is what RL can learn here.
- **It refines a previous attempt by building on it** (iGRPO's Stage 2): it keeps the attempt's steps up to its first
  wrong one, repairs that step and recomputes from there. The draft has already turned the problem text into a chain
  of steps, so checking it is easier than solving from the problem alone.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# The reasoning of a direct answer: short, and non-empty so that it passes the format reward like a worked answer.
DIRECT_REASONING = "Answer directly."
_STEP = re.compile(r"(\d+)([+\-*])(\d+)=(-?\d+)\.")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Step:
    left: int
    op: str
    right: int
    result: int

    def text(self) -> str:
        return f"{self.left}{self.op}{self.right}={self.result}."


def parse_steps(solution: str) -> list[Step]:
    """The steps of a worked solution written by ``data/synthetic.py`` (or by this module)."""
    steps = [Step(int(a), op, int(b), int(c)) for a, op, b, c in _STEP.findall(solution)]
    if not steps:
        raise ValueError(f"not a worked solution: {solution!r}")
    return steps


def worked_solution(steps: list[Step]) -> str:
    return f"<think>{' '.join(s.text() for s in steps)}</think> \\boxed{{{steps[-1].result}}}"


def direct_solution(answer: int | str) -> str:
    return f"<think>{DIRECT_REASONING}</think> \\boxed{{{answer}}}"


def slipped_steps(steps: list[Step], rng: random.Random) -> tuple[list[Step], int]:
    """The chain with one arithmetic slip: step k's result is off by 1-3 and every later step is recomputed from
    the wrong value, as a real error propagates (so the attempt is consistent after the slip, and its answer is
    wrong). Returns (steps, k). Values stay non-negative."""
    for _ in range(100):
        k = rng.randrange(len(steps))
        wrong = steps[k].result + rng.choice([-3, -2, -1, 1, 2, 3])
        if wrong < 0:
            continue
        out = list(steps[:k]) + [Step(steps[k].left, steps[k].op, steps[k].right, wrong)]
        for s in steps[k + 1:]:
            out.append(Step(out[-1].result, s.op, s.right, _OPS[s.op](out[-1].result, s.right)))
        if all(s.result >= 0 for s in out) and out[-1].result != steps[-1].result:
            return out, k
    raise ValueError(f"cannot make a wrong attempt of {worked_solution(steps)!r}")


def near_miss(answer: int, rng: random.Random) -> int:
    """A wrong answer 1-3 away from ``answer``, non-negative like every value of the task."""
    return rng.choice([x for x in range(answer - 3, answer + 4) if x >= 0 and x != answer])
