"""DAPO's dynamic sampling (Yu et al. 2025, "DAPO", Sec. 3.2, eq. 11): which generated groups a step trains on.

DAPO keeps sampling until the batch holds ``B`` groups with ``0 < |{o_i : o_i correct}| < G``: a group whose rollouts
are all right or all wrong has zero advantage and only dilutes the update. Pure bookkeeping over per-group flags
here; the trainer generates the rounds (``trainer/step_rollouts.py``). Groups are identified by a key that orders
them the same way on every data-parallel rank, ``(round, shard, index)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Sequence, TypeVar

from nemo_igrpo.algorithms.config import DynamicSamplingConfig

K = TypeVar("K", bound=Hashable)


def has_signal(values: Sequence[float]) -> bool:
    """True when a group's values of the filter metric are not all equal.

    For a 0/1 accuracy this is DAPO's ``0 < #correct < G``; for a graded metric (a judge score) it is "not constant",
    the condition under which every group-relative advantage estimator gives a non-zero advantage.
    """
    if len(values) == 0:
        raise ValueError("a group needs at least one value")
    if any(math.isnan(v) for v in values):
        raise ValueError("NaN in a group's filter metric")
    return max(values) != min(values)


def needs_another_round(num_informative: int, target: int, rounds_done: int, max_extra_rounds: int) -> bool:
    """Whether to generate one more round: the batch is short and the bound (1 + max_extra_rounds rounds) allows it."""
    return num_informative < target and rounds_done < 1 + max_extra_rounds


@dataclass
class Selection:
    """The groups of one step, in the global order: ``trained`` carry loss; ``padding`` groups (no signal) only make
    sure every data-parallel rank has a row to run, and carry none."""

    trained: list = field(default_factory=list)
    padding: list = field(default_factory=list)
    generated: int = 0  # groups generated this step, all rounds
    informative: int = 0  # of them, groups with a signal
    bound_reached: bool = False  # the rounds ran out before the batch was full

    @property
    def batch(self) -> list:
        """Every group in the update: trained first, then padding."""
        return self.trained + self.padding

    def shard(self, dp_rank: int, dp_size: int) -> list:
        """This data-parallel rank's groups of ``batch`` (round robin: sizes differ by at most one)."""
        return self.batch[dp_rank::dp_size]

    def metrics(self, rounds: int) -> dict[str, float]:
        """``dynamic_sampling/*``: the same on every rank (global counts)."""
        return {
            "dynamic_sampling/rounds": float(rounds),
            "dynamic_sampling/generated_groups": float(self.generated),
            "dynamic_sampling/filtered_share": 1.0 - self.informative / self.generated if self.generated else 0.0,
            "dynamic_sampling/trained_groups": float(len(self.trained)),
            "dynamic_sampling/bound_reached": float(self.bound_reached),
        }


def select_groups(flags: Iterable[tuple[K, bool]], target: int, min_groups: int = 1) -> Selection:
    """The step's groups from ``(key, has_signal)`` of every generated group, in the global order.

    The first ``target`` groups with a signal are trained on (any surplus of the last round is dropped, as in DAPO).
    If fewer exist (the round bound was reached), the step trains on those it has; and if those are fewer than
    ``min_groups`` (the data-parallel size: every rank must run the same optimizer step), groups without a signal
    fill up to it, carrying no loss.
    """
    if target < 1 or min_groups < 1:
        raise ValueError(f"need target >= 1 and min_groups >= 1, got {target}, {min_groups}")
    flags = list(flags)
    informative = [k for k, f in flags if f]
    trained = informative[:target]
    shortfall = max(0, min_groups - len(trained))
    padding = [k for k, f in flags if not f][:shortfall]
    if len(trained) + len(padding) < min_groups:
        raise ValueError(f"{len(flags)} groups cannot give {min_groups} data-parallel ranks one each")
    return Selection(trained=trained, padding=padding, generated=len(flags), informative=len(informative),
                     bound_reached=len(informative) < target)


def check_dynamic_sampling(cfg: DynamicSamplingConfig, computed_rewards: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the config key when dynamic sampling is on but cannot work."""
    if not cfg.enabled:
        return
    computed = sorted(computed_rewards)
    if cfg.metric not in computed:
        raise ValueError(f"config key 'algorithm.dynamic_sampling.metric': '{cfg.metric}' is not a computed reward "
                         f"component; reward.weights with a weight > 0: {', '.join(computed) or 'none'}")
    if cfg.max_extra_rounds < 0:
        raise ValueError(f"config key 'algorithm.dynamic_sampling.max_extra_rounds': must be >= 0, got "
                         f"{cfg.max_extra_rounds}")
