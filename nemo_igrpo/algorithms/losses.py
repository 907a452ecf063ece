"""Clipped policy-gradient losses of the GRPO family, over the shared ``[S, L]`` token layout (see ``batch.py``).

One core, :func:`clipped_surrogate`, computes the PPO clipped surrogate (with optional dual clip). Each registered
loss only decides two things: at which level the importance ratio is taken (token or sequence) and how per-token
losses are reduced to a scalar (:class:`Aggregation`). The training-vs-generation importance weights, the KL penalty,
the micro-batch normalisation and the metrics are shared by all of them in :class:`PolicyLoss`, which
:func:`make_policy_loss` builds from the config. ``PolicyLoss`` is what the policy backend calls: it satisfies the
``LossFn`` protocol of ``nemo_igrpo.backends.policy.interface``.

Losses are *minimised*: ``loss = -objective``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Callable

import torch

from nemo_igrpo.algorithms.config import AlgorithmConfig
from nemo_igrpo.algorithms.kl import kl_estimate, kl_k3
from nemo_igrpo.algorithms.registry import POLICY_LOSSES
from nemo_igrpo.batch import LossNormalizer

# Bound on |log pi - log pi_old| before exp: exp(20) ~ 5e8 is still finite in fp32/bf16. Beyond it the ratio (and its
# gradient, which the clamp zeroes) comes from a broken step; without the bound one token can make the loss inf.
MAX_LOG_RATIO = 20.0

Tensor = torch.Tensor


@dataclass(frozen=True)
class ClipRange:
    """Ratio clip ``[1 - low, 1 + high]`` and the optional dual-clip constant ``c > 1`` (Ye et al. 2020)."""

    low: float
    high: float
    dual_c: float | None = None


class Aggregation(enum.Enum):
    """How per-token losses become one scalar (names follow the usual "loss_agg_mode" vocabulary)."""

    # 1/|o_i| inside each sequence, then the mean over sequences: GRPO (DeepSeekMath eq. 3), iGRPO eq. 5, GSPO.
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
    # Sum over every token of the batch / number of tokens: DAPO eq. 8 (long answers are not down-weighted).
    TOKEN_MEAN = "token-mean"
    # Token sum of each sequence / a constant (the generation limit), then the mean over sequences: Dr. GRPO.
    SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"


@dataclass
class Surrogate:
    """What a registered loss returns: per-token policy-gradient terms, before the KL and the reduction."""

    per_token: Tensor  # [S, L] loss carried by each token (a sequence-level loss is repeated on its tokens)
    ratio: Tensor  # [S, L] the importance ratio that was clipped (sequence ratio repeated for gspo)
    clipped: Tensor  # [S, L] bool: clipping cut this token's gradient
    aggregation: Aggregation


# A registered policy loss: (log_ratio [S, L] masked to 0 off the mask, advantages [S], mask [S, L], clip) -> Surrogate.
SurrogateFn = Callable[[Tensor, Tensor, Tensor, ClipRange], Surrogate]


def clipped_surrogate(ratio: Tensor, advantages: Tensor, clip: ClipRange) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate loss ``max(-A r, -A clip(r, 1-low, 1+high))``, elementwise, and where clipping bit.

    With ``clip.dual_c = c``, tokens with ``A < 0`` are further bounded by ``-c A`` (dual clip, Ye et al. 2020,
    "Mastering Complex Control in MOBA Games"): a huge ratio on a bad action cannot produce an unbounded step.
    Returns ``(loss, clipped)`` where ``clipped`` marks elements whose gradient the clipping set to zero.
    """
    unclipped = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1.0 - clip.low, 1.0 + clip.high)
    loss = torch.maximum(unclipped, clipped_loss)
    cut = clipped_loss > unclipped
    if clip.dual_c is not None:
        bound = -clip.dual_c * advantages
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(dual, bound.expand_as(loss), loss)
        cut = cut | dual
    return loss, cut


def _token_level(log_ratio: Tensor, advantages: Tensor, clip: ClipRange, agg: Aggregation) -> Surrogate:
    ratio = torch.exp(log_ratio)
    loss, cut = clipped_surrogate(ratio, advantages[:, None], clip)
    return Surrogate(loss, ratio, cut, agg)


@POLICY_LOSSES.register("grpo")
def grpo_loss(log_ratio: Tensor, advantages: Tensor, mask: Tensor, clip: ClipRange) -> Surrogate:
    """GRPO / iGRPO eq. 5: token ratio, clipped, 1/|o| per sequence, mean over sequences."""
    return _token_level(log_ratio, advantages, clip, Aggregation.SEQ_MEAN_TOKEN_MEAN)


@POLICY_LOSSES.register("dapo")
def dapo_loss(log_ratio: Tensor, advantages: Tensor, mask: Tensor, clip: ClipRange) -> Surrogate:
    """DAPO (Yu et al. 2025): token ratio with the asymmetric "clip-higher" range, token-level mean over the batch.

    DAPO's dynamic sampling and overlong reward shaping are rollout/reward features, not part of the loss.
    """
    return _token_level(log_ratio, advantages, clip, Aggregation.TOKEN_MEAN)


@POLICY_LOSSES.register("dr_grpo")
def dr_grpo_loss(log_ratio: Tensor, advantages: Tensor, mask: Tensor, clip: ClipRange) -> Surrogate:
    """Dr. GRPO (Liu et al. 2025): token ratio, token sum per sequence over a constant length, mean over sequences."""
    return _token_level(log_ratio, advantages, clip, Aggregation.SEQ_MEAN_TOKEN_SUM_NORM)


@POLICY_LOSSES.register("gspo")
def gspo_loss(log_ratio: Tensor, advantages: Tensor, mask: Tensor, clip: ClipRange) -> Surrogate:
    """GSPO (Zheng et al. 2025, eq. 5-7): sequence ratio ``exp(mean_t log(pi/pi_old))``, clipped per sequence.

    The sequence loss is repeated on each of its tokens so that the seq-mean-token-mean reduction returns exactly the
    mean of sequence losses. GSPO's own clip range is tiny (3e-4 / 4e-4): set clip_low / clip_high accordingly.
    """
    lengths = mask.sum(dim=1)
    seq_log_ratio = log_ratio.sum(dim=1) / lengths.clamp_min(1.0)
    ratio = torch.exp(seq_log_ratio)
    loss, cut = clipped_surrogate(ratio, advantages, clip)
    def spread(x: Tensor) -> Tensor:
        return x[:, None].expand_as(log_ratio)

    return Surrogate(spread(loss), spread(ratio), spread(cut), Aggregation.SEQ_MEAN_TOKEN_MEAN)


def _positive_or_one(count: float | Tensor) -> float | Tensor:
    # A zero count only occurs when there is nothing to average; the numerator is then 0 and any divisor gives 0.
    if isinstance(count, Tensor):
        return torch.where(count > 0, count, torch.ones_like(count))
    return count if count > 0 else 1.0


def aggregate(per_token: Tensor, mask: Tensor, mode: Aggregation, normalizer: LossNormalizer,
              max_tokens: int) -> Tensor:
    """Reduce masked per-token losses ``[S, L]`` to a scalar, dividing by the step-wide counts of ``normalizer``."""
    masked = per_token * mask
    if mode is Aggregation.TOKEN_MEAN:
        return masked.sum() / _positive_or_one(normalizer.num_tokens)
    if mode is Aggregation.SEQ_MEAN_TOKEN_MEAN:
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    else:
        per_seq = masked.sum(dim=1) / max_tokens
    return per_seq.sum() / _positive_or_one(normalizer.num_sequences)


def _check_shapes(logprobs: Tensor, mask: Tensor, advantages: Tensor, **others: Tensor | None) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [S, L], got shape {tuple(logprobs.shape)}")
    for name, t in {"mask": mask, **others}.items():
        if t is not None and t.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(logprobs.shape)} like logprobs")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected ({logprobs.shape[0]},)")


def _on_mask(x: Tensor, valid: Tensor) -> Tensor:
    # where(), not multiplication: padding may hold -inf/NaN log-probs, and 0 * inf is NaN (also in the backward).
    return torch.where(valid, x, torch.zeros_like(x))


@dataclass(frozen=True)
class PolicyLoss:
    """The loss the policy backend calls per micro-batch; see :func:`make_policy_loss`.

    Per token: ``w_t * surrogate_t + kl_coef * KL_t``, reduced by the registered loss's aggregation. ``w_t`` are the
    training-vs-generation importance weights (1 when none are given, see ``algorithms.mismatch``); they scale the
    policy-gradient term only, as in the TIS/MIS objectives.
    """

    name: str
    surrogate: SurrogateFn
    clip: ClipRange
    kl_coef: float
    kl_estimator: str
    max_tokens: int
    # LossFn contract: none of the registered losses reads the current policy's entropy (the paper has no entropy
    # bonus); the trainer logs the sampling policy's entropy itself. A loss that sets this gets ``entropy``.
    needs_entropy: bool = False

    @property
    def needs_reference(self) -> bool:
        """True when the loss reads ``ref_logprobs`` (a KL penalty to the reference policy is on)."""
        return self.kl_coef > 0

    def __call__(self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                 ref_logprobs: Tensor | None = None, entropy: Tensor | None = None,
                 normalizer: LossNormalizer | None = None, is_weights: Tensor | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, metrics)`` of one micro-batch; inputs are ``[S, L]`` aligned tensors, ``advantages [S]``.

        ``normalizer`` None uses this call's own counts (S sequences, ``mask.sum()`` tokens). Metrics are detached
        0-d tensors, means over this call's masked tokens, with ``num_tokens`` to weight them across micro-batches.
        """
        _check_shapes(logprobs, mask, advantages, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs,
                      entropy=entropy, is_weights=is_weights)
        if self.kl_coef > 0 and ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs (log-probs of the reference policy)")
        # fp32 throughout: bf16 log-probs would round ratios near 1 and token counts above 256.
        m = mask.float()
        valid = m > 0
        new = _on_mask(logprobs.float(), valid)
        old = _on_mask(old_logprobs.detach().float(), valid)
        log_ratio = (new - old).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        sur = self.surrogate(log_ratio, advantages.detach().float(), m, self.clip)
        if is_weights is not None:
            sur = replace(sur, per_token=sur.per_token * _on_mask(is_weights.detach().float(), valid))
        per_token = sur.per_token
        kl = None
        if self.kl_coef > 0:
            kl = kl_estimate(new, _on_mask(ref_logprobs.detach().float(), valid), self.kl_estimator)
            per_token = per_token + self.kl_coef * kl
        if normalizer is None:
            normalizer = LossNormalizer(num_sequences=float(logprobs.shape[0]), num_tokens=m.sum())
        loss = aggregate(per_token, m, sur.aggregation, normalizer, self.max_tokens)
        return loss, _metrics(sur, m, valid, log_ratio, kl, entropy)


def _masked_extreme(x: Tensor, valid: Tensor, reduce: Callable[[Tensor], Tensor]) -> Tensor:
    if x.numel() == 0:  # a micro-batch of zero rows: reductions of empty tensors raise
        return torch.ones((), dtype=x.dtype, device=x.device)
    fill = -torch.inf if reduce is torch.amax else torch.inf
    return reduce(x.masked_fill(~valid, fill))


@torch.no_grad()
def _metrics(sur: Surrogate, m: Tensor, valid: Tensor, log_ratio: Tensor, kl: Tensor | None,
             entropy: Tensor | None) -> dict[str, Tensor]:
    num_tokens = m.sum()
    denom = _positive_or_one(num_tokens)
    mean = lambda x: (x.to(m.dtype) * m).sum() / denom  # noqa: E731
    ratio = sur.ratio.detach()
    # With no token the extremes are undefined; 1.0 is the neutral ratio, and num_tokens = 0 tells the caller to skip.
    # masked_fill/where rather than ratio[valid] or `if valid.any()`: no host sync on GPU.
    some = num_tokens > 0
    one = torch.ones((), dtype=ratio.dtype, device=ratio.device)
    out = {
        "pg_loss": mean(sur.per_token.detach()),  # importance-weighted when is_weights are given
        "clipfrac": mean(sur.clipped),
        # KL(pi_old || pi) with samples from pi_old: k3 with r = pi / pi_old (Schulman 2020).
        "approx_kl": mean(kl_k3(torch.zeros_like(log_ratio), log_ratio.detach())),
        "ratio/mean": torch.where(some, mean(ratio), one),
        "ratio/max": torch.where(some, _masked_extreme(ratio, valid, torch.amax), one),
        "ratio/min": torch.where(some, _masked_extreme(ratio, valid, torch.amin), one),
        "num_tokens": num_tokens.detach(),
    }
    if kl is not None:
        out["kl"] = mean(kl.detach())
    if entropy is not None:
        out["entropy"] = mean(_on_mask(entropy.detach().float(), valid))
    return out


def clip_range_from_config(cfg: AlgorithmConfig) -> ClipRange:
    """``[1 - clip_low, 1 + clip_high]``, each falling back to ``clip_eps``, plus the dual-clip constant."""
    low = cfg.clip_eps if cfg.clip_low is None else cfg.clip_low
    high = cfg.clip_eps if cfg.clip_high is None else cfg.clip_high
    if not (0 < low < 1 and high > 0):
        raise ValueError(f"clip range must satisfy 0 < clip_low < 1 and clip_high > 0, got {low}, {high}")
    if cfg.dual_clip_c is not None and cfg.dual_clip_c <= 1:
        raise ValueError(f"dual_clip_c must be > 1, got {cfg.dual_clip_c}")
    return ClipRange(low=low, high=high, dual_c=cfg.dual_clip_c)


def make_policy_loss(cfg: AlgorithmConfig, max_response_tokens: int) -> PolicyLoss:
    """The configured policy loss. ``max_response_tokens`` (the generation limit) is dr_grpo's default constant."""
    max_tokens = cfg.dr_grpo_max_tokens if cfg.dr_grpo_max_tokens is not None else max_response_tokens
    if max_tokens <= 0:
        raise ValueError(f"dr_grpo max tokens must be > 0, got {max_tokens}")
    if cfg.kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {cfg.kl_coef}")
    if cfg.kl_coef > 0:
        kl_estimate(torch.zeros(1), torch.zeros(1), cfg.kl_estimator)  # unknown estimator: fail now, not mid-step
    return PolicyLoss(name=cfg.policy_loss, surrogate=POLICY_LOSSES.get(cfg.policy_loss),
                      clip=clip_range_from_config(cfg), kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
                      max_tokens=max_tokens)
