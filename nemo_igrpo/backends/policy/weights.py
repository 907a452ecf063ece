"""Between full HF tensors and this rank's shards of a megatron GPTModel (TP slices, PP stage layers).

The name/layout mapping itself is ``backends.conversion`` (full, unsharded state dicts); this module only shards,
gathers and renumbers layers.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from nemo_igrpo.backends.conversion import get_mapping

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # Megatron DDP and Float16Module both keep the GPTModel in `.module`.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _layer_offset(model: torch.nn.Module) -> int:
    from nemo_igrpo.backends.policy.model import layer_offset

    return layer_offset(model)


def _to_global(name: str, offset: int) -> str:
    match = _LAYER.match(name)
    if match is None:
        return name
    return f"decoder.layers.{int(match.group(1)) + offset}.{match.group(2)}"


def _uses_te_names(model: torch.nn.Module) -> bool:
    return any(name.endswith("layer_norm_weight") for name, _ in model.named_parameters())


def _is_gated_fc1(name: str, model: torch.nn.Module) -> bool:
    return name.endswith("mlp.linear_fc1.weight") and bool(getattr(model.config, "gated_linear_unit", False))


def _shard(full: torch.Tensor, param: torch.nn.Parameter, gated_fc1: bool, tp: int, tp_rank: int) -> torch.Tensor:
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    if gated_fc1:
        # Each rank's fc1 is [gate_shard; up_shard], not a contiguous slice of [gate; up].
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, tp, dim=0)[tp_rank], torch.chunk(up, tp, dim=0)[tp_rank]], dim=0)
    return torch.chunk(full, tp, dim=dim)[tp_rank]


@torch.no_grad()
def load_hf_state_dict(model_chunks: list[torch.nn.Module], hf_sd: dict[str, torch.Tensor], hf_config) -> None:
    """Copy full HF tensors into this rank's model chunks (TP slice, PP-stage layers), casting to the param dtype.

    Every rank passes the same full ``hf_sd`` (each reads only what it needs). Raises KeyError/ValueError naming
    the parameter when a tensor is missing or has the wrong shape.
    """
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    mapping = get_mapping(hf_config.model_type)
    full_by_te: dict[bool, dict[str, torch.Tensor]] = {}
    for chunk in model_chunks:
        model = _unwrap(chunk)
        te = _uses_te_names(model)
        if te not in full_by_te:
            full_by_te[te] = mapping.hf_to_megatron(hf_sd, hf_config, transformer_engine=te)
        full = full_by_te[te]
        offset = _layer_offset(model)
        for name, param in model.named_parameters():
            gname = _to_global(name, offset)
            if gname == "output_layer.weight" and gname not in full:
                # Tied embeddings on a last stage without the embedding: megatron keeps a copy here.
                gname = "embedding.word_embeddings.weight"
            if gname not in full:
                raise KeyError(f"no HF weight maps to megatron parameter {gname!r} (local {name!r})")
            shard = _shard(full[gname], param, _is_gated_fc1(name, model), tp, tp_rank)
            if shard.shape != param.shape:
                raise ValueError(
                    f"shape mismatch for {gname!r}: HF gives {tuple(shard.shape)} for this rank, "
                    f"model has {tuple(param.shape)} (tp={tp})"
                )
            param.copy_(shard)


def _gather_tp(t: torch.Tensor, param: torch.nn.Parameter, gated_fc1: bool) -> torch.Tensor:
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t, group=parallel_state.get_tensor_model_parallel_group())
    if gated_fc1:
        gates, ups = zip(*(torch.chunk(p, 2, dim=0) for p in parts))
        return torch.cat([*gates, *ups], dim=0)
    return torch.cat(parts, dim=param.partition_dim)


def _local_full_tensors(model_chunks, skip: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """This stage's parameters, TP-gathered, under global megatron names. Collective over the TP group."""
    for chunk in model_chunks:
        model = _unwrap(chunk)
        offset = _layer_offset(model)
        for name, param in model.named_parameters():
            gname = _to_global(name, offset)
            if gname in skip:
                continue
            yield gname, _gather_tp(param.detach(), param, _is_gated_fc1(name, model))


@torch.no_grad()
def export_hf_state_dict(model_chunks: list[torch.nn.Module], hf_config) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full tensor)`` for the whole model, on EVERY rank (TP all-gather, then each PP stage
    broadcasts its layers over the pipeline group, in stage order).

    A collective: all ranks of the model-parallel group must consume the iterator to the end, in lockstep.
    Tensors are on the model's device in the model's dtype and may alias parameters (TP=1): copy them if they must
    outlive the next optimizer step. A tied model yields no ``lm_head.weight``.
    """
    from megatron.core import parallel_state

    mapping = get_mapping(hf_config.model_type)
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    # The last stage's copy of a tied embedding is not an HF weight; skip it before any communication.
    skip = {"output_layer.weight"} if tied else set()

    def to_hf(items: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for gname, t in items:
            yield from mapping.megatron_to_hf({gname: t}, hf_config).items()

    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp == 1:
        yield from to_hf(_local_full_tensors(model_chunks, skip))
        return

    group = parallel_state.get_pipeline_model_parallel_group()
    stage_ranks = dist.get_process_group_ranks(group)
    my_stage = parallel_state.get_pipeline_model_parallel_rank()
    device = next(_unwrap(model_chunks[0]).parameters()).device
    for stage, src in enumerate(stage_ranks):
        if stage == my_stage:
            local = list(_local_full_tensors(model_chunks, skip))
            meta = [[(n, tuple(t.shape), t.dtype) for n, t in local]]
        else:
            local, meta = [], [None]
        dist.broadcast_object_list(meta, src=src, group=group, device=device if device.type == "cuda" else None)
        for i, (gname, shape, dtype) in enumerate(meta[0]):
            if stage == my_stage:
                t = local[i][1].contiguous()
            else:
                t = torch.empty(shape, dtype=dtype, device=device)
            dist.broadcast(t, src=src, group=group)
            yield from to_hf([(gname, t)])

