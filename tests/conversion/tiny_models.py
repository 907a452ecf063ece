"""Tiny random HF checkpoints on disk (safetensors) for the conversion tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

# Stand-in tokenizer file: the converter copies tokenizer files verbatim, it never parses them.
TOKENIZER_JSON = '{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}'


def _perturb(model: torch.nn.Module, seed: int) -> None:
    # Random init leaves norms at 1 and some tensors constant; random values make a swapped name visible.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 1 else 0.0))


def write(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(str(path))
    (path / "tokenizer.json").write_text(TOKENIZER_JSON)
    return path


def llama(path: Path, tie: bool = False) -> Path:
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=tie)
    model = transformers.LlamaForCausalLM(cfg)
    _perturb(model, 1)
    return write(model, path)


def qwen2(path: Path) -> Path:
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(cfg)
    _perturb(model, 2)
    return write(model, path)


def nemotron_h_config(pattern: str = "M*-M-") -> transformers.NemotronHConfig:
    return transformers.NemotronHConfig(
        vocab_size=64, hidden_size=32, hybrid_override_pattern=pattern, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=48, ssm_state_size=8, mamba_num_heads=8, mamba_head_dim=8, n_groups=2,
        conv_kernel=4, chunk_size=16, max_position_embeddings=128)


def nemotron_h(path: Path, pattern: str = "M*-M-") -> Path:
    model = transformers.NemotronHForCausalLM(nemotron_h_config(pattern))
    _perturb(model, 3)
    return write(model, path)
