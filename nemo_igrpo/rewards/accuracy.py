"""The accuracy reward: 1.0 when the response's final answer (reward.grading.extraction) is mathematically equivalent
to the gold answer (math-verify, graded in worker processes with per-item limits; see math_grader.py), else 0.0."""

from __future__ import annotations

from typing import Sequence

from nemo_igrpo.rewards.base import Reward, Sample, Scores
from nemo_igrpo.rewards.config import RewardConfig
from nemo_igrpo.rewards.math_grader import MathGrader, limits_problem

# MathGrader's argument -> the config key it comes from.
_CONFIG_KEYS = {"num_workers": "reward.num_workers", "timeout_s": "reward.timeout_s",
                "extraction": "reward.grading.extraction",
                "batch_budget_s_per_answer": "reward.grading.batch_budget_s_per_answer",
                "batch_budget_min_s": "reward.grading.batch_budget_min_s",
                "hung_worker_s": "reward.grading.hung_worker_s"}


class AccuracyReward(Reward):
    def __init__(self, cfg: RewardConfig) -> None:
        self.grader = MathGrader.from_config(cfg)

    @classmethod
    def check_config(cls, cfg: RewardConfig, max_response_tokens: int) -> None:
        g = cfg.grading
        problem = limits_problem(num_workers=cfg.num_workers, timeout_s=cfg.timeout_s, extraction=g.extraction,
                                 batch_budget_s_per_answer=g.batch_budget_s_per_answer,
                                 batch_budget_min_s=g.batch_budget_min_s, hung_worker_s=g.hung_worker_s)
        if problem:
            raise ValueError(f"config key '{_CONFIG_KEYS[problem[0]]}': {problem[1]}")

    def score(self, samples: Sequence[Sample]) -> Scores:
        results = self.grader.grade([s.response for s in samples], [s.answer for s in samples])
        return Scores(values=[r.score for r in results], extracted=[r.extracted for r in results],
                      timeouts=sum(r.timed_out for r in results), over_budget=sum(r.over_budget for r in results))

    def close(self) -> None:
        self.grader.close()
