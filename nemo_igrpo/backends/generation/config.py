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
    # vLLM: free weights and KV cache while the policy trains (sleep mode), wake before generation.
    enable_sleep_mode: bool = True
