"""Rollout generation: which engine, and how it samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class GenerationConfig:
    # "hf": Hugging Face transformers (CPU, tests). "vllm": colocated vLLM engine (GPU).
    backend: str = "hf"
    # Training-time sampling temperature. Paper: 0.7. Log-probs for the loss use the same temperature.
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = -1
    # Longest completion in tokens. Paper: 4096.
    max_new_tokens: int = 4096
    # Prompts per generate() call; bounds memory of the HF backend.
    batch_size: int = 64
    # vLLM: share of GPU memory for weights + KV cache while generating.
    gpu_memory_utilization: float = 0.6
    # vLLM: reuse the KV cache of shared prefixes (Stage-2 prompts share the problem with Stage 1). null (default):
    # on for attention-only models, off for hybrid Mamba models (Nemotron-H): their cached prefix must also carry the
    # Mamba state, which vLLM supports only with constraints (block-aligned states) that are not tested here.
    enable_prefix_caching: Optional[bool] = None
    # vLLM: how a refit enters the engine. "layerwise": one vLLM layerwise-reload session (restores checkpoint-format
    # parameters, re-runs each layer's post-load processing; needed where vLLM repacks weights, e.g. its CPU GEMM
    # layouts). "load_weights": the model's plain load_weights into the live parameters (hybrid models have had bugs
    # in vLLM's layerwise reload). "auto" (default): load_weights for hybrid Mamba models, layerwise otherwise.
    vllm_refit: str = "auto"
    # vLLM: free weights and KV cache while the policy computes log-probs and trains (sleep mode); the trainer's
    # lifecycle wakes the engine before refit and generation (docs/vllm.md).
    enable_sleep_mode: bool = True
    # vLLM sleep level. 1: weights offloaded to host memory and copied back on wake (the refit then overwrites them);
    # 2: weights discarded, no host copy and no transfer, and the lifecycle refits before any generation that follows
    # a sleep. Level 2 saves a weights-sized host buffer per GPU and two copies per step.
    sleep_level: int = 1
    # vLLM: longest prompt + completion, in tokens. 0 derives it from the run's sequence budget: data.max_prompt_tokens
    # + (iGRPO) algorithm.refinement.max_draft_tokens and the Stage-2 template + generation.max_new_tokens
    # (`igrpo train --dry-run` prints it). A prompt that would not leave room for max_new_tokens is an error.
    max_model_len: int = 0
