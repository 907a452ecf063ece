"""What every reward component implements and what it is given.

A reward sees each response with its context (:class:`Sample`: the problem, the response, the gold answer and the
response's metadata) and returns one float per response (:class:`Scores`). Rewards are registered by name in
``rewards/registry.py``; ``reward.weights`` in the config lists the ones a run uses, with their weights.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Sequence

if TYPE_CHECKING:
    from nemo_igrpo.rewards.config import RewardConfig

# Finish reasons of a generated response (the generation interface's): it ended with a stop token, or it hit the
# generation limit and was cut ("truncated").
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class ResponseMeta:
    """How a response was produced. Fields are None where the caller does not know them (offline grading)."""

    # Generated tokens, the stop token included.
    num_tokens: int | None = None
    # "stop" or "length" (cut at the generation limit).
    finish_reason: str | None = None
    # The generation limit the response was sampled under (generation.max_new_tokens).
    max_tokens: int | None = None
    # "stage1" (an iGRPO draft), "stage2" (a trained rollout: an iGRPO refinement or a GRPO answer), or "" outside
    # training (evaluation, `igrpo score`).
    stage: str = ""


@dataclass(frozen=True)
class Sample:
    """One response in its context: what a reward component scores."""

    problem: str
    response: str
    answer: str  # the gold answer
    meta: ResponseMeta = field(default_factory=ResponseMeta)

    @property
    def truncated(self) -> bool:
        """True when the response was cut at the generation limit."""
        return self.meta.finish_reason == FINISH_LENGTH


@dataclass
class Scores:
    """One reward component's output for a batch of samples."""

    values: list[float]
    # The final answer the component read from each response, for rewards that extract one (accuracy).
    extracted: list[str | None] | None = None
    # Responses whose scoring hit a time limit (scored 0).
    timeouts: int = 0
    # Of the timeouts, responses left unscored because the batch's budget was spent.
    over_budget: int = 0


class Reward(abc.ABC):
    """A reward component. Its class is the factory the registry holds: ``cls(reward_config)``.

    To add one: a module with a subclass (``score``; ``check_config`` for its config rules; ``close`` if it holds
    processes or threads), and one registration line in ``rewards/registry.py``.
    """

    # True when the component scores a truncated response lower than a complete one of the same content (the soft
    # overlong penalty): iGRPO's draft selection then never prefers a truncated draft (algorithms/igrpo.py).
    penalises_truncation: ClassVar[bool] = False

    @classmethod
    def check_config(cls, cfg: "RewardConfig", max_response_tokens: int) -> None:
        """Raise ``ValueError`` (naming the ``reward.*`` key) if ``cfg`` cannot work for this component.

        Called by config validation for every component with a weight > 0, before anything is started.
        ``max_response_tokens`` is generation.max_new_tokens.
        """

    @abc.abstractmethod
    def score(self, samples: Sequence[Sample]) -> Scores:
        """One value per sample, in order."""

    def close(self) -> None:
        """Release processes or threads the component holds. Idempotent."""
