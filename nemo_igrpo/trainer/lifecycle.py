"""The one owner of GPU memory shared by the policy and a colocated generator.

vLLM keeps its weights and KV cache (tens of GB per GPU at the recipes' settings) until it is told to sleep, and
Megatron's activations stay in PyTorch's cache until it is emptied. Neither side can know when the other needs the
memory; the loop does, and it tells this object at each phase change:

    refit()              empty the cache -> wake the generator's weights (not its KV cache) -> export the policy's
                         weights into them -> empty the cache
    begin_generation()   [refit, if a level-2 sleep discarded the weights] -> [offload optimizer state] -> empty the
                         cache -> wake the KV cache
    ... generate (rollouts, validation) ...
    end_generation()     put the generator to sleep -> empty the cache -> [reload optimizer state]
    ... log-probs, train ...

So the KV cache exists only between begin_generation and end_generation, the policy's activations only outside it,
and the generator's weights are refreshed in one place. No other module calls sleep, wake, update_weights or a refit's
export_hf_weights. Every rank calls every method in the same order (the refit's export is a collective); a rank
without a generator (HF backend, not the model-parallel source) takes part in the export and skips the rest.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

import torch

from nemo_igrpo.backends.generation.interface import GenerationInterface
from nemo_igrpo.backends.policy.interface import PolicyInterface


def release_cached_memory() -> None:
    """Hand PyTorch's cached, unused GPU blocks back to the driver, where the other side of the colocation can
    allocate them (vLLM maps its memory outside PyTorch's cache). No-op without CUDA."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class ColocatedLifecycle:
    """Sleep/wake/refit of ``generator`` and optimizer offload of ``policy``, in the order the module docstring
    gives. ``offload_optimizer``: move the optimizer state to host memory while generating
    (``policy.offload_optimizer_during_generation``). ``release_cache``: how to empty the device cache (tests pass a
    recorder)."""

    def __init__(self, policy: PolicyInterface, generator: GenerationInterface | None, *,
                 offload_optimizer: bool = False, release_cache: Callable[[], None] = release_cached_memory) -> None:
        self.policy = policy
        self.generator = generator
        self.offload_optimizer = offload_optimizer
        self.release_cache = release_cache
        # A freshly built engine is awake with the checkpoint's weights (fit() refits it before the first rollout).
        self.generating = False
        self._weights_awake = True
        self._kv_awake = True
        self._weights_stale = False

    def refit(self) -> float:
        """Copy the policy's weights into the generator; returns the seconds it took (``time/refit``)."""
        t0 = time.perf_counter()
        self.release_cache()
        named = self.policy.export_hf_weights()
        if self.generator is None:
            for _ in named:  # the export is a collective: drive it on the ranks that do not generate
                pass
        else:
            if not self._weights_awake:
                self.generator.wake(kv_cache=False)
                self._weights_awake = True
            self.generator.update_weights(named)
        self._weights_stale = False
        self.release_cache()
        return time.perf_counter() - t0

    def begin_generation(self) -> None:
        if self.generating:
            raise RuntimeError("begin_generation() called twice without end_generation()")
        if self._weights_stale:
            self.refit()
        if self.offload_optimizer:
            self.policy.offload_optimizer_state()
        self.release_cache()
        if self.generator is not None and not self._kv_awake:
            self.generator.wake()
            self._weights_awake = self._kv_awake = True
        self.generating = True

    def end_generation(self) -> None:
        if not self.generating:
            raise RuntimeError("end_generation() called without begin_generation()")
        if self.generator is not None:
            self.generator.sleep()
            self._weights_awake = self._kv_awake = False
            self._weights_stale = self.generator.sleep_discards_weights
        self.release_cache()
        if self.offload_optimizer:
            self.policy.reload_optimizer_state()
        self.generating = False

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """``begin_generation()`` ... ``end_generation()``, also when the block raises."""
        self.begin_generation()
        try:
            yield
        finally:
            self.end_generation()

    def close(self) -> None:
        """Shut the generator down (before the process groups it uses go: ``destroy_parallel(shutdown=[...])``)."""
        if self.generator is not None:
            self.generator.close()


# The memory transitions: a stop signal must never cut one of them short (StopSignals' ``protected``).
TRANSITIONS = tuple(method.__code__ for method in (ColocatedLifecycle.refit, ColocatedLifecycle.begin_generation,
                                                   ColocatedLifecycle.end_generation))
