"""Tiny HF reference models (random init, then every parameter perturbed so norms and biases are non-trivial)."""

from __future__ import annotations

import torch
import transformers

KINDS = ("llama", "qwen2_tied", "qwen2_untied")


def tiny_config(kind: str):
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=64)
    if kind == "llama":
        return transformers.LlamaConfig(num_hidden_layers=4, rope_theta=5000.0, tie_word_embeddings=False, **common)
    if kind == "qwen2_tied":
        return transformers.Qwen2Config(num_hidden_layers=2, rope_theta=20000.0, tie_word_embeddings=True, **common)
    if kind == "qwen2_untied":
        return transformers.Qwen2Config(num_hidden_layers=2, rope_theta=20000.0, tie_word_embeddings=False, **common)
    raise ValueError(kind)


def tiny_hf_model(kind: str, seed: int = 0):
    config = tiny_config(kind)
    torch.manual_seed(seed)
    cls = transformers.LlamaForCausalLM if config.model_type == "llama" else transformers.Qwen2ForCausalLM
    model = cls(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return config, model


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """State dict as a checkpoint stores it: a tied lm_head is left out."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd
