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

import hashlib
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

# Elements sampled from each tensor for the fingerprint: enough to tell different trained weights apart (they differ
# almost everywhere), cheap even for a 7B model.
_FINGERPRINT_SAMPLES = 4096


def weights_fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short hash of full weights under their HF names (shape and a strided sample of each tensor's values).

    Computed from full, gathered tensors, so it does not depend on the TP/PP layout: a checkpoint records the
    fingerprint of its run's KL reference, and a resumed run at another layout can check it has the same one.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(((n, t) for n, t in named_tensors), key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::step].to("cpu", torch.float64).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:32]


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
