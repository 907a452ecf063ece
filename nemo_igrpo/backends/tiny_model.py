"""The tiny Llama of the CPU demo and the tests (its shape is also the dry run's built-in plan for the demo recipe)."""

from __future__ import annotations


def demo_model_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 320,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
):
    """A ``transformers.LlamaConfig`` for a model of a few hundred thousand parameters.

    head_dim is hidden_size / num_heads = 32 by default: vLLM's CPU attention needs head_dim >= 32. Grouped-query
    attention (2 KV heads) exercises the same converter paths as Qwen2/Llama-3. Untied embeddings by default, like
    the 7B models the recipes target.
    """
    from transformers import LlamaConfig

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=0.02,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        torch_dtype="float32",
    )
