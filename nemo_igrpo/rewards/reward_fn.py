"""The scalar reward the trainer and the evaluator use: a weighted sum of accuracy, format and judge components.

``total = w_acc * accuracy + w_fmt * format + w_judge * judge`` (paper default: accuracy 1 + format 1). A component
whose weight is 0 (or absent) is not computed at all: no grading workers for ``accuracy``, no endpoint calls for
``judge``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from nemo_igrpo.rewards.config import RewardConfig
from nemo_igrpo.rewards.extract import extract_answer
from nemo_igrpo.rewards.format_reward import format_reward
from nemo_igrpo.rewards.judge import JudgeInterface, OpenAIJudge
from nemo_igrpo.rewards.math_grader import MathGrader

COMPONENTS = ("accuracy", "format", "judge")


@dataclass
class RewardOutput:
    """Per-response rewards. ``components`` holds only the components that were computed (weight > 0)."""

    total: list[float]
    components: dict[str, list[float]] = field(default_factory=dict)
    extracted: list[str | None] = field(default_factory=list)
    timeouts: int = 0
    # Of the timeouts, responses left ungraded because the batch's grading budget was spent.
    over_budget: int = 0


class RewardFunction:
    """Built once from ``RewardConfig``; call it on a batch. Owns grading workers: use ``with`` or ``close()``."""

    def __init__(self, config: RewardConfig | None = None, judge: JudgeInterface | None = None) -> None:
        self.config = config or RewardConfig()
        unknown = set(self.config.weights) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown reward component(s) {sorted(unknown)}; allowed: {list(COMPONENTS)}")
        self.weights = {k: float(v) for k, v in self.config.weights.items() if float(v) != 0.0}
        self.grader: MathGrader | None = None
        self.judge: JudgeInterface | None = None
        if "accuracy" in self.weights:
            self.grader = MathGrader.from_config(self.config)
        if "judge" in self.weights:
            self.judge = judge if judge is not None else OpenAIJudge(self.config.judge)

    def __call__(self, problems: Sequence[str], responses: Sequence[str], answers: Sequence[str]) -> RewardOutput:
        """Rewards of ``responses`` to ``problems`` with gold ``answers`` (all three the same length)."""
        if not len(problems) == len(responses) == len(answers):
            raise ValueError(f"lengths differ: {len(problems)} problems, {len(responses)} responses, "
                             f"{len(answers)} answers")
        n = len(responses)
        components: dict[str, list[float]] = {}
        timeouts = over_budget = 0
        extracted: list[str | None]
        if self.grader is not None:
            results = self.grader.grade(responses, answers)
            components["accuracy"] = [r.score for r in results]
            extracted = [r.extracted for r in results]
            timeouts = sum(r.timed_out for r in results)
            over_budget = sum(r.over_budget for r in results)
        else:
            extracted = [extract_answer(r) for r in responses]
        if "format" in self.weights:
            components["format"] = [format_reward(r, self.config.think_opened_in_prompt) for r in responses]
        if self.judge is not None:
            scores = self.judge.score(problems, answers, responses)
            components["judge"] = [min(1.0, max(0.0, float(s))) for s in scores]
        total = [sum(self.weights[k] * components[k][i] for k in components) for i in range(n)]
        return RewardOutput(total=total, components=components, extracted=extracted, timeouts=timeouts,
                            over_budget=over_budget)

    def close(self) -> None:
        """Stop grading workers and judge threads."""
        if self.grader is not None:
            self.grader.close()
        if self.judge is not None:
            self.judge.close()

    def __enter__(self) -> "RewardFunction":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
