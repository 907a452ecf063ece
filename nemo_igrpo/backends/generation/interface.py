"""What the trainer may ask of a rollout generator: ``generate`` and ``update_weights``. Hugging Face transformers on
CPU, vLLM on GPU; the trainer cannot tell which one it has."""

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
        """Release memory while the policy trains (vLLM sleep mode). No-op where nothing can be freed."""

    def wake(self) -> None:
        """Undo sleep() before the next generate()."""
