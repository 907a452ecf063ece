"""What the trainer may ask of a policy (NeMo-RL's early shape): log-probs, a training step, weights for refit,
checkpoints. The Megatron implementation lives behind it; the trainer never touches megatron directly."""

from __future__ import annotations

import abc
from typing import Callable, Iterator

import torch

from nemo_igrpo.batch import TrainBatch

# loss_fn(logprobs=[s,L] (grad), old_logprobs, advantages, mask, ref_logprobs, entropy, normalizer) -> (loss, metrics)
# built by nemo_igrpo.algorithms.losses.make_policy_loss(cfg).
LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


class PolicyInterface(abc.ABC):
    @abc.abstractmethod
    def get_logprobs(self, input_ids: torch.Tensor, return_entropy: bool = False,
                     lengths: torch.Tensor | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs [S, L] aligned with ``input_ids`` (see nemo_igrpo.batch), computed at the sampling
        temperature; optionally the per-token entropy [S, L]. ``lengths``: the real tokens of each row (None: all);
        positions past them are 0. Same result on every rank."""

    @abc.abstractmethod
    def train(self, batch: TrainBatch, loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step over ``batch`` (this data-parallel rank's share), micro-batched inside.
        Returns metrics averaged over the whole step (all ranks): loss, grad_norm, lr, and the loss's metrics."""

    def offload_optimizer_state(self) -> None:
        """Move the optimizer state (fp32 master weights, Adam moments) to host memory while a colocated generator
        runs; ``reload_optimizer_state`` brings it back before the next step. Only the trainer's lifecycle calls it."""
        raise NotImplementedError(f"{type(self).__name__} cannot offload its optimizer state")

    def reload_optimizer_state(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot offload its optimizer state")

    @abc.abstractmethod
    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (TP-gathered, all PP stages) weights under Hugging Face names, for generator refit and conversion."""

    @abc.abstractmethod
    def save_checkpoint(self, path: str) -> None:
        """Model, optimizer and scheduler into ``path`` (a directory the caller makes atomic)."""

    @abc.abstractmethod
    def load_checkpoint(self, path: str) -> None:
        """Inverse of save_checkpoint; works at another TP/PP size."""
