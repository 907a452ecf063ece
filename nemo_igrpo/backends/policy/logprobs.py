"""Per-token log-probs and entropy from vocab-parallel logits (each TP rank holds vocab/tp columns).

Full logits are never gathered: the softmax normaliser is assembled with TP all-reduces. Outputs are aligned with
``input_ids`` as in ``nemo_igrpo.batch``: the value at position t is about token t, predicted by the logits at t-1;
position 0 has no prediction and is 0.

The logits must come from ``parallel_output=True`` (the shard). Feeding full logits here would treat each rank's
copy as a shard and be off by ln(TP), the same trap as megatron's CE with ``parallel_output=False``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _tp_group():
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def _shifted_scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # Out of place on purpose: megatron's vocab-parallel CE overwrites its input, and .float() of a float32 tensor
    # is the same tensor, so the caller's logits must never reach it directly.
    return logits[:, :-1].float() / temperature


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(input_ids[:, t] | < t) at ``temperature``, float32 [S, L], position 0 = 0. Differentiable w.r.t. logits.

    ``logits``: this rank's vocab shard [S, L, V/tp] (last PP stage only). Every TP rank gets the same result.
    """
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    if logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and input_ids {tuple(input_ids.shape)} disagree on [S, L]")
    nll = vocab_parallel_cross_entropy(_shifted_scaled(logits, temperature), input_ids[:, 1:].contiguous())
    first = torch.zeros(input_ids.shape[0], 1, dtype=nll.dtype, device=nll.device)
    return torch.cat([first, -nll], dim=1)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the next-token distribution at ``temperature``, float32 [S, L], aligned like ``token_logprobs``
    (position t: the distribution that produced token t; position 0 = 0). No gradient."""
    group = _tp_group()
    z = _shifted_scaled(logits, temperature)
    zmax = z.max(dim=-1, keepdim=True).values
    dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
    z -= zmax
    expz = torch.exp(z)
    # One all-reduce for both sums: sum(e^z) and sum(e^z * z).
    sums = torch.stack([expz.sum(dim=-1), (expz * z).sum(dim=-1)])
    dist.all_reduce(sums, group=group)
    sum_exp, sum_exp_z = sums[0], sums[1]
    # H = log Z - E_p[z] with z the max-shifted logits.
    ent = torch.log(sum_exp) - sum_exp_z / sum_exp
    first = torch.zeros(ent.shape[0], 1, dtype=ent.dtype, device=ent.device)
    return torch.cat([first, ent], dim=1)
