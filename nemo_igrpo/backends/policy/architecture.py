"""What the Megatron policy can train, stated once: the architecture rules, checked on a Hugging Face config.

Two callers ask these functions: the model builder (``model.transformer_config_from_hf``, with a transformers config
object) and ``igrpo train --dry-run`` on a login node (``trainer.plan``, with the plain ``config.json`` dict, no torch,
no megatron, no GPU). A rule is therefore written here and nowhere else, and the dry run refuses exactly what the
builder would refuse.

Rules are registered per HF ``model_type`` (``@register("llama")``): the GPT family (Llama, Qwen2) and Nemotron-H
(the hybrid Mamba model; the conversion mapping reads its layer pattern and Mamba sizes from here too). Each rule
returns every problem it finds, as one sentence naming the ``config.json`` key and, where the parallel layout is the
cause, the ``policy.*`` key. Pure Python on purpose: nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

Rule = Callable[[Any, int, int], list[str]]
_RULES: dict[str, Rule] = {}

# The two model families the policy builds (backends/policy/model.py): megatron-core GPTModel and its hybrid
# Mamba model.
GPT_MODEL_TYPES = ("llama", "qwen2")
HYBRID_MODEL_TYPES = ("nemotron_h",)

TP_KEY = "tensor_model_parallel_size"
PP_KEY = "pipeline_model_parallel_size"


class ArchitectureError(ValueError):
    """The model cannot be trained here as configured; the message lists every reason."""


def register(*model_types: str) -> Callable[[Rule], Rule]:
    """Register ``rule(hf_config, tp, pp) -> problems`` for HF ``model_type`` values."""

    def wrap(rule: Rule) -> Rule:
        for model_type in model_types:
            _RULES[model_type] = rule
        return rule

    return wrap


def trainable_model_types() -> list[str]:
    """HF ``model_type`` values the policy can build."""
    return sorted(_RULES)


def field(cfg: Any, name: str, default: Any = None) -> Any:
    """``cfg[name]`` for a config.json dict, ``cfg.name`` for a transformers config; ``default`` when absent or null."""
    value = cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)
    return default if value is None else value


def architecture_problems(cfg: Any, tp: int = 1, pp: int = 1) -> list[str]:
    """Every reason the model in ``cfg`` cannot be trained with tensor parallel ``tp`` and pipeline parallel ``pp``
    (empty when it can)."""
    model_type = field(cfg, "model_type")
    rule = _RULES.get(model_type)
    if rule is None:
        return [f"model_type={model_type!r} is not supported; supported model_types: {trainable_model_types()}"]
    return rule(cfg, tp, pp)


def check_architecture(cfg: Any, tp: int = 1, pp: int = 1) -> None:
    """Raise ``ArchitectureError`` listing every problem ``architecture_problems`` finds."""
    problems = architecture_problems(cfg, tp, pp)
    if problems:
        raise ArchitectureError("; ".join(problems))


# --- shared pieces ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rope:
    """Rotary embedding settings megatron can express."""

    theta: float
    llama3_scaling: bool
    factor: float


# megatron-core hard-codes Llama 3.1's low/high frequency factors and original context for rope_scaling.
_LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SUPPORTED_ROPE_TYPES = ("default", "llama3")


def _rope_parameters(cfg: Any) -> dict:
    """transformers 5 keeps RoPE settings in ``rope_parameters``; transformers 4 (and most config.json files on the
    Hub) at top level (``rope_theta``) and in ``rope_scaling``. Both are read; ``rope_parameters`` wins."""
    scaling = field(cfg, "rope_scaling") or {}
    params = field(cfg, "rope_parameters") or {}
    return {**dict(scaling), **dict(params)}


def rope_problems(cfg: Any) -> list[str]:
    params = _rope_parameters(cfg)
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type == "default":
        return []
    if rope_type == "llama3":
        got = {k: params.get(k) for k in _LLAMA3_FIXED}
        if any(got[k] is None or float(got[k]) != v for k, v in _LLAMA3_FIXED.items()):
            return [f"llama3 rope scaling is supported only with {_LLAMA3_FIXED}, got {got}"]
        return []
    return [f"rope_type={rope_type!r} is not supported; supported: {list(SUPPORTED_ROPE_TYPES)}"]


def rope(cfg: Any) -> Rope:
    """The RoPE settings of ``cfg``; ``ArchitectureError`` for a RoPE type megatron cannot express."""
    problems = rope_problems(cfg)
    if problems:
        raise ArchitectureError("; ".join(problems))
    params = _rope_parameters(cfg)
    theta = float(params.get("rope_theta", field(cfg, "rope_theta", 10000.0)))
    if (params.get("rope_type", params.get("type", "default")) or "default") == "llama3":
        return Rope(theta, True, float(params.get("factor", 8.0)))
    return Rope(theta, False, 8.0)


def num_heads(cfg: Any) -> tuple[int, int]:
    """(attention heads, key/value heads); a config without ``num_key_value_heads`` has one per head."""
    heads = int(field(cfg, "num_attention_heads", 0))
    return heads, int(field(cfg, "num_key_value_heads", heads))


def divisibility_problems(cfg: Any, tp: int, pp: int) -> list[str]:
    """Splits megatron needs: vocabulary and heads over TP ranks, layers over PP stages."""
    problems = []
    vocab = int(field(cfg, "vocab_size", 0))
    heads, kv_heads = num_heads(cfg)
    layers = int(field(cfg, "num_hidden_layers", 0))
    if vocab % tp:
        # No padding: padded rows would change the softmax normaliser unless masked, and logits must equal HF's.
        problems.append(f"vocab_size={vocab} must be divisible by {TP_KEY}={tp} (no vocab padding)")
    if heads % tp or kv_heads % tp:
        problems.append(f"num_attention_heads={heads} and num_key_value_heads={kv_heads} must both be divisible by "
                        f"{TP_KEY}={tp}")
    if layers % pp:
        problems.append(f"num_hidden_layers={layers} must be divisible by {PP_KEY}={pp}")
    return problems


# --- the GPT family (megatron-core GPTModel) -------------------------------------------------------------------------


def qkv_bias(cfg: Any) -> bool:
    """Qwen2 has q/k/v biases (and no other linear bias); Llama has none."""
    return field(cfg, "model_type") == "qwen2"


@register(*GPT_MODEL_TYPES)
def _gpt_rules(cfg: Any, tp: int, pp: int) -> list[str]:
    problems = []
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size"):
        if not field(cfg, key):
            problems.append(f"{key} is missing")
    if problems:
        return problems
    if field(cfg, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={field(cfg, 'hidden_act')!r} is not supported (SwiGLU with silu only)")
    if field(cfg, "model_type") == "qwen2":
        if field(cfg, "use_sliding_window", False):
            problems.append("Qwen2 use_sliding_window=True is not supported (megatron GPTModel has full attention)")
    else:
        attn_bias, mlp_bias = bool(field(cfg, "attention_bias", False)), bool(field(cfg, "mlp_bias", False))
        if attn_bias or mlp_bias:
            # HF's attention_bias also puts a bias on o_proj; megatron can only add it together with all MLP biases.
            problems.append(f"Llama attention_bias={attn_bias} / mlp_bias={mlp_bias} is not supported (only both "
                            "False)")
    return problems + divisibility_problems(cfg, tp, pp) + rope_problems(cfg)


# --- Nemotron-H (megatron-core's hybrid MambaModel) ------------------------------------------------------------------

MAMBA, ATTENTION, MLP, MOE = "M", "*", "-", "E"
_LAYER_SYMBOLS = {"mamba": MAMBA, "linear_attention": MAMBA, "attention": ATTENTION, "full_attention": ATTENTION,
                  "mlp": MLP, "moe": MOE}
# megatron-core's Mamba gated RMSNorm has eps hard-coded to 1e-5; HF uses layer_norm_epsilon for it.
MEGATRON_MAMBA_NORM_EPS = 1e-5


def layer_pattern(cfg: Any) -> str:
    """The hybrid layer pattern, one symbol per layer (``M`` Mamba-2, ``*`` attention, ``-`` MLP, ``E`` MoE), from
    ``hybrid_override_pattern`` (config.json) or ``layers_block_type`` (what transformers 5 derives from it)."""
    pattern = field(cfg, "hybrid_override_pattern")
    if not pattern:
        kinds = field(cfg, "layers_block_type") or field(cfg, "layer_types")
        if not kinds:
            raise ArchitectureError("Nemotron-H config has neither hybrid_override_pattern nor layers_block_type")
        unknown = sorted({k for k in kinds if k not in _LAYER_SYMBOLS})
        if unknown:
            raise ArchitectureError(f"layers_block_type has unknown Nemotron-H layer types {unknown}")
        pattern = "".join(_LAYER_SYMBOLS[k] for k in kinds)
    return str(pattern)


def mamba_dims(cfg: Any) -> dict[str, int]:
    """Mamba-2 sizes: heads, head dim, d_inner, groups, state size, conv kernel (HF key names resolved)."""
    nheads, headdim = int(field(cfg, "mamba_num_heads", 0)), int(field(cfg, "mamba_head_dim", 0))
    return {"nheads": nheads, "headdim": headdim, "d_inner": nheads * headdim,
            "ngroups": int(field(cfg, "n_groups", 0)), "d_state": int(field(cfg, "ssm_state_size", 0)),
            "d_conv": int(field(cfg, "conv_kernel", 0))}


@register(*HYBRID_MODEL_TYPES)
def _nemotron_h_rules(cfg: Any, tp: int, pp: int) -> list[str]:
    problems = [f"{key} is missing" for key in ("hidden_size", "num_attention_heads", "vocab_size", "mamba_num_heads",
                                                 "mamba_head_dim", "n_groups", "ssm_state_size", "conv_kernel")
                if not field(cfg, key)]
    try:
        pattern = layer_pattern(cfg)
    except ArchitectureError as err:
        problems.append(str(err))
    if problems:
        return problems
    bad = sorted(set(pattern) - {MAMBA, ATTENTION, MLP})
    if bad:
        problems.append(f"hybrid_override_pattern {pattern!r} has layer kinds {bad} that are not supported "
                        "(supported: 'M' Mamba-2, '*' attention, '-' MLP; MoE 'E' is not)")
    unsupported = [
        (field(cfg, "use_bias", False) or field(cfg, "mamba_proj_bias", False),
         "use_bias/mamba_proj_bias=True (megatron's Mamba mixer has no in/out projection bias)"),
        (not field(cfg, "use_conv_bias", True), "use_conv_bias=False (megatron's Mamba mixer has a conv1d bias)"),
        (field(cfg, "attention_bias", False), "attention_bias=True"),
        (field(cfg, "mlp_bias", False), "mlp_bias=True"),
        (field(cfg, "mlp_hidden_act", "relu2") != "relu2",
         f"mlp_hidden_act={field(cfg, 'mlp_hidden_act')!r} (only relu2, squared ReLU)"),
        (field(cfg, "mamba_hidden_act", "silu") != "silu",
         f"mamba_hidden_act={field(cfg, 'mamba_hidden_act')!r} (only silu)"),
        (int(field(cfg, "num_nextn_predict_layers", 0)) > 0,
         "multi-token-prediction layers (num_nextn_predict_layers > 0)"),
        (field(cfg, "tie_word_embeddings", False), "tie_word_embeddings=True (Nemotron-H keeps lm_head separate)"),
        (float(field(cfg, "layer_norm_epsilon", 1e-5)) != MEGATRON_MAMBA_NORM_EPS,
         f"layer_norm_epsilon={field(cfg, 'layer_norm_epsilon')} (megatron's Mamba gated RMSNorm uses 1e-5, "
         "hard-coded)"),
    ]
    problems += [f"Nemotron-H variant not supported: {what}" for bad_value, what in unsupported if bad_value]
    d = mamba_dims(cfg)
    if d["nheads"] % d["ngroups"]:
        problems.append(f"mamba_num_heads={d['nheads']} is not divisible by n_groups={d['ngroups']}")
    heads, kv_heads = num_heads(cfg)
    splits = [("vocab_size", int(field(cfg, "vocab_size")), tp, TP_KEY),
              ("num_attention_heads", heads, tp, TP_KEY), ("num_key_value_heads", kv_heads, tp, TP_KEY),
              ("mamba_num_heads", d["nheads"], tp, TP_KEY), ("n_groups", d["ngroups"], tp, TP_KEY),
              ("intermediate_size", int(field(cfg, "intermediate_size", 0)), tp, TP_KEY),
              (f"the number of layers (hybrid_override_pattern {pattern!r})", len(pattern), pp, PP_KEY)]
    problems += [f"{name}={value} is not divisible by {key}={size}"
                 for name, value, size, key in splits if value % size]
    return problems


def is_hybrid(cfg: Any) -> bool:
    """Whether ``cfg`` (config.json dict or transformers config) is a hybrid Mamba model (Nemotron-H)."""
    return field(cfg, "model_type") in HYBRID_MODEL_TYPES


def micro_batching_problems(cfg: Any, micro_batching: str) -> list[str]:
    """Why ``policy.micro_batching`` cannot lay out this model's micro-batches (empty when it can). Hybrid Mamba
    models never pack: a Mamba layer's recurrent state runs along the whole row, through every sequence in it."""
    if micro_batching == "packed" and is_hybrid(cfg):
        return ["'packed' is not supported for hybrid Mamba models (Nemotron-H): the recurrent state would flow from "
                "one sequence of a row into the next; use 'bucketed' or 'auto'"]
    return []


# --- parameter tensors (the memory plan's model) ----------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterTensor:
    """One parameter tensor as Hugging Face names it, and how megatron-core lays it out: ``layer`` (None: the
    embedding, on the first pipeline stage, or the final norm / output layer, on the last), ``tp_split`` (divided
    across tensor-parallel ranks; norms over the hidden size are replicated)."""

    name: str
    numel: int
    layer: int | None
    tp_split: bool


def _attention_tensors(prefix: str, layer: int, cfg: Any, bias: bool) -> list[ParameterTensor]:
    h = int(field(cfg, "hidden_size"))
    heads, kv = num_heads(cfg)
    hd = int(field(cfg, "head_dim", h // heads))
    out = [ParameterTensor(f"{prefix}.q_proj.weight", h * heads * hd, layer, True),
           ParameterTensor(f"{prefix}.k_proj.weight", h * kv * hd, layer, True),
           ParameterTensor(f"{prefix}.v_proj.weight", h * kv * hd, layer, True),
           ParameterTensor(f"{prefix}.o_proj.weight", heads * hd * h, layer, True)]
    if bias:
        out += [ParameterTensor(f"{prefix}.{n}_proj.bias", width * hd, layer, True)
                for n, width in (("q", heads), ("k", kv), ("v", kv))]
    return out


def parameter_tensors(cfg: Any) -> list[ParameterTensor]:
    """Every parameter of the model in ``cfg`` (config.json dict or transformers config); the counts equal Hugging
    Face's. For the GPT family and Nemotron-H."""
    mt = field(cfg, "model_type")
    h, v = int(field(cfg, "hidden_size")), int(field(cfg, "vocab_size"))
    ffn = int(field(cfg, "intermediate_size", 0))
    out: list[ParameterTensor] = []
    if mt in GPT_MODEL_TYPES:
        out.append(ParameterTensor("model.embed_tokens.weight", v * h, None, True))
        for i in range(int(field(cfg, "num_hidden_layers"))):
            p = f"model.layers.{i}"
            out.append(ParameterTensor(f"{p}.input_layernorm.weight", h, i, False))
            out += _attention_tensors(f"{p}.self_attn", i, cfg, qkv_bias(cfg))
            out.append(ParameterTensor(f"{p}.post_attention_layernorm.weight", h, i, False))
            out += [ParameterTensor(f"{p}.mlp.{n}_proj.weight", h * ffn, i, True) for n in ("gate", "up", "down")]
        final_norm = "model.norm.weight"
    elif mt in HYBRID_MODEL_TYPES:
        d = mamba_dims(cfg)
        conv = d["d_inner"] + 2 * d["ngroups"] * d["d_state"]
        out.append(ParameterTensor("model.embeddings.weight", v * h, None, True))
        for i, kind in enumerate(layer_pattern(cfg)):
            p = f"model.layers.{i}"
            out.append(ParameterTensor(f"{p}.norm.weight", h, i, False))
            if kind == MAMBA:
                out += [ParameterTensor(f"{p}.mixer.in_proj.weight", h * (2 * d["d_inner"] + 2 * d["ngroups"] *
                                                                              d["d_state"] + d["nheads"]), i, True),
                        ParameterTensor(f"{p}.mixer.conv1d.weight", conv * d["d_conv"], i, True),
                        ParameterTensor(f"{p}.mixer.conv1d.bias", conv, i, True)]
                out += [ParameterTensor(f"{p}.mixer.{n}", d["nheads"], i, True) for n in ("dt_bias", "A_log", "D")]
                # The gated norm runs over the inner dimension, which TP splits.
                out += [ParameterTensor(f"{p}.mixer.norm.weight", d["d_inner"], i, True),
                        ParameterTensor(f"{p}.mixer.out_proj.weight", d["d_inner"] * h, i, True)]
            elif kind == ATTENTION:
                out += _attention_tensors(f"{p}.mixer", i, cfg, bias=False)
            elif kind == MLP:
                out += [ParameterTensor(f"{p}.mixer.up_proj.weight", h * ffn, i, True),
                        ParameterTensor(f"{p}.mixer.down_proj.weight", ffn * h, i, True)]
            else:
                raise ArchitectureError(f"hybrid_override_pattern: no parameter model for layer kind {kind!r}")
        final_norm = "model.norm_f.weight"
    else:
        known = sorted(GPT_MODEL_TYPES + HYBRID_MODEL_TYPES)
        raise ArchitectureError(f"model_type={mt!r}: no parameter model (known: {known})")
    out.append(ParameterTensor(final_norm, h, None, False))
    if not field(cfg, "tie_word_embeddings", False):
        out.append(ParameterTensor("lm_head.weight", v * h, None, True))
    return out
