"""The judge reward: a generative judge's score in [0, 1] (judge.py), clipped into that range."""

from __future__ import annotations

from typing import Sequence

from nemo_igrpo.rewards.base import Reward, Sample, Scores
from nemo_igrpo.rewards.config import RewardConfig
from nemo_igrpo.rewards.judge import JudgeInterface, OpenAIJudge


class JudgeReward(Reward):
    """Scores with ``judge`` when given (tests, a local judge model), else an ``OpenAIJudge`` on reward.judge."""

    def __init__(self, cfg: RewardConfig, judge: JudgeInterface | None = None) -> None:
        self.judge = judge if judge is not None else OpenAIJudge(cfg.judge)

    @classmethod
    def check_config(cls, cfg: RewardConfig, max_response_tokens: int) -> None:
        if not cfg.judge.base_url:
            raise ValueError("config key 'reward.judge.base_url': required when reward.weights.judge > 0")

    def score(self, samples: Sequence[Sample]) -> Scores:
        scores = self.judge.score([s.problem for s in samples], [s.answer for s in samples],
                                  [s.response for s in samples])
        return Scores(values=[min(1.0, max(0.0, float(x))) for x in scores])

    def close(self) -> None:
        self.judge.close()
