"""From rollouts (token lists) to the aligned, right-padded tensors of nemo_igrpo.batch."""

from __future__ import annotations

import torch

from nemo_igrpo.batch import pad_sequences


def pack_sequences(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                   generator_logprobs: list[list[float]] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``input_ids`` = prompt + response, ``loss_mask`` = 1 on response tokens, and the generator's log-probs placed at
    the same positions (aligned layout: position t holds the log-prob of token t)."""
    seqs = [p + r for p, r in zip(prompt_ids, response_ids)]
    input_ids = pad_sequences(seqs, pad_id)
    loss_mask = torch.zeros(input_ids.shape, dtype=torch.float32)
    gen = None if generator_logprobs is None else torch.zeros(input_ids.shape, dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        loss_mask[i, len(p):len(p) + len(r)] = 1.0
        if gen is not None:
            gen[i, len(p):len(p) + len(r)] = torch.tensor(generator_logprobs[i][:len(r)], dtype=torch.float32)
    return input_ids, loss_mask, gen


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    total = mask.sum()
    return float((values * mask).sum() / total) if total > 0 else 0.0
