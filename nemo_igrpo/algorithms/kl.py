"""Per-token Monte-Carlo estimators of KL(pi || pi_ref) from tokens sampled from pi (Schulman, "Approximating KL
Divergence", 2020). With ``log_r = log pi_ref(x) - log pi(x)``:

- k1 = -log_r: unbiased, high variance, can be negative per token.
- k2 = log_r^2 / 2: biased, low variance, always >= 0.
- k3 = (r - 1) - log_r: unbiased and always >= 0; GRPO's (DeepSeekMath eq. 4) and the iGRPO paper's KL term.
"""

from __future__ import annotations

from typing import Callable

import torch

# exp(20) ~ 5e8 is finite in fp32 and bf16; a larger policy/reference log-ratio only comes from a broken step, and
# without the clamp it would turn the KL term, and then the whole loss, into inf.
_MAX_LOG_RATIO = 20.0


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref, per token."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2, per token."""
    return 0.5 * (logprobs - ref_logprobs).square()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = pi_ref/pi - log(pi_ref/pi) - 1, per token."""
    log_r = (ref_logprobs - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(log_r) - log_r - 1.0


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3,
}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate ``[S, L]`` with the named estimator (k1, k2 or k3)."""
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise KeyError(f"unknown KL estimator '{estimator}'; registered: {', '.join(sorted(KL_ESTIMATORS))}") from None
    return fn(logprobs, ref_logprobs)
