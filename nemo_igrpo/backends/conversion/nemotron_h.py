"""The name/layout mapping for Nemotron-H (hybrid Mamba-2 / attention / MLP): HF <-> megatron-core ``MambaModel``.

HF side: ``NemotronHForCausalLM``. Checkpoint files (and the Hub) use the ``backbone.`` prefix; transformers 5 renames
it to ``model.`` in memory. ``hf_to_megatron`` accepts either; ``megatron_to_hf`` writes ``backbone.`` (the on-disk
name) unless told otherwise. The layer kinds come from ``hybrid_override_pattern`` (``M`` Mamba-2, ``*`` attention,
``-`` MLP; ``E`` MoE is not supported), which transformers 5 derives from ``layers_block_type``.

Megatron side: ``MambaModel``/``MambaStack`` (megatron/core/models/mamba, megatron/core/ssm). Per layer ``i``:

=====================  ============================================  ==============================================
HF (backbone.layers.i)  Megatron (decoder.layers.i)                   note
=====================  ============================================  ==============================================
norm.weight  (M)        mixer.in_proj.layer_norm_weight (TE) /        pre-norm; fused into in_proj in the TE spec
                        norm.weight (local)
mixer.in_proj.weight    mixer.in_proj.weight                          same row order [z, x, B, C, dt] on both sides
mixer.conv1d.*          mixer.conv1d.*                                same channel order [x, B, C]
mixer.{A_log,D,dt_bias} mixer.{A_log,D,dt_bias}
mixer.norm.weight       mixer.norm.weight                             gated RMSNorm (group size d_inner/ngroups)
mixer.out_proj.weight   mixer.out_proj.weight
norm.weight  (*)        self_attention.linear_qkv.layer_norm_weight   / input_layernorm.weight (local)
mixer.{q,k,v}_proj      self_attention.linear_qkv.weight              per-query-group interleaved, as for Llama
mixer.o_proj            self_attention.linear_proj.weight
norm.weight  (-)        mlp.linear_fc1.layer_norm_weight              / pre_mlp_layernorm.weight (local)
mixer.up_proj           mlp.linear_fc1.weight                         not gated: squared ReLU
mixer.down_proj         mlp.linear_fc2.weight
=====================  ============================================  ==============================================

plus ``backbone.embeddings`` <-> ``embedding.word_embeddings``, ``backbone.norm_f`` <-> ``decoder.final_norm``,
``lm_head`` <-> ``output_layer`` (Nemotron-H never ties them). The in_proj/conv1d orders were checked in both sources:
HF splits ``in_proj`` output as [gate=z (d_inner), xBC (conv_dim), dt (nheads)] and the conv output as [x, B, C];
megatron builds in_proj with out features ``d_inner*2 + 2*ngroups*d_state + nheads  # z x B C dt`` and splits its
checkpoint into ``z, x, B, C, dt`` (conv1d into ``x, B, C``). Every tensor is therefore copied, except q/k/v.

On disk (``dist_checkpointing``) megatron stores every tensor of a Mamba layer under its own key (layers are not
stacked, unlike GPTModel), with TE names whatever spec wrote them, and ``mixer.in_proj.weight`` / ``mixer.conv1d.*``
split into per-part keys (``...in_proj.weight.z`` ...) so that TP resharding keeps each part contiguous.
``to_checkpoint_tensors``/``from_checkpoint_tensors`` convert between that layout and the full state dict here.

Pure torch here. The megatron model itself is built by ``backends/policy/model.py`` (``build_hybrid_model``).

Tensor parallelism: megatron-core 0.16's Mamba parameters carry no ``partition_dim``; ``megatron_sources`` says how
each is split (``sources.Source.sections`` for the fused ``in_proj``/``conv1d``), and ``backends/policy/weights.py``
applies it when loading, exporting and refitting.
"""

from __future__ import annotations

import re

import torch

from nemo_igrpo.backends.conversion.llama import split_qkv
from nemo_igrpo.backends.conversion.sources import Source, join_all
from nemo_igrpo.backends.policy.architecture import (ATTENTION, MAMBA, MLP, check_architecture, layer_pattern,
                                                     mamba_dims)

_SKIP_SUFFIX = "._extra_state"
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


# ------------------------------------------------------------------------------------------------------------ config
def check_supported(hf_config) -> None:
    """``ArchitectureError`` (a ValueError) for Nemotron-H variants megatron's MambaModel cannot express or this
    mapping does not cover; the rules are ``architecture.py``'s, shared with the trainer and the dry run."""
    check_architecture(hf_config, 1, 1)


def validate_parallel(hf_config, tp: int, pp: int) -> None:
    """``ArchitectureError`` unless the model splits over ``tp`` x ``pp`` the way megatron requires."""
    check_architecture(hf_config, tp, pp)


def align_hf_model(model) -> None:
    """Make a transformers ``NemotronHForCausalLM`` compute the step sizes of megatron-core and vLLM, in place.

    transformers clamps ``dt = softplus(dt + dt_bias)`` at ``time_step_min`` (1e-3) in its chunked path (prefill,
    full forwards) but not in its one-token decode path; megatron-core's Mamba mixer and vLLM never clamp. Unclamped,
    HF generation agrees with the policy (and with its own full forward) wherever a step size is below 1e-3.
    """
    for module in model.modules():
        if hasattr(module, "time_step_limit"):
            module.time_step_limit = (0.0, float("inf"))


# ----------------------------------------------------------------------------------------------------------- mapping
def _norm_names(transformer_engine: bool) -> dict[str, str]:
    if transformer_engine:
        return {MAMBA: "mixer.in_proj.layer_norm_weight", ATTENTION: "self_attention.linear_qkv.layer_norm_weight",
                MLP: "mlp.linear_fc1.layer_norm_weight"}
    return {MAMBA: "norm.weight", ATTENTION: "input_layernorm.weight", MLP: "pre_mlp_layernorm.weight"}


# Mamba mixer tensors whose names are the same on both sides (under ``mixer.``).
_MAMBA_SAME = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "A_log", "D", "dt_bias", "norm.weight",
               "out_proj.weight")


def canonical_hf_name(name: str) -> str:
    """The on-disk name: transformers 5 modules call the base model ``model.``, files ``backbone.``."""
    return "backbone." + name[len("model."):] if name.startswith("model.") else name


def ignored_hf_name(name: str, hf_config) -> bool:
    """Every HF Nemotron-H tensor is a Megatron weight."""
    return False


def megatron_sources(hf_config, transformer_engine: bool = False) -> dict[str, Source]:
    """Every Megatron MambaModel tensor (global layer index; norm names of the TE or the local spec) and the HF
    tensors (``backbone.`` names) it is made of. ``in_proj`` and ``conv1d`` are fused tensors whose parts are each
    split over tensor-parallel ranks on their own (see ``sources``); the per-head ``A_log``, ``D``, ``dt_bias`` and
    the gated norm's weight (heads x head dim, group-major) split into contiguous blocks of whole heads and groups."""
    check_supported(hf_config)
    d = mamba_dims(hf_config)
    heads = int(hf_config.num_attention_heads)
    head_dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads)
    fused = {name: tuple(rows for _, rows in parts) for name, parts in _splits(hf_config).items()}
    out = {
        "embedding.word_embeddings.weight": Source(("backbone.embeddings.weight",)),
        "decoder.final_norm.weight": Source(("backbone.norm_f.weight",)),
        "output_layer.weight": Source(("lm_head.weight",)),
    }
    norms = _norm_names(transformer_engine)
    for i, kind in enumerate(layer_pattern(hf_config)):
        h, m = f"backbone.layers.{i}.", f"decoder.layers.{i}."
        out[m + norms[kind]] = Source((h + "norm.weight",))
        if kind == MAMBA:
            for name in _MAMBA_SAME:
                out[m + "mixer." + name] = Source((h + "mixer." + name,), sections=fused.get("mixer." + name, ()))
        elif kind == ATTENTION:
            out[m + "self_attention.linear_qkv.weight"] = Source(
                tuple(h + f"mixer.{x}_proj.weight" for x in "qkv"), qkv_head_dim=head_dim)
            out[m + "self_attention.linear_proj.weight"] = Source((h + "mixer.o_proj.weight",))
        else:
            out[m + "mlp.linear_fc1.weight"] = Source((h + "mixer.up_proj.weight",))
            out[m + "mlp.linear_fc2.weight"] = Source((h + "mixer.down_proj.weight",))
    return out


def hf_to_megatron(hf_sd: dict[str, torch.Tensor], hf_config, transformer_engine: bool = False
                   ) -> dict[str, torch.Tensor]:
    """HF Nemotron-H state dict (``backbone.`` or ``model.`` names) -> full (TP=1, global layer index) megatron
    MambaModel state dict.

    ``transformer_engine`` picks the norm names (fused into the following linear in the TE spec, the names its
    checkpoints use). KeyError names a missing HF tensor; ValueError lists HF tensors that were not mapped.
    """
    sd = {canonical_hf_name(k): v for k, v in hf_sd.items()}
    return join_all(megatron_sources(hf_config, transformer_engine), sd, "nemotron_h")


def megatron_to_hf(mg_sd: dict[str, torch.Tensor], hf_config, hf_prefix: str = "backbone."
                   ) -> dict[str, torch.Tensor]:
    """Full megatron MambaModel state dict (local or TE names) -> HF Nemotron-H state dict.

    ``hf_prefix`` is ``backbone.`` for files (what transformers reads and writes on disk) or ``model.`` for
    ``load_state_dict`` into an in-memory transformers 5 module. Works on any subset of tensors (the refit path
    streams one at a time). ValueError lists Megatron tensors with no HF name.
    """
    pattern = layer_pattern(hf_config)
    norm_of = {v: k for te in (True, False) for k, v in _norm_names(te).items()}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, t in mg_sd.items():
        if name.endswith(_SKIP_SUFFIX) or t is None:
            continue
        if name == "embedding.word_embeddings.weight":
            out[hf_prefix + "embeddings.weight"] = t
        elif name == "decoder.final_norm.weight":
            out[hf_prefix + "norm_f.weight"] = t
        elif name == "output_layer.weight":
            out["lm_head.weight"] = t
        elif (match := _LAYER.match(name)) is not None and int(match.group(1)) < len(pattern):
            i, rest = int(match.group(1)), match.group(2)
            kind, h = pattern[i], f"{hf_prefix}layers.{i}."
            if norm_of.get(rest) == kind:
                out[h + "norm.weight"] = t
            elif kind == MAMBA and rest.startswith("mixer.") and rest[len("mixer."):] in _MAMBA_SAME:
                out[h + rest] = t
            elif kind == ATTENTION and rest == "self_attention.linear_qkv.weight":
                q, k, v = split_qkv(t, hf_config)
                out[h + "mixer.q_proj.weight"], out[h + "mixer.k_proj.weight"], out[h + "mixer.v_proj.weight"] = q, k, v
            elif kind == ATTENTION and rest == "self_attention.linear_proj.weight":
                out[h + "mixer.o_proj.weight"] = t
            elif kind == MLP and rest == "mlp.linear_fc1.weight":
                out[h + "mixer.up_proj.weight"] = t
            elif kind == MLP and rest == "mlp.linear_fc2.weight":
                out[h + "mixer.down_proj.weight"] = t
            else:
                unknown.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"Megatron tensors with no HF name for pattern {pattern!r}: {sorted(unknown)[:10]}")
    return out


# ------------------------------------------------------------------------------------------- dist_checkpointing keys
def _splits(hf_config) -> dict[str, list[tuple[str, int]]]:
    """Megatron's per-part checkpoint split (MambaMixer.sharded_state_dict) at TP=1: suffix -> (part, rows)."""
    d = mamba_dims(hf_config)
    bc = d["ngroups"] * d["d_state"]
    conv = [("x", d["d_inner"]), ("B", bc), ("C", bc)]
    return {
        "mixer.in_proj.weight": [("z", d["d_inner"]), ("x", d["d_inner"]), ("B", bc), ("C", bc), ("dt", d["nheads"])],
        "mixer.conv1d.weight": conv,
        "mixer.conv1d.bias": conv,
    }


def to_checkpoint_tensors(full_sd: dict[str, torch.Tensor], hf_config) -> dict[str, torch.Tensor]:
    """Full TE-named state dict -> {dist_checkpointing key: full tensor}, with in_proj/conv1d split into parts.

    The keys are those megatron's ``MambaModel.sharded_state_dict`` produces (TE spec); tensors are row slices
    (views) of the input. Local-spec norm names are renamed to the TE ones, as megatron's spec key maps do.
    """
    splits = _splits(hf_config)
    local_to_te = dict(zip(_norm_names(False).values(), _norm_names(True).values()))
    out = {}
    for name, t in full_sd.items():
        match = _LAYER.match(name)
        rest = match.group(2) if match else None
        if rest in local_to_te:
            name = f"decoder.layers.{match.group(1)}.{local_to_te[rest]}"
        elif rest in splits:
            parts = splits[rest]
            if t.shape[0] != sum(n for _, n in parts):
                raise ValueError(f"{name}: {t.shape[0]} rows, expected {sum(n for _, n in parts)} "
                                 f"({'+'.join(p for p, _ in parts)})")
            for (part, _), piece in zip(parts, torch.split(t, [n for _, n in parts], dim=0)):
                out[f"{name}.{part}"] = piece
            continue
        out[name] = t
    return out


def from_checkpoint_tensors(ckpt: dict[str, torch.Tensor], hf_config) -> dict[str, torch.Tensor]:
    """Inverse of ``to_checkpoint_tensors``: merge the per-part keys back into full in_proj/conv1d tensors."""
    splits = _splits(hf_config)
    out = dict(ckpt)
    for name in list(ckpt):
        match = _LAYER.match(name)
        if match is None:
            continue
        for suffix, parts in splits.items():
            if match.group(2) == f"{suffix}.{parts[0][0]}":
                base = name[: -len(parts[0][0]) - 1]
                keys = [f"{base}.{p}" for p, _ in parts]
                missing = [k for k in keys if k not in out]
                if missing:
                    raise KeyError(f"checkpoint has {name!r} but not {missing}")
                out[base] = torch.cat([out.pop(k) for k in keys], dim=0)
    return out


def extra_state_keys(hf_config) -> list[str]:
    """Checkpoint keys of the (empty) ``_extra_state`` objects megatron's modules save: the linears of both specs,
    plus the TE-only ones (core attention, final norm). A superset is harmless: dist_checkpointing ignores keys the
    loading model does not ask for, while a key it asks for and cannot find is an error."""
    per_kind = {
        MAMBA: ("mixer.in_proj", "mixer.out_proj"),
        ATTENTION: ("self_attention.linear_qkv", "self_attention.linear_proj", "self_attention.core_attention"),
        MLP: ("mlp.linear_fc1", "mlp.linear_fc2"),
    }
    keys = [f"decoder.layers.{i}.{module}._extra_state"
            for i, kind in enumerate(layer_pattern(hf_config)) for module in per_kind[kind]]
    return keys + ["decoder.final_norm._extra_state", "output_layer._extra_state"]
