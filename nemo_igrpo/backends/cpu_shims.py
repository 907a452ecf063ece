"""The minimal set of patches that lets megatron-core 0.16 run on a CPU-only torch build (gloo).

megatron-core has no CPU switch: a handful of its code paths call CUDA APIs unconditionally. Each patch below is one
small named function, applied only when CUDA is absent, and each is proven necessary by
``tests/backends/test_cpu_shims.py`` (with that one patch left out, the megatron operation named in its comment fails).

The ``mamba_kernels`` shim puts the pure-PyTorch kernels of ``mamba_cpu_kernels`` where megatron's Mamba mixer
expects mamba-ssm's, so the hybrid (Nemotron-H) model runs on CPU too.

Not patched on purpose: ``torch.cuda.Event`` (only megatron's inference engine uses it, and this project generates
with HF/vLLM), sequence parallel, the distributed optimizer and megatron's grad clipping (they do not work on CPU even
with shims; callers must not enable them).

``apply_cpu_shims()`` is idempotent; ``remove_cpu_shims()`` undoes everything (for tests).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")

# name -> undo callback; the keys are also the names tests pass to ``apply_cpu_shims(skip=...)``.
_applied: dict[str, Callable[[], None]] = {}


_MISSING = object()


def _setattr_undoable(obj, name: str, value) -> Callable[[], None]:
    old = getattr(obj, name, _MISSING)
    setattr(obj, name, value)
    if old is _MISSING:  # the module never defined it (an import that failed there): undo removes it again
        return lambda: delattr(obj, name)
    return lambda: setattr(obj, name, old)


def _cpu_current_device():
    return _CPU


def patch_current_device() -> Callable[[], None]:
    """``torch.cuda.current_device()`` -> the CPU device.

    Needed by: the rotary embedding (``RotaryEmbedding.get_emb`` in every GPTModel forward), tensor-parallel
    gathers (``tensor_parallel.mappings``) and pipeline p2p receive buffers (``p2p_communication._communicate``),
    which all allocate with ``device=torch.cuda.current_device()``.
    """
    return _setattr_undoable(torch.cuda, "current_device", _cpu_current_device)


def _noop(*args, **kwargs):
    return None


def patch_synchronize() -> Callable[[], None]:
    """``torch.cuda.synchronize`` and ``torch.cuda.empty_cache`` -> no-ops.

    Needed by: pipeline p2p (``p2p_communication._communicate`` synchronizes after batched isend/irecv, which the
    1F1B schedule uses at PP > 1). CPU collectives in gloo are already synchronous when waited on.
    """
    undo_sync = _setattr_undoable(torch.cuda, "synchronize", _noop)
    undo_empty = _setattr_undoable(torch.cuda, "empty_cache", _noop)

    def undo():
        undo_sync()
        undo_empty()

    return undo


def patch_rng_tracker() -> Callable[[], None]:
    """Model-parallel RNG tracker on the CPU generator.

    Needed by: ``tensor_parallel.model_parallel_cuda_manual_seed`` (the tracker's ``add`` reads and seeds the CUDA
    generator), ``get_cuda_rng_tracker().fork()`` around weight init and dropout, and activation recompute
    (``tensor_parallel.random.CheckpointFunction`` saves/restores the CUDA RNG state). All of them go through
    ``CudaRNGStatesTracker`` and ``_get/_set_cuda_rng_state`` in ``megatron.core.tensor_parallel.random``.
    """
    from megatron.core.tensor_parallel import random as mrandom

    base = mrandom.CudaRNGStatesTracker

    class CpuRNGStatesTracker(base):  # type: ignore[misc, valid-type]
        """Same bookkeeping as megatron's tracker, but the states are CPU generator states."""

        def add(self, name, seed):
            if seed in self.seeds_:
                raise RuntimeError(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise RuntimeError(f"cuda rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise RuntimeError(f"cuda rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    def get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    undos = [
        _setattr_undoable(mrandom, "CudaRNGStatesTracker", CpuRNGStatesTracker),
        _setattr_undoable(mrandom, "_get_cuda_rng_state", get_state),
        _setattr_undoable(mrandom, "_set_cuda_rng_state", set_state),
    ]
    # A tracker created before the patch would hold CUDA semantics: start over.
    mrandom.initialize_rng_tracker(force_reset=True)

    def undo():
        for u in reversed(undos):
            u()
        mrandom.initialize_rng_tracker(force_reset=True)

    return undo


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.split(":")[0] == "cuda"
    return False


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites ``device="cuda"`` (and ``.cuda()``) to the CPU for every torch call made while it is active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.backward or func is torch.autograd.backward:
            return self._backward(*args, **kwargs)
        if func is torch.Tensor.cuda:
            return args[0]
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = _CPU
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        # pin_memory needs an accelerator; megatron only asks for it together with device="cuda".
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        return func(*args, **kwargs)

    def _backward(self, tensors, gradient=None, retain_graph=None, create_graph=False, inputs=None,
                  grad_tensors=None):
        # torch pops a mode while its handler runs, so forwarding backward() as is would run the whole backward
        # pass (including megatron's activation recompute, which builds causal masks) without the rewrite. Run the
        # engine directly, as megatron's own custom_backward does, with the mode pushed again.
        tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
        grads = gradient if gradient is not None else grad_tensors
        grads = (grads,) if grads is None or isinstance(grads, torch.Tensor) else tuple(grads)
        if len(grads) == 1 and len(tensors) > 1:
            grads = grads * len(tensors)
        made = []
        for t, g in zip(tensors, grads):
            if g is None:
                if t.numel() != 1:
                    raise RuntimeError("grad can be implicitly created only for scalar outputs")
                g = torch.ones_like(t, memory_format=torch.preserve_format)
            made.append(g)
        if inputs is not None:
            inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        with self:
            torch.autograd.Variable._execution_engine.run_backward(
                tensors, tuple(made), create_graph if retain_graph is None else retain_graph, create_graph,
                inputs or (), allow_unreachable=True, accumulate_grad=True)


def patch_cuda_factories() -> Callable[[], None]:
    """A ``TorchFunctionMode`` that sends ``device="cuda"`` factory calls to the CPU.

    Needed by: the default causal mask (``transformer.utils.get_default_causal_mask``, built by the local-spec
    attention's softmax when no mask is passed), the token counters in ``pipeline_parallel.schedules.forward_backward_*`` and the optimizer's
    ``found_inf``/grad-norm buffers (``optimizer.optimizer``, ``optimizer.clip_grads``).
    The mode stays on the mode stack of the thread that applied it (the training thread). ``Tensor.backward`` and
    ``torch.autograd.backward`` keep it active during the backward pass (activation recompute needs it);
    ``torch.autograd.grad`` does not. Every torch call pays a small Python dispatch cost while it is active.
    """
    mode = CudaToCpuMode()
    mode.__enter__()

    def undo():
        mode.__exit__(None, None, None)

    return undo


def _import_with_placeholder_triton(module: str):
    """Import ``module`` when ``triton`` is absent: megatron's Mamba mixer imports Triton kernels of its dynamic
    inference engine at module level (``inference.contexts.attention_context.triton.tensor_ops``), which this
    project never runs. A placeholder ``triton`` (``jit`` returns the function, ``language.constexpr`` exists) is
    in ``sys.modules`` only while the import runs, so nothing else ever sees a fake triton."""
    import importlib
    import importlib.util
    import sys
    import types

    if module in sys.modules or importlib.util.find_spec("triton") is not None:
        return importlib.import_module(module)
    triton = types.ModuleType("triton")
    language = types.ModuleType("triton.language")
    triton.jit = lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f)
    language.constexpr = type("constexpr", (), {})
    triton.language = language
    sys.modules["triton"], sys.modules["triton.language"] = triton, language
    try:
        return importlib.import_module(module)
    finally:
        del sys.modules["triton"], sys.modules["triton.language"]


def patch_mamba_kernels() -> Callable[[], None]:
    """megatron's Mamba mixer on the pure-PyTorch kernels of ``backends/mamba_cpu_kernels.py``.

    Needed by: ``ssm.mamba_mixer.MambaMixer.__init__``, which raises "MambaSSM is not installed" without mamba-ssm
    and builds its gated norm (``ExtendedRMSNorm``) on mamba-ssm's ``RMSNorm``, and its forward passes:
    ``_ssm_training`` (``mamba_split_conv1d_scan_combined``: training and log-probs) and ``_ssm_prefill``
    (``mamba_chunk_scan_combined``). The mixer's convolution and decode fallbacks are plain torch already.
    """
    from nemo_igrpo.backends import mamba_cpu_kernels as kernels

    mixer = _import_with_placeholder_triton("megatron.core.ssm.mamba_mixer")
    from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

    class ExtendedRMSNorm(kernels.RMSNormGated):
        """megatron's ``ExtendedRMSNorm`` (mamba-ssm's gated RMSNorm with a checkpoint layout): ``weight`` is
        split over tensor parallel ranks on axis 0."""

        def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
            from megatron.core import parallel_state

            return make_sharded_tensors_for_checkpoint(
                self.state_dict(prefix="", keep_vars=True), prefix, {"weight": 0}, sharded_offsets,
                tp_group=parallel_state.get_tensor_model_parallel_group(), dp_cp_group=metadata["dp_cp_group"])

    undos = [
        _setattr_undoable(mixer, "HAVE_MAMBA_SSM", True),
        _setattr_undoable(mixer, "RMSNormGated", kernels.RMSNormGated),
        _setattr_undoable(mixer, "ExtendedRMSNorm", ExtendedRMSNorm),
        _setattr_undoable(mixer, "mamba_split_conv1d_scan_combined", kernels.mamba_split_conv1d_scan_combined),
        _setattr_undoable(mixer, "mamba_chunk_scan_combined", kernels.mamba_chunk_scan_combined),
    ]

    def undo():
        for u in reversed(undos):
            u()

    return undo


SHIMS: dict[str, Callable[[], Callable[[], None]]] = {
    "current_device": patch_current_device,
    "synchronize": patch_synchronize,
    "rng_tracker": patch_rng_tracker,
    "cuda_factories": patch_cuda_factories,
    "mamba_kernels": patch_mamba_kernels,
}


def apply_cpu_shims(skip: tuple[str, ...] = ()) -> bool:
    """Apply the CPU shims if CUDA is absent. Idempotent. ``skip`` leaves named shims out (tests only).

    Returns True when shims are active after the call.
    """
    if torch.cuda.is_available():
        return False
    unknown = set(skip) - set(SHIMS)
    if unknown:
        raise ValueError(f"unknown shim(s) {sorted(unknown)}; known: {sorted(SHIMS)}")
    for name, patch in SHIMS.items():
        if name in skip or name in _applied:
            continue
        _applied[name] = patch()
    return bool(_applied)


def remove_cpu_shims() -> None:
    """Undo every applied shim (reverse order)."""
    for name in reversed(list(_applied)):
        _applied.pop(name)()


def cpu_shims_active() -> bool:
    """Whether ``apply_cpu_shims`` is in effect in this process."""
    return bool(_applied)
