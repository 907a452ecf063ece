"""The scalar reward the trainer and the evaluator use: a weighted sum of registered reward components.

``total = sum(w_name * component_name)`` over ``reward.weights`` (paper default: accuracy 1 + format 1). Components
come from the reward registry (``rewards/registry.py``); one whose weight is 0 (or absent) is not built at all: no
grading workers for ``accuracy``, no endpoint calls for ``judge``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from nemo_igrpo.rewards.base import Reward, ResponseMeta, Sample
from nemo_igrpo.rewards.config import RewardConfig
from nemo_igrpo.rewards.extract import extract_answer
from nemo_igrpo.rewards.math_grader import MathGrader
from nemo_igrpo.rewards.registry import REWARDS


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
    """Built once from ``RewardConfig``; call it on a batch. Owns the components' workers: use ``with`` or ``close()``.

    ``components`` replaces the registry's factory for the names it holds with ready instances (a judge wired to a
    local model, a test double); the names must still be listed in ``config.weights``.
    """

    def __init__(self, config: RewardConfig | None = None, components: Mapping[str, Reward] | None = None) -> None:
        self.config = config or RewardConfig()
        given = dict(components or {})
        unknown = [n for n in self.config.weights if n not in REWARDS and n not in given]
        if unknown:
            raise ValueError(f"unknown reward component(s) {unknown}; registered: {', '.join(REWARDS.names())}")
        extra = set(given) - set(self.config.weights)
        if extra:
            raise ValueError(f"reward component(s) {sorted(extra)} given but not listed in reward.weights")
        self.weights = {k: float(v) for k, v in self.config.weights.items() if float(v) != 0.0}
        self.components: dict[str, Reward] = {}
        try:
            for name in self.weights:
                self.components[name] = given[name] if name in given else REWARDS.get(name)(self.config)
        except BaseException:
            self.close()
            raise

    @property
    def grader(self) -> MathGrader | None:
        """The accuracy component's math-verify grader (the evaluator asks it for per-item timeouts), if any."""
        return getattr(self.components.get("accuracy"), "grader", None)

    @property
    def penalises_truncation(self) -> bool:
        """True when a weighted component scores truncated responses lower (see ``Reward.penalises_truncation``)."""
        return any(c.penalises_truncation for c in self.components.values())

    def __call__(self, problems: Sequence[str], responses: Sequence[str], answers: Sequence[str],
                 meta: Sequence[ResponseMeta] | None = None) -> RewardOutput:
        """Rewards of ``responses`` to ``problems`` with gold ``answers`` (all the same length), and optionally each
        response's metadata (token count, finish reason, generation limit, stage) for the components that use it."""
        meta = list(meta) if meta is not None else [ResponseMeta()] * len(responses)
        if not len(problems) == len(responses) == len(answers) == len(meta):
            raise ValueError(f"lengths differ: {len(problems)} problems, {len(responses)} responses, "
                             f"{len(answers)} answers, {len(meta)} metadata")
        samples = [Sample(p, r, a, m) for p, r, a, m in zip(problems, responses, answers, meta)]
        n = len(samples)
        components: dict[str, list[float]] = {}
        extracted: list[str | None] | None = None
        timeouts = over_budget = 0
        for name, component in self.components.items():
            scores = component.score(samples)
            if len(scores.values) != n:
                raise ValueError(f"reward '{name}' returned {len(scores.values)} scores for {n} responses")
            components[name] = [float(v) for v in scores.values]
            timeouts += scores.timeouts
            over_budget += scores.over_budget
            if extracted is None and scores.extracted is not None:
                extracted = list(scores.extracted)
        if extracted is None:
            extracted = [extract_answer(r) for r in responses]
        total = [sum(self.weights[k] * components[k][i] for k in components) for i in range(n)]
        return RewardOutput(total=total, components=components, extracted=extracted, timeouts=timeouts,
                            over_budget=over_budget)

    def close(self) -> None:
        """Stop the components' workers and threads."""
        for component in getattr(self, "components", {}).values():
            component.close()

    def __enter__(self) -> "RewardFunction":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
