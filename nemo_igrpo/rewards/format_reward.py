"""Format reward: the response reasons inside ``<think>...</think>`` and then gives a final answer.

1.0 iff (after optional leading whitespace) the response is ``<think>`` + reasoning + ``</think>`` + an answer section,
where the answer section (the text after ``</think>``) contains a non-empty ``\\boxed{...}`` or ``<answer>...</answer>``.
Exactly one ``<think>`` and one ``</think>``: a second reasoning block or a stray tag scores 0, so the policy cannot
hide an answer inside a fake tag. When the chat template already opened ``<think>`` in the prompt (DeepSeek-R1-Distill
style), pass ``think_opened_in_prompt=True``: the response must then contain no ``<think>`` and exactly one ``</think>``.
"""

from __future__ import annotations

from typing import Sequence

from nemo_igrpo.rewards.base import Reward, Sample, Scores
from nemo_igrpo.rewards.config import RewardConfig
from nemo_igrpo.rewards.extract import extract_answer

_OPEN, _CLOSE = "<think>", "</think>"


def format_reward(text: str, think_opened_in_prompt: bool = False) -> float:
    """1.0 if ``text`` is well formed (reasoning block, then a non-empty final answer), else 0.0."""
    if not isinstance(text, str):
        return 0.0
    body = text.lstrip()
    if think_opened_in_prompt:
        if _OPEN in body:
            return 0.0
    else:
        if not body.startswith(_OPEN) or body.count(_OPEN) != 1:
            return 0.0
        body = body[len(_OPEN):]
    if body.count(_CLOSE) != 1:
        return 0.0
    reasoning, answer_section = body.split(_CLOSE)
    if not reasoning.strip():
        return 0.0
    return 1.0 if extract_answer(answer_section) is not None else 0.0


class FormatReward(Reward):
    """The format reward component; ``reward.think_opened_in_prompt`` selects the variant."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.think_opened_in_prompt = cfg.think_opened_in_prompt

    def score(self, samples: Sequence[Sample]) -> Scores:
        return Scores(values=[format_reward(s.response, self.think_opened_in_prompt) for s in samples])
