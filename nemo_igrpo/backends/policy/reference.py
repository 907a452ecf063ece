"""The frozen reference policy of a KL penalty: a copy of the policy's initial weights that is exchanged with the
policy's own parameters for a forward pass, and exchanged back after it.

Why an exchange and not a second model: the copy is sharded exactly like the policy (each rank holds its own TP/PP
shards of its own model chunks), no second model is built, and the reference forward is the policy's own
``get_logprobs``, so both go through the same code. The exchange goes tensor by tensor, so the only extra device
memory is one tensor of scratch (plus the copy itself when it stays on the device). With ``offload`` the copy lives in
CPU memory (pinned, with CUDA) between uses: one model of device memory saved for two host-device copies per use.
The policy's parameters come back bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch


class ReferenceWeights:
    """A snapshot of ``modules``' parameters taken at construction (the parameters, not buffers: buffers such as
    rotary frequencies are not trained)."""

    def __init__(self, modules: Iterable[torch.nn.Module], offload: bool = False) -> None:
        self.offload = offload
        self._params = [p for m in modules for p in m.parameters()]
        pin = offload and torch.cuda.is_available()
        with torch.no_grad():
            if offload:
                self._copies = [torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=pin).copy_(p)
                                for p in self._params]
            else:
                self._copies = [p.detach().clone() for p in self._params]
        self._swapped = False

    @property
    def num_bytes(self) -> int:
        return sum(c.numel() * c.element_size() for c in self._copies)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the modules hold the reference weights; after it, their own again."""
        if self._swapped:
            raise RuntimeError("the reference weights are already swapped in")
        self._exchange()
        self._swapped = True
        try:
            yield
        finally:
            self._exchange()
            self._swapped = False

    @torch.no_grad()
    def _exchange(self) -> None:
        for param, copy in zip(self._params, self._copies):
            scratch = param.detach().clone()
            param.detach().copy_(copy)
            copy.copy_(scratch)
