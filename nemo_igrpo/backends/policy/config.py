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
    micro_batch_size: int = 8
    # Sequences per forward-only micro-batch in get_logprobs (no activations kept, so it can be larger); 0: as
    # micro_batch_size.
    logprob_micro_batch_size: int = 0
    # Recompute activations in the backward pass to save memory. GPTModel: Megatron "full" recompute. Nemotron-H:
    # selective recompute of attention and MLP (megatron-core 0.16.1's hybrid stack cannot recompute Mamba layers;
    # a start-up warning says so).
    activation_checkpointing: bool = False
    # With a KL penalty (algorithm.kl_coef > 0): keep the frozen reference policy's weights in CPU memory between uses
    # instead of on the device (one model copy of device memory saved, two host-device copies per step spent).
    reference_offload: bool = False
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
