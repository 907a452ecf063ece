"""Build megatron-core GPTModel chunks for the Llama/Qwen2 family from a Hugging Face config."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nemo_igrpo.backends.policy import architecture


@dataclass(frozen=True)
class GPTArgs:
    """The GPTModel constructor arguments that are not part of TransformerConfig."""

    vocab_size: int
    max_sequence_length: int
    rotary_base: float
    rope_scaling: bool
    rope_scaling_factor: float
    share_embeddings_and_output_weights: bool


def common_transformer_kwargs(dtype: torch.dtype, tp: int, pp: int) -> dict:
    """TransformerConfig settings every architecture here shares: precision, parallel sizes, no dropout (RL
    log-probs must be deterministic), and no fused kernels (they need apex/TE; on GPU the TE spec brings its own)."""
    return dict(
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        attention_softmax_in_fp32=True,
        apply_query_key_layer_scaling=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        sequence_parallel=False,
    )


def transformer_config_from_hf(hf_config, dtype: torch.dtype, tp: int = 1, pp: int = 1, **overrides):
    """Map a Llama/Qwen2 HF config to ``(TransformerConfig, GPTArgs)``.

    Refuses (``architecture.check_architecture``) everything that would otherwise fail deep inside megatron or,
    worse, run with silently different maths: unsupported architecture, vocab/heads not divisible by ``tp``, layers
    not divisible by ``pp``, biases megatron cannot express, sliding-window attention, unsupported RoPE scaling.
    ``overrides`` go to TransformerConfig as is (e.g. recompute settings).
    """
    from megatron.core.transformer import TransformerConfig

    # The rules live in architecture.py, shared with the login-node dry run (igrpo train --dry-run).
    architecture.check_architecture(hf_config, tp, pp)
    heads, kv_heads = architecture.num_heads(hf_config)
    rope = architecture.rope(hf_config)
    vocab = int(hf_config.vocab_size)
    layers = int(hf_config.num_hidden_layers)
    head_dim = int(architecture.field(hf_config, "head_dim", None) or hf_config.hidden_size // heads)
    on_cpu = not torch.cuda.is_available()
    kwargs = dict(
        num_layers=layers,
        hidden_size=int(hf_config.hidden_size),
        ffn_hidden_size=int(hf_config.intermediate_size),
        num_attention_heads=heads,
        num_query_groups=kv_heads,
        kv_channels=head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=float(hf_config.rms_norm_eps),
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=architecture.qkv_bias(hf_config),
        init_method_std=float(architecture.field(hf_config, "initializer_range", 0.02)),
        apply_rope_fusion=False,
        # CPU init builds each full weight and slices it, so a TP=2 model starts from the same weights as TP=1.
        use_cpu_initialization=on_cpu,
        **common_transformer_kwargs(dtype, tp, pp),
    )
    kwargs.update(overrides)
    config = TransformerConfig(**kwargs)
    args = GPTArgs(
        vocab_size=vocab,
        max_sequence_length=int(architecture.field(hf_config, "max_position_embeddings", 4096)),
        rotary_base=rope.theta,
        rope_scaling=rope.llama3_scaling,
        rope_scaling_factor=rope.factor,
        share_embeddings_and_output_weights=bool(architecture.field(hf_config, "tie_word_embeddings", False)),
    )
    return config, args


def use_transformer_engine() -> bool:
    """TE layer spec only where it can run: CUDA present and transformer_engine importable."""
    return torch.cuda.is_available() and importable("transformer_engine")


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def layer_spec(config):
    """The transformer layer spec: TE on GPU when available, megatron's local (torch) modules otherwise."""
    from megatron.core.models.gpt import gpt_layer_specs

    if use_transformer_engine():
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    return gpt_layer_specs.get_gpt_layer_local_spec(normalization=config.normalization)


def build_gpt_model(hf_config, dtype: torch.dtype, **config_overrides) -> list[torch.nn.Module]:
    """GPTModel chunks (one per virtual stage; currently always one) for this rank's pipeline stage.

    Requires ``initialize_parallel`` first. Output logits are vocab-parallel (``parallel_output=True``): each TP
    rank holds ``vocab/tp`` columns; use ``policy.logprobs`` on them. The module is on the layout's device, in
    ``dtype``, train mode.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    config, args = transformer_config_from_hf(hf_config, dtype, tp=tp, pp=pp, **config_overrides)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(config),
        vocab_size=args.vocab_size,
        max_sequence_length=args.max_sequence_length,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=args.share_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=int(args.rotary_base) if float(args.rotary_base).is_integer() else args.rotary_base,
        rope_scaling=args.rope_scaling,
        rope_scaling_factor=args.rope_scaling_factor,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    # A chunk belongs to this PP stage: layer_offset tells weights.py the global index of its first layer.
    return [model]


def layer_offset(model: torch.nn.Module) -> int:
    """Global index of this chunk's first transformer layer (its PP offset)."""
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    return get_transformer_layer_offset(model.config)
