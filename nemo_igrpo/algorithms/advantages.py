"""Group-relative advantage estimators: one scalar per rollout, from the rewards of its own group.

Every estimator maps ``rewards [B, G]`` (B prompts, G rollouts of each) to advantages ``[B, G]``. In iGRPO the group is
the G Stage-2 refinements of one prompt; the Stage-1 drafts never get an advantage. A group whose rewards are all equal
carries no learning signal and gets *exactly* 0 from every estimator (tested), whatever the floating-point rounding of
its mean.
"""

from __future__ import annotations

import torch

from nemo_igrpo.registry import Registry

# (rewards [B, G], eps) -> advantages [B, G]; algorithm.advantage_estimator names one.
ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")


def _check_rewards(rewards: torch.Tensor) -> torch.Tensor:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_prompts, group_size], got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        # One NaN would spread through the group mean into every advantage of the batch; fail where it enters.
        raise ValueError("rewards contain NaN or inf")
    return rewards.to(torch.float32) if not rewards.is_floating_point() else rewards


def _constant_groups(rewards: torch.Tensor) -> torch.Tensor:
    """[B, 1] bool: groups whose rewards are all equal (including groups of one)."""
    return (rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True))


def _zero_constant_groups(adv: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    # mean([0.1] * 3) - 0.1 is ~1e-9, not 0, in float32; divided by a ~1e-9 std it would be an O(1) advantage.
    return torch.where(_constant_groups(rewards), torch.zeros_like(adv), adv)


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """GRPO (Shao et al. 2024, eq. 4; iGRPO eq. 4): ``(r - mean(r)) / (std(r) + eps)`` within each group.

    ``std`` is the *sample* standard deviation (Bessel's 1/(G-1)), as in TRL's and verl's GRPO (``Tensor.std`` with its
    default ``correction=1``), which the published GRPO baselines were trained with; the DeepSeekMath paper does not say
    which. A group of one has no spread and gets 0.
    """
    rewards = _check_rewards(rewards)
    if rewards.shape[1] < 2:
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    adv = centred / (rewards.std(dim=1, keepdim=True, correction=1) + eps)
    return _zero_constant_groups(adv, rewards)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): ``r - mean(r)``, no std division.

    Dividing by the std up-weights groups that are nearly all right or all wrong (question-difficulty bias); Dr. GRPO
    drops it. ``eps`` is unused (kept for the common signature).
    """
    rewards = _check_rewards(rewards)
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    return _zero_constant_groups(adv, rewards)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo_advantages(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): ``r_i - mean_{j != i} r_j``, the leave-one-out baseline (unbiased).

    Equals ``G / (G - 1) * (r_i - mean(r))``; computed from the definition so a reviewer can read it off. A group of
    one has no "others" and gets 0. ``eps`` is unused.
    """
    rewards = _check_rewards(rewards)
    g = rewards.shape[1]
    if g < 2:
        return torch.zeros_like(rewards)
    others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)
    return _zero_constant_groups(rewards - others_mean, rewards)


def compute_advantages(name: str, rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """Advantages ``[B, G]`` of ``rewards [B, G]`` with the estimator registered as ``name``."""
    return ADVANTAGE_ESTIMATORS.get(name)(rewards, eps)
