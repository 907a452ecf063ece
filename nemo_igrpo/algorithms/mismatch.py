"""Training-vs-generation mismatch correction: per-token importance weights of the trainer's pi_old over the
generator's pi_gen, for the tokens the generator sampled (see ``MismatchCorrectionConfig`` for the options).

With ``log k_t = log pi_old(y_t) - log pi_gen(y_t)`` on response token t of sequence y:

- TIS (Yao et al. 2025): ``w_t = min(k_t, C)``.
- MIS, token level (IcePop, Ling Team 2025): ``w_t = k_t`` if ``low <= k_t <= high``, else 0.
- MIS, sequence level (Seq-MIS, Liu et al. 2025): ``rho = prod_t k_t``; every token of y gets ``w_t = rho`` if
  ``low <= rho <= high``, else 0.

The weight multiplies the token's clipped policy-gradient term in the loss (``PolicyLoss``: ``is_weights``); it is
data (no gradient) and fixed for all optimizer updates of the step, since pi_old is. Everything is computed in log
space, so a sequence ratio far outside the range never overflows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from nemo_igrpo.algorithms.config import MISMATCH_LEVELS, MISMATCH_MODES, MismatchCorrectionConfig
from nemo_igrpo.algorithms.kl import kl_k3

Tensor = torch.Tensor


@dataclass
class MismatchWeights:
    weights: Tensor | None  # [S, L] float32, 0 off the mask; None when the correction is off
    metrics: dict[str, float] = field(default_factory=dict)


def check_mismatch_config(cfg: MismatchCorrectionConfig) -> None:
    """Raise ValueError naming the offending option (relative to ``algorithm.mismatch``)."""
    if cfg.mode not in MISMATCH_MODES:
        raise ValueError(f"mode: {cfg.mode!r} is not one of {list(MISMATCH_MODES)}")
    if cfg.mis_level not in MISMATCH_LEVELS:
        raise ValueError(f"mis_level: {cfg.mis_level!r} is not one of {list(MISMATCH_LEVELS)}")
    if not cfg.tis_cap > 0:
        raise ValueError(f"tis_cap: must be > 0, got {cfg.tis_cap}")
    if not 0 <= cfg.mis_low < 1:
        raise ValueError(f"mis_low: must be in [0, 1), got {cfg.mis_low}")
    if not cfg.mis_high > 1:
        raise ValueError(f"mis_high: must be > 1, got {cfg.mis_high}")


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    total = float(mask.sum())
    return float((x.double() * mask).sum()) / total if total > 0 else 0.0


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def mismatch_weights(old_logprobs: Tensor, gen_logprobs: Tensor, mask: Tensor,
                     cfg: MismatchCorrectionConfig) -> MismatchWeights:
    """Per-token weights ``[S, L]`` and metrics for aligned ``[S, L]`` log-probs (see the module docstring).

    ``mismatch/kl`` (KL(pi_gen || pi_old), Schulman's k3 with samples from pi_gen) is returned even when the
    correction is off: it is the number that says whether the correction is needed.
    """
    check_mismatch_config(cfg)
    if old_logprobs.shape != gen_logprobs.shape or old_logprobs.shape != mask.shape:
        raise ValueError(f"old_logprobs {tuple(old_logprobs.shape)}, gen_logprobs {tuple(gen_logprobs.shape)} and "
                         f"mask {tuple(mask.shape)} must have the same [S, L] shape")
    m = (mask > 0).double()
    valid = m > 0
    # Off the mask the log-probs are padding: zero them before any arithmetic (0 * inf would be NaN).
    old = torch.where(valid, old_logprobs.double(), torch.zeros_like(m))
    gen = torch.where(valid, gen_logprobs.double(), torch.zeros_like(m))
    log_k = old - gen
    metrics = {"mismatch/kl": _masked_mean(kl_k3(gen, old), m)}
    if cfg.mode == "none":
        return MismatchWeights(None, metrics)
    if cfg.mode == "tis":
        weights = torch.exp(log_k.clamp(max=math.log(cfg.tis_cap)))
        metrics["mismatch/truncated_fraction"] = _masked_mean((log_k > math.log(cfg.tis_cap)).double(), m)
    else:
        lo, hi = _log(cfg.mis_low), math.log(cfg.mis_high)
        if cfg.mis_level == "token":
            log_w = log_k
        else:
            log_w = (log_k * m).sum(dim=1, keepdim=True).expand_as(log_k)
        keep = (log_w >= lo) & (log_w <= hi)
        # exp only where kept: a dropped sequence ratio may be exp(+-1000).
        weights = torch.where(keep, torch.exp(torch.where(keep, log_w, torch.zeros_like(log_w))),
                              torch.zeros_like(log_w))
        metrics["mismatch/masked_fraction"] = _masked_mean((~keep).double(), m)
        if cfg.mis_level == "sequence":
            has_tokens = m.sum(dim=1) > 0
            dropped = (~keep[:, 0]) & has_tokens
            metrics["mismatch/masked_sequences"] = (float(dropped.sum()) / float(has_tokens.sum())
                                                    if has_tokens.any() else 0.0)
    weights = weights * m
    metrics["mismatch/weight_mean"] = _masked_mean(weights, m)
    return MismatchWeights(weights.float(), metrics)
