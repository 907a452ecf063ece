"""The one tensor layout shared by the trainer, the policy backends and the losses.

Every per-token tensor is *aligned with ``input_ids``*: ``x[:, t]`` describes token ``input_ids[:, t]`` predicted from
``input_ids[:, :t]``. Position 0 has no prediction and is always 0 / masked out. Sequences are right-padded (causal
attention makes the padding invisible to real tokens, so no attention mask is needed).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class TrainBatch:
    """One optimizer step's worth of sequences (prompt + response), already scored and given advantages."""

    input_ids: torch.Tensor  # [S, L] int64, right-padded
    loss_mask: torch.Tensor  # [S, L] float32, 1.0 on response tokens that receive gradient
    advantages: torch.Tensor  # [S] float32, shared by every token of a sequence
    old_logprobs: torch.Tensor  # [S, L] float32, log pi_old(token) under the sampling snapshot
    ref_logprobs: torch.Tensor | None = None  # [S, L] float32, only when a KL penalty is on
    # [S, L] float32, only when the training-vs-generation mismatch correction is on: the per-token weight of the
    # policy-gradient term (TIS / MIS, see nemo_igrpo.algorithms.mismatch).
    is_weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        s, l = self.input_ids.shape
        for f in fields(self):
            t = getattr(self, f.name)
            if t is None:
                continue
            want = (s,) if f.name == "advantages" else (s, l)
            if tuple(t.shape) != want:
                raise ValueError(f"TrainBatch.{f.name} has shape {tuple(t.shape)}, expected {want}")

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: slice | torch.Tensor) -> "TrainBatch":
        """Rows ``index`` of every tensor (micro-batching, mini-batching, data-parallel sharding)."""
        return TrainBatch(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                             for f in fields(self)})


@dataclass
class LossNormalizer:
    """Counts over the WHOLE optimizer step (all micro-batches, all data-parallel ranks) of a ``TrainBatch``.

    Every micro-batch divides by the same step-wide counts, so the micro-batch losses add up to the full-batch loss and
    gradient accumulation / data parallelism reproduce the single-batch gradient exactly.
    """

    num_sequences: float  # rows, including rows whose mask is empty (they are samples of their group all the same)
    num_tokens: float  # sum of the loss mask


def pad_sequences(seqs: list[list[int]], pad_id: int, length: int | None = None) -> torch.Tensor:
    """Right-pad token lists into an int64 tensor of width ``length`` (default: the longest)."""
    width = max((len(s) for s in seqs), default=0) if length is None else length
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) > width:
            raise ValueError(f"sequence {i} has {len(s)} tokens, longer than the width {width}")
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out
