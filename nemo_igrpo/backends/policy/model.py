"""The one place that builds the policy's megatron-core model from a Hugging Face config, for both families:

* Llama / Qwen2 (``model_type`` llama, qwen2): ``GPTModel``.
* Nemotron-H (``nemotron_h``): the hybrid Mamba-2 / attention / MLP model, ``MambaModel`` in megatron-core 0.16.1
  (the pinned release; later releases rename it ``HybridModel``). Its layer spec is written here for both backends:
  Transformer Engine on GPU (what megatron ships), megatron's local modules otherwise (CPU, where ``cpu_shims``
  supplies pure-PyTorch Mamba kernels).

``build_model`` picks the family; each check that a config can be built (architecture, divisibility by TP/PP)
raises ValueError naming the HF key.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nemo_igrpo.backends.policy import architecture
from nemo_igrpo.backends.policy.architecture import GPT_MODEL_TYPES, HYBRID_MODEL_TYPES

log = logging.getLogger(__name__)


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

    if architecture.field(hf_config, "model_type") not in GPT_MODEL_TYPES:
        raise ValueError(f"model_type={architecture.field(hf_config, 'model_type')!r} is not supported by GPTModel; "
                         f"supported model_types: {list(GPT_MODEL_TYPES)}")
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


# ------------------------------------------------------------------------------------------ Nemotron-H (hybrid)
def hybrid_config_from_hf(hf_config, dtype: torch.dtype, tp: int = 1, pp: int = 1, **overrides):
    """``(TransformerConfig, MambaModel kwargs)`` for megatron's hybrid model equal in maths to HF's Nemotron-H.

    Raises ``ArchitectureError`` (a ValueError) for variants the mapping does not cover, sizes that do not split over
    ``tp``/``pp``, and a ``layer_norm_epsilon`` other than the 1e-5 megatron hard-codes in the Mamba gated norm
    (logits would differ). ``overrides`` go to TransformerConfig as is.
    """
    from megatron.core.activations import squared_relu
    from megatron.core.transformer import TransformerConfig

    # The rules (supported variants, divisibility, the gated-norm eps) live in architecture.py, with the dry run's.
    architecture.check_architecture(hf_config, tp, pp)
    eps = float(architecture.field(hf_config, "layer_norm_epsilon", 1e-5))
    d = architecture.mamba_dims(hf_config)
    pattern = architecture.layer_pattern(hf_config)
    heads = int(hf_config.num_attention_heads)
    kwargs = dict(
        num_layers=len(pattern),
        hidden_size=int(hf_config.hidden_size),
        ffn_hidden_size=int(hf_config.intermediate_size),
        num_attention_heads=heads,
        num_query_groups=int(architecture.field(hf_config, "num_key_value_heads", None) or heads),
        kv_channels=int(architecture.field(hf_config, "head_dim", None) or hf_config.hidden_size // heads),
        mamba_state_dim=d["d_state"],
        mamba_head_dim=d["headdim"],
        mamba_num_groups=d["ngroups"],
        mamba_num_heads=d["nheads"],
        is_hybrid_model=True,
        normalization="RMSNorm",
        layernorm_epsilon=eps,
        gated_linear_unit=False,
        activation_func=squared_relu,
        add_bias_linear=False,
        init_method_std=float(architecture.field(hf_config, "initializer_range", 0.02)),
        use_cpu_initialization=not torch.cuda.is_available(),
        **common_transformer_kwargs(dtype, tp, pp),
    )
    kwargs.update(overrides)
    model_kwargs = dict(
        vocab_size=int(hf_config.vocab_size),
        max_sequence_length=int(architecture.field(hf_config, "max_position_embeddings", 4096)),
        hybrid_override_pattern=pattern,
        position_embedding_type="none",  # Nemotron-H attention has no positional encoding
        share_embeddings_and_output_weights=False,  # Nemotron-H never ties them
    )
    return TransformerConfig(**kwargs), model_kwargs


def hybrid_stack_spec(chunk_size: int, transformer_engine: bool):
    """The hybrid stack's layer spec: megatron's ``mamba_stack_spec`` structure (Mamba, attention and MLP layers),
    with the Mamba scan's chunk size set and the backend chosen.

    With Transformer Engine each pre-norm is fused into the linear that follows it (as in megatron's own spec).
    With megatron's local modules the norms are separate modules, and ``sharded_state_dict_keys_map`` renames them
    to the fused names in checkpoints, so both write the same dist-checkpoint keys. ``chunk_size`` only changes the
    work split of the scan, not its result; megatron's default is 128, HF's ``chunk_size`` is used here.
    """
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.ssm.mamba_block import MambaStack, MambaStackSubmodules
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    if transformer_engine:
        from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider

        backend = TESpecProvider()
        norm, keys = IdentityOp, {}
        norm_linear = backend.column_parallel_layer_norm_linear()
    else:
        from megatron.core.models.backends import LocalSpecProvider

        backend = LocalSpecProvider()
        norm = backend.layer_norm(rms_norm=True, for_qk=False)
        norm_linear = backend.column_parallel_linear()

    def keys_map(norm_name: str, linear: str) -> dict[str, str]:
        return {} if transformer_engine else {f"{norm_name}.": f"{linear}.layer_norm_"}

    mamba = ModuleSpec(module=MambaLayer, submodules=MambaLayerSubmodules(
        norm=norm,
        mixer=ModuleSpec(module=MambaMixer, params={"chunk_size": int(chunk_size)},
                         submodules=MambaMixerSubmodules(in_proj=norm_linear,
                                                         out_proj=backend.row_parallel_linear())),
        mamba_bda=get_bias_dropout_add,
        sharded_state_dict_keys_map=keys_map("norm", "mixer.in_proj")))
    attention = ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=norm,
        self_attention=ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                                  submodules=SelfAttentionSubmodules(
                                      linear_qkv=norm_linear, core_attention=backend.core_attention(),
                                      linear_proj=backend.row_parallel_linear())),
        self_attn_bda=get_bias_dropout_add,
        sharded_state_dict_keys_map=keys_map("input_layernorm", "self_attention.linear_qkv")))
    mlp = ModuleSpec(module=MLPLayer, submodules=TransformerLayerSubmodules(
        pre_mlp_layernorm=norm,
        mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=norm_linear,
                                                            linear_fc2=backend.row_parallel_linear())),
        mlp_bda=get_bias_dropout_add,
        sharded_state_dict_keys_map=keys_map("pre_mlp_layernorm", "mlp.linear_fc1")))
    return ModuleSpec(module=MambaStack, submodules=MambaStackSubmodules(
        mamba_layer=mamba, attention_layer=attention, mlp_layer=mlp))


@contextlib.contextmanager
def _final_norm_without_te(transformer_engine: bool):
    """megatron 0.16's ``MambaStack`` builds its final norm with TE's ``TENorm`` whatever the spec; without TE that
    raises, so the local build uses megatron's torch norm (same ``weight``, same checkpoint key)."""
    if transformer_engine:
        yield
        return
    from megatron.core.ssm import mamba_block
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    original = mamba_block.TENorm
    mamba_block.TENorm = WrappedTorchNorm
    try:
        yield
    finally:
        mamba_block.TENorm = original


def _require_mamba_kernels() -> None:
    if torch.cuda.is_available():
        missing = [m for m in ("mamba_ssm", "causal_conv1d") if not importable(m)]
        if missing:
            raise RuntimeError(f"Nemotron-H on GPU needs the {' and '.join(missing)} kernels (built in the Dockerfile; "
                               "pip install mamba-ssm causal-conv1d --no-build-isolation)")
        return
    from nemo_igrpo.backends.cpu_shims import cpu_shims_active

    if not cpu_shims_active():
        raise RuntimeError("Nemotron-H on CPU needs the CPU shims (backends/cpu_shims.py), which install the "
                           "pure-PyTorch Mamba kernels: call initialize_parallel first")


def build_hybrid_model(hf_config, dtype: torch.dtype, **config_overrides) -> list[torch.nn.Module]:
    """Megatron's hybrid ``MambaModel`` for this rank's TP/PP position (Nemotron-H); see ``build_gpt_model`` for
    the common contract (vocab-parallel logits, device, dtype). A_log and D stay float32 whatever ``dtype`` is
    (megatron creates them so; the generator must see the same decay rates)."""
    from megatron.core import parallel_state
    from megatron.core.models.mamba import MambaModel

    _require_mamba_kernels()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    config, model_kwargs = hybrid_config_from_hf(hf_config, dtype, tp=tp, pp=pp, **config_overrides)
    te = use_transformer_engine()
    with _final_norm_without_te(te):
        model = MambaModel(
            config=config,
            mamba_stack_spec=hybrid_stack_spec(int(architecture.field(hf_config, "chunk_size", 128)), te),
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
            parallel_output=True,
            **model_kwargs,
        )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return [model]


# ------------------------------------------------------------------------------------------------- entry point
def recompute_settings(hf_config, activation_checkpointing: bool) -> dict:
    """TransformerConfig recompute settings for ``policy.activation_checkpointing``.

    GPTModel: full recompute of every layer. The hybrid stack of megatron-core 0.16.1 has no full-layer recompute
    (``MambaStack`` never checkpoints a layer, so "full" would be ignored silently); the most it supports is
    selective recompute of the attention cores and MLPs of its attention and MLP layers, which is used, and a
    start-up warning says that the Mamba layers keep their activations.
    """
    if not activation_checkpointing:
        return {}
    if not architecture.is_hybrid(hf_config):
        return dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    log.warning("policy.activation_checkpointing: megatron-core's hybrid (Mamba) stack has no full activation "
                "recompute in this version; recomputing only the attention cores and MLPs (selective recompute: "
                "core_attn, mlp). Mamba layers keep their activations in memory.")
    return dict(recompute_granularity="selective", recompute_modules=["core_attn", "mlp"])


def build_model(hf_config, dtype: torch.dtype, activation_checkpointing: bool = False) -> list[torch.nn.Module]:
    """The policy's model chunks for ``hf_config``: GPTModel (Llama/Qwen2) or the hybrid model (Nemotron-H).
    Requires ``initialize_parallel`` first."""
    model_type = architecture.field(hf_config, "model_type")
    if model_type not in GPT_MODEL_TYPES + HYBRID_MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not supported; supported model_types: "
                         f"{architecture.trainable_model_types()}")
    overrides = recompute_settings(hf_config, activation_checkpointing)
    if architecture.is_hybrid(hf_config):
        return build_hybrid_model(hf_config, dtype, **overrides)
    return build_gpt_model(hf_config, dtype, **overrides)


def layer_offset(model: torch.nn.Module) -> int:
    """Global index of this chunk's first transformer layer (its PP offset)."""
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    return get_transformer_layer_offset(model.config)
