"""The accuracy reward: 1.0 when the response's final answer (reward.grading.extraction) is mathematically equivalent
to the gold answer (math-verify, graded in worker processes with per-item limits; see math_grader.py), else 0.0."""

from __future__ import annotations

from typing import Sequence

from nemo_igrpo.rewards.base import Reward, Sample, Scores
from nemo_igrpo.rewards.config import RewardConfig
from nemo_igrpo.rewards.math_grader import MathGrader


class AccuracyReward(Reward):
    def __init__(self, cfg: RewardConfig) -> None:
        self.grader = MathGrader.from_config(cfg)

    def score(self, samples: Sequence[Sample]) -> Scores:
        results = self.grader.grade([s.response for s in samples], [s.answer for s in samples])
        return Scores(values=[r.score for r in results], extracted=[r.extracted for r in results],
                      timeouts=sum(r.timed_out for r in results), over_budget=sum(r.over_budget for r in results))

    def close(self) -> None:
        self.grader.close()
