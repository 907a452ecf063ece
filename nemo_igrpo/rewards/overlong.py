"""DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", Sec. 3.4, eq. 13) as a reward component.

With ``L_max`` the generation limit and ``L_cache`` = ``reward.overlong.buffer_tokens`` (default ``L_max // 5``,
DAPO's 4096 of 20480), a response of ``|y|`` tokens gets::

    0                                     if |y| <= L_max - L_cache
    ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max     (linear from 0 down to -1)
    -1                                    if |y| > L_max

so a response cut at the limit gets -1, and one that ends inside the last ``L_cache`` tokens a share of it. Its weight
in ``reward.weights`` scales it (verl's "overlong_penalty_factor"). It scores drafts as well as trained rollouts, so
iGRPO's draft selection sees it too.
"""

from __future__ import annotations

from typing import Sequence

from nemo_igrpo.rewards.base import Reward, Sample, Scores
from nemo_igrpo.rewards.config import RewardConfig

# DAPO's L_cache / L_max: 4096 / 20480.
DEFAULT_BUFFER_SHARE = 5


def buffer_for(buffer_tokens: int | None, max_tokens: int) -> int:
    """``L_cache``: the configured one, or a fifth of the limit."""
    return max_tokens // DEFAULT_BUFFER_SHARE if buffer_tokens is None else buffer_tokens


def check_buffer(buffer_tokens: int, max_tokens: int) -> None:
    """``0 < L_cache < L_max``: the penalty needs a positive expected length ``L_max - L_cache`` to start from."""
    if not 0 < buffer_tokens < max_tokens:
        raise ValueError(f"the overlong buffer (L_cache = {buffer_tokens}) must be in (0, L_max) with L_max = "
                         f"{max_tokens}, the generation limit")


def overlong_penalty(num_tokens: int, max_tokens: int, buffer_tokens: int) -> float:
    """DAPO eq. 13 for one response of ``num_tokens`` tokens (stop token included); in [-1, 0]."""
    check_buffer(buffer_tokens, max_tokens)
    expected = max_tokens - buffer_tokens
    if num_tokens <= expected:
        return 0.0
    if num_tokens <= max_tokens:
        return (expected - num_tokens) / buffer_tokens
    return -1.0


class OverlongReward(Reward):
    penalises_truncation = True

    def __init__(self, cfg: RewardConfig) -> None:
        self.buffer_tokens = cfg.overlong.buffer_tokens

    @classmethod
    def check_config(cls, cfg: RewardConfig, max_response_tokens: int) -> None:
        try:
            check_buffer(buffer_for(cfg.overlong.buffer_tokens, max_response_tokens), max_response_tokens)
        except ValueError as err:
            raise ValueError(f"config key 'reward.overlong.buffer_tokens': {err} (generation.max_new_tokens)") \
                from None

    def score(self, samples: Sequence[Sample]) -> Scores:
        values = []
        for i, s in enumerate(samples):
            if s.meta.num_tokens is None or s.meta.max_tokens is None:
                raise ValueError(f"the overlong reward needs each response's token count and generation limit; "
                                 f"response {i} has none (it is a training-time reward, not one for offline grading)")
            values.append(overlong_penalty(s.meta.num_tokens, s.meta.max_tokens,
                                           buffer_for(self.buffer_tokens, s.meta.max_tokens)))
        return Scores(values=values)
