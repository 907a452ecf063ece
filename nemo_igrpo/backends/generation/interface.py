"""What the trainer may ask of a rollout generator: ``generate`` and ``update_weights``, and the memory calls the
trainer's lifecycle owns (``sleep``, ``wake``, ``close``). Hugging Face transformers on CPU, vLLM on GPU; the trainer
cannot tell which one it has.

Only ``nemo_igrpo.trainer.lifecycle`` calls ``sleep``/``wake``/``update_weights`` during training: a generator does
not wake itself, so a call out of order fails loudly instead of silently allocating memory the policy needs.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterable

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    max_new_tokens: int = 256
    seed: int = 0  # the whole call is reproducible from this seed
    stop_token_ids: list[int] = field(default_factory=list)  # end of sequence; the stop token is kept in the output


@dataclass
class GenerationOutput:
    token_ids: list[list[int]]  # generated tokens only (no prompt), stop token included when hit
    logprobs: list[list[float]]  # log-prob of each generated token under softmax(logits / temperature)
    finish_reasons: list[str]  # "stop" (hit a stop token) or "length" (max_new_tokens)


class GenerationInterface(abc.ABC):
    @abc.abstractmethod
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationOutput:
        """One completion per prompt (repeat a prompt to get a group)."""

    @abc.abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy weights given under Hugging Face names into the engine, in place."""

    def sleep(self) -> None:
        """Release memory while the policy computes (vLLM sleep mode: KV cache freed, weights offloaded or, see
        ``sleep_discards_weights``, discarded). No-op where nothing can be freed."""

    def wake(self, kv_cache: bool = True) -> None:
        """Undo ``sleep()``: the weights' memory (contents as ``sleep_discards_weights`` says) and, unless
        ``kv_cache=False``, the KV cache. The lifecycle wakes the weights alone before a refit, the KV cache before
        generating. No-op when awake."""

    @property
    def sleep_discards_weights(self) -> bool:
        """True when ``sleep()`` drops the weights' contents (vLLM level 2): a refit must come before the next
        ``generate()``."""
        return False

    def close(self) -> None:
        """Shut the engine down. Call before the process groups it uses are destroyed."""
