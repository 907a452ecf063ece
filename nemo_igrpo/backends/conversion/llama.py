"""The one name/layout mapping for the Llama/Qwen2 family: full Megatron GPTModel state dict <-> HF state dict.

"Full" means unsharded (TP=1) with global layer indices; sharding lives in ``backends.policy.weights``.
Pure torch, no megatron import: tensors are only reshaped/concatenated/split, so a round trip is bit-identical.

Megatron layouts that differ from HF:
- ``linear_qkv`` stacks, per query group g, [q heads of g; k_g; v_g] (so TP splits whole groups); bias likewise.
- ``linear_fc1`` is [gate; up] (SwiGLU).
- Pre-attention/pre-MLP RMSNorm weights live in ``input_layernorm``/``pre_mlp_layernorm`` in the local spec and are
  fused into the following linear (``linear_qkv.layer_norm_weight``/``linear_fc1.layer_norm_weight``) in the
  Transformer Engine spec. ``megatron_to_hf`` accepts either; ``hf_to_megatron`` writes the one asked for.
- Tied embeddings: Megatron has no ``output_layer.weight`` (it reuses the embedding); HF checkpoints may or may not
  store ``lm_head.weight``. ``hf_to_megatron`` ignores it when tied; ``megatron_to_hf`` omits it when tied.
"""

from __future__ import annotations

import re

import torch

from nemo_igrpo.backends.conversion.sources import Source, fuse_qkv_groups, join_all

# Megatron keys that are not weights (TE/fp8 metadata); never mapped.
_SKIP_SUFFIX = "._extra_state"


def _dims(hf_config) -> tuple[int, int, int, int]:
    heads = int(hf_config.num_attention_heads)
    groups = int(getattr(hf_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads)
    return heads, groups, head_dim, int(hf_config.hidden_size)


def tied(hf_config) -> bool:
    return bool(getattr(hf_config, "tie_word_embeddings", False))


def has_qkv_bias(hf_config) -> bool:
    return hf_config.model_type == "qwen2" or bool(getattr(hf_config, "attention_bias", False))


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hf_config) -> torch.Tensor:
    """HF q/k/v (weights [out, in] or biases [out]) -> Megatron's per-group interleaved linear_qkv."""
    return fuse_qkv_groups(q, k, v, _dims(hf_config)[2])


def split_qkv(qkv: torch.Tensor, hf_config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``fuse_qkv``."""
    heads, groups, hd, _ = _dims(hf_config)
    rest = qkv.shape[1:]
    per_group = heads // groups * hd
    qkv = qkv.reshape(groups, per_group + 2 * hd, *rest)
    q, k, v = torch.split(qkv, [per_group, hd, hd], dim=1)
    return (
        q.reshape(-1, *rest).clone(),
        k.reshape(-1, *rest).clone(),
        v.reshape(-1, *rest).clone(),
    )


def megatron_sources(hf_config, transformer_engine: bool = False) -> dict[str, Source]:
    """Every Megatron GPTModel tensor (local-spec names, or TE names if asked) and the HF tensors it is made of."""
    _, _, hd, _ = _dims(hf_config)
    ffn = int(hf_config.intermediate_size)
    out = {
        "embedding.word_embeddings.weight": Source(("model.embed_tokens.weight",)),
        "decoder.final_layernorm.weight": Source(("model.norm.weight",)),
    }
    if not tied(hf_config):
        out["output_layer.weight"] = Source(("lm_head.weight",))
    in_norm = "self_attention.linear_qkv.layer_norm_weight" if transformer_engine else "input_layernorm.weight"
    mlp_norm = "mlp.linear_fc1.layer_norm_weight" if transformer_engine else "pre_mlp_layernorm.weight"
    for i in range(int(hf_config.num_hidden_layers)):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[m + in_norm] = Source((h + "input_layernorm.weight",))
        out[m + mlp_norm] = Source((h + "post_attention_layernorm.weight",))
        out[m + "self_attention.linear_qkv.weight"] = Source(
            tuple(h + f"self_attn.{x}_proj.weight" for x in "qkv"), qkv_head_dim=hd)
        if has_qkv_bias(hf_config):
            out[m + "self_attention.linear_qkv.bias"] = Source(
                tuple(h + f"self_attn.{x}_proj.bias" for x in "qkv"), qkv_head_dim=hd)
        out[m + "self_attention.linear_proj.weight"] = Source((h + "self_attn.o_proj.weight",))
        out[m + "mlp.linear_fc1.weight"] = Source((h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"),
                                                  sections=(ffn, ffn))
        out[m + "mlp.linear_fc2.weight"] = Source((h + "mlp.down_proj.weight",))
    return out


def canonical_hf_name(name: str) -> str:
    """HF names are the same on disk and in memory for this family."""
    return name


def ignored_hf_name(name: str, hf_config) -> bool:
    """HF tensors that are not Megatron weights: rotary ``inv_freq`` buffers (derived from the config) and a tied
    model's ``lm_head.weight`` (a copy of the embedding)."""
    return name.endswith("rotary_emb.inv_freq") or (tied(hf_config) and name == "lm_head.weight")


def hf_to_megatron(hf_sd: dict[str, torch.Tensor], hf_config, transformer_engine: bool = False
                   ) -> dict[str, torch.Tensor]:
    """HF Llama/Qwen2 state dict -> full Megatron GPTModel state dict (local-spec names, or TE names if asked).

    Raises KeyError naming the missing HF tensor, and ValueError for HF tensors left unmapped (so a silently
    ignored weight cannot happen).
    """
    return join_all(megatron_sources(hf_config, transformer_engine), hf_sd, hf_config.model_type,
                    ignored=lambda name: ignored_hf_name(name, hf_config))


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def megatron_to_hf(mg_sd: dict[str, torch.Tensor], hf_config) -> dict[str, torch.Tensor]:
    """Full Megatron GPTModel state dict (local or TE names) -> HF Llama/Qwen2 state dict.

    Raises ValueError for Megatron tensors it does not know (rather than dropping them).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, t in mg_sd.items():
        if name.endswith(_SKIP_SUFFIX) or t is None:
            continue
        if name == "embedding.word_embeddings.weight":
            out["model.embed_tokens.weight"] = t
        elif name == "decoder.final_layernorm.weight":
            out["model.norm.weight"] = t
        elif name == "output_layer.weight":
            # A tied model's last PP stage keeps a copy of the embedding here; HF ties it itself.
            if not tied(hf_config):
                out["lm_head.weight"] = t
        elif (match := _LAYER.match(name)) is not None:
            i, rest = match.group(1), match.group(2)
            h = f"model.layers.{i}."
            if rest in ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"):
                out[h + "input_layernorm.weight"] = t
            elif rest in ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"):
                out[h + "post_attention_layernorm.weight"] = t
            elif rest in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                q, k, v = split_qkv(t, hf_config)
                out[h + f"self_attn.q_proj.{kind}"] = q
                out[h + f"self_attn.k_proj.{kind}"] = k
                out[h + f"self_attn.v_proj.{kind}"] = v
            elif rest == "self_attention.linear_proj.weight":
                out[h + "self_attn.o_proj.weight"] = t
            elif rest == "mlp.linear_fc1.weight":
                gate, up = torch.chunk(t, 2, dim=0)
                out[h + "mlp.gate_proj.weight"] = gate.clone()
                out[h + "mlp.up_proj.weight"] = up.clone()
            elif rest == "mlp.linear_fc2.weight":
                out[h + "mlp.down_proj.weight"] = t
            else:
                unknown.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"Megatron tensors with no HF name (unsupported variant?): {sorted(unknown)[:10]}")
    return out
