"""The Megatron policy: model source, parallel layout, precision, optimizer and learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OptimizerConfig:
    # Adam learning rate. Paper: 1e-6.
    lr: float = 1e-6
    # Cosine decay floor as a fraction of lr. Paper: 0.1.
    min_lr_ratio: float = 0.1
    # Linear warmup as a fraction of the total steps. Paper: 0.1.
    warmup_ratio: float = 0.1
    # Decoupled (AdamW) weight decay; as in Megatron, biases and 1-D parameters (norm weights) get none.
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # Clip the global gradient norm to this value; 0 disables clipping.
    clip_grad: float = 1.0
    # Megatron's distributed optimizer (ZeRO-1 over data parallel). GPU only: ignored with a warning on CPU.
    # A checkpoint's optimizer state is stored per model tensor, so it reshards across TP/PP/DP either way.
    use_distributed_optimizer: bool = True


@dataclass
class PolicyConfig:
    # Hugging Face model directory (config.json + safetensors + tokenizer) to start from: Llama/Qwen2 family or
    # Nemotron-H (hybrid Mamba, docs/nemotron_h.md). Each rank reads only its own shard of it (memory-mapped).
    model_path: str = ""
    # Tokenizer directory; empty: model_path.
    tokenizer_path: str = ""
    # Load custom model code from the model directory. Off by default (it runs code shipped with the checkpoint).
    trust_remote_code: bool = False
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    # bf16 on GPU, fp32 on CPU (CPU kernels in bf16 are slow and imprecise). "auto" picks by device.
    precision: str = "auto"
    # Sequences per forward/backward micro-batch; a step is split into micro-batches with gradient accumulation.
    # With a token budget (below) it sets the default budget: micro_batch_size x the step's longest sequence.
    micro_batch_size: int = 8
    # Sequences per forward-only micro-batch in get_logprobs (no activations kept, so it can be larger); 0: as
    # micro_batch_size.
    logprob_micro_batch_size: int = 0
    # How a step's sequences form micro-batches (backends/policy/micro_batches.py). "padded": micro_batch_size rows
    # in order, each padded to the step's longest sequence (the reference layout). "bucketed": sorted by length and cut
    # by the token budget, each micro-batch padded to its own longest row. "packed": several sequences share a row,
    # attention kept inside each (THD under Transformer Engine, a block-diagonal mask otherwise). "auto": packed under
    # Transformer Engine, bucketed otherwise (a mask computes, then discards, cross-sequence attention). The step's
    # gradient is the same for all four. Measured: docs/benchmarks.md.
    micro_batching: str = "auto"
    # Token budget of a training micro-batch: rows x width of its padded or packed rows. 0: micro_batch_size x the
    # step's longest sequence, which is what one padded micro-batch held.
    micro_batch_tokens: int = 0
    # The same for get_logprobs; 0: logprob_micro_batch_size (or micro_batch_size) x the longest sequence.
    logprob_micro_batch_tokens: int = 0
    # Recompute activations in the backward pass to save memory. GPTModel: Megatron "full" recompute. Nemotron-H:
    # selective recompute of attention and MLP (megatron-core 0.16.1's hybrid stack cannot recompute Mamba layers;
    # a start-up warning says so).
    activation_checkpointing: bool = False
    # With a KL penalty (algorithm.kl_coef > 0): keep the frozen reference policy's weights in CPU memory between uses
    # instead of on the device (one model copy of device memory saved, two host-device copies per step spent).
    reference_offload: bool = False
    # Move the optimizer state (fp32 master weights and Adam moments: 12 bytes per parameter, divided by DP with the
    # distributed optimizer) to host memory while the colocated generator runs, and back before training. Frees that
    # much GPU memory for vLLM's KV cache at the cost of two host transfers per step. Not from the paper.
    offload_optimizer_during_generation: bool = False
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
