"""Several optimizer updates per rollout batch: mini-batches and epochs over one step's rollouts (PPO, Schulman et al.
2017, Alg. 1; GRPO's mu iterations), each mini-batch one ``PolicyInterface.train`` call, i.e. one optimizer update.

The batch's ``old_logprobs`` were taken before the first update and stay fixed, so from the second update on the
ratio pi/pi_old moves away from 1 and the clip range acts. One mini-batch and one epoch is exactly one
``policy.train(batch, loss_fn)`` call on the unchanged batch: the single-update code path, bit for bit.
"""

from __future__ import annotations

import torch

from nemo_igrpo.algorithms.config import AlgorithmConfig
from nemo_igrpo.backends.policy.interface import LossFn, PolicyInterface
from nemo_igrpo.batch import TrainBatch
from nemo_igrpo.seeding import hashed_seed


def updates_per_step(cfg: AlgorithmConfig) -> int:
    """Optimizer updates per training step: what the LR schedule counts."""
    return cfg.num_mini_batches * cfg.num_update_epochs


def too_many_mini_batches(num_mini_batches: int, rows_per_rank: int) -> str | None:
    """Why ``num_mini_batches`` cannot split ``rows_per_rank`` rollouts (every mini-batch needs one), or None."""
    if num_mini_batches <= rows_per_rank:
        return None
    return (f"{num_mini_batches} exceeds the {rows_per_rank} rollouts each data-parallel rank trains on per step "
            "(every mini-batch needs at least one)")


def mini_batch_rows(num_rows: int, num_mini_batches: int, seed: int) -> list[slice | torch.Tensor]:
    """Row indices of each mini-batch of one epoch: a seeded permutation cut into ``num_mini_batches`` parts whose
    sizes differ by at most one row. A single mini-batch is the whole batch in its own order."""
    if num_mini_batches == 1:
        return [slice(None)]
    problem = too_many_mini_batches(num_mini_batches, num_rows)
    if problem:
        raise ValueError(f"algorithm.num_mini_batches: {problem}")
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    return list(torch.tensor_split(order, num_mini_batches))


def run_updates(policy: PolicyInterface, batch: TrainBatch, loss_fn: LossFn, *, num_mini_batches: int,
                num_epochs: int, seed: int) -> dict[str, float]:
    """``num_epochs`` passes of ``num_mini_batches`` optimizer updates over ``batch``; metrics combined over them.

    ``seed`` must be the same on the ranks of one model-parallel group (they must pass identical rows) and may
    differ between data-parallel ranks. Collective, like ``policy.train``.
    """
    if num_mini_batches < 1 or num_epochs < 1:
        raise ValueError(f"need num_mini_batches >= 1 and num_epochs >= 1, got {num_mini_batches}, {num_epochs}")
    results = []
    for epoch in range(num_epochs):
        for rows in mini_batch_rows(batch.num_sequences, num_mini_batches, hashed_seed(f"{seed}/epoch{epoch}")):
            results.append(policy.train(batch if isinstance(rows, slice) else batch.select(rows), loss_fn))
    return combine_update_metrics(results, num_epochs)


def combine_update_metrics(results: list[dict[str, float]], num_epochs: int = 1) -> dict[str, float]:
    """One step's metrics from those of its updates (each already over its whole mini-batch and all ranks).

    ``loss`` and ``grad_norm``: mean over updates. ``num_tokens``: the step's tokens (all updates / epochs).
    ``skipped``: updates skipped for a non-finite loss or gradient. ``lr``: the last update's. ``/max`` and ``/min``
    keys: extremes over updates that had tokens. Other keys (the loss's metrics): token-weighted means. A single
    update's metrics are returned unchanged.
    """
    if len(results) == 1:
        return dict(results[0])
    tokens = [r.get("num_tokens", 0.0) for r in results]
    total = sum(tokens)
    out: dict[str, float] = {}
    for key in sorted({k for r in results for k in r}):
        values = [(r[key], t) for r, t in zip(results, tokens) if key in r]
        if key in ("loss", "grad_norm"):
            out[key] = sum(v for v, _ in values) / len(values)
        elif key == "num_tokens":
            out[key] = total / num_epochs
        elif key == "skipped":
            out[key] = sum(v for v, _ in values)
        elif key == "lr":
            out[key] = values[-1][0]
        elif key.endswith("/max") or key.endswith("/min"):
            some = [v for v, t in values if t > 0]
            pick = max if key.endswith("/max") else min
            out[key] = pick(some) if some else 0.0
        else:
            weight = sum(t for _, t in values)
            out[key] = sum(v * t for v, t in values) / weight if weight > 0 else 0.0
    return out
