"""What the trainer may ask of a policy (NeMo-RL's early shape): log-probs, a training step, the frozen reference
policy's log-probs, weights for refit, checkpoints. The Megatron implementation lives behind it; the trainer never
touches megatron directly.

It also states the contract of the loss the policy calls (:class:`LossFn`); the losses themselves live in
``nemo_igrpo.algorithms.losses`` and satisfy it structurally (they import nothing from here).
"""

from __future__ import annotations

import abc
from typing import Iterator, Protocol, runtime_checkable

import torch

from nemo_igrpo.batch import LossNormalizer, TrainBatch


@runtime_checkable
class LossFn(Protocol):
    """The loss ``PolicyInterface.train`` calls once per micro-batch (``algorithms.losses.make_policy_loss`` builds it).

    Every tensor argument is a row slice of the step's ``TrainBatch`` in its aligned ``[s, L]`` layout
    (``advantages``: ``[s]``); ``logprobs`` carries the gradient, everything else is data. ``normalizer`` holds the
    counts of the whole optimizer step, so that the micro-batch losses add up to the step loss. Returns the loss (a
    0-d tensor to differentiate) and metrics (detached 0-d tensors, means over this call's masked tokens, with a
    ``num_tokens`` entry to weight them; keys ending in ``/max`` or ``/min`` are extremes).
    """

    @property
    def needs_entropy(self) -> bool:
        """True when the loss reads ``entropy`` (the current policy's per-token entropy). The backend computes it
        only then: it costs a pass over the full vocabulary."""

    def __call__(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                 mask: torch.Tensor, *, normalizer: LossNormalizer, ref_logprobs: torch.Tensor | None = None,
                 entropy: torch.Tensor | None = None, is_weights: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


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
    def keep_reference(self, offload: bool = False) -> None:
        """Freeze a copy of the current weights as the reference policy of a KL penalty, sharded like the policy.

        Call it once, right after construction and before ``load_checkpoint``: the reference is the run's initial
        weights, also in a resumed run (a checkpoint written with another reference is refused). ``offload`` keeps
        the copy in CPU memory between uses. Collective."""

    @abc.abstractmethod
    def get_reference_logprobs(self, input_ids: torch.Tensor,
                               lengths: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """``get_logprobs`` under the reference weights kept by ``keep_reference``. The policy's own weights are
        unchanged afterwards."""

    @abc.abstractmethod
    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (TP-gathered, all PP stages) weights under Hugging Face names, for generator refit and conversion."""

    @abc.abstractmethod
    def save_checkpoint(self, path: str) -> None:
        """Model, optimizer and scheduler into ``path`` (a directory the caller makes atomic)."""

    @abc.abstractmethod
    def load_checkpoint(self, path: str) -> None:
        """Inverse of save_checkpoint; works at another TP/PP size."""
