"""Between HF tensors and this rank's shards of the policy's megatron model (TP slices, PP-stage layers), for both
families (GPTModel and the hybrid Nemotron-H model).

Which HF tensors make each Megatron tensor, and which row blocks of it split over tensor-parallel ranks on their own,
is the mapping's ``megatron_sources`` (``backends/conversion/sources.py``). Loading applies it per rank and reads only
the rank's slices (from memory-mapped safetensors when given an ``open_hf_checkpoint`` source); export gathers the
shards back and maps them to HF names with the mapping's ``megatron_to_hf``.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator, Mapping

import torch
import torch.distributed as dist

from nemo_igrpo.backends.conversion import get_mapping, keeps_fp32
from nemo_igrpo.backends.conversion.hf_io import InMemoryTensors, TensorSource
from nemo_igrpo.backends.conversion.sources import Source, check_unused

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # Megatron DDP and Float16Module both keep the model in `.module`.
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


def _split_dim(param: torch.nn.Parameter) -> int | None:
    """The axis this parameter is split on across tensor-parallel ranks, None when every rank holds all of it.
    megatron-core 0.16's Mamba parameters (conv1d, A_log, D, dt_bias, the gated norm) are split on axis 0 but carry
    no ``partition_dim``."""
    if not getattr(param, "tensor_model_parallel", False):
        return None
    return int(getattr(param, "partition_dim", 0))


def _sources(model: torch.nn.Module, hf_config, cache: dict) -> dict[str, Source]:
    te = _uses_te_names(model)
    if te not in cache:
        cache[te] = get_mapping(hf_config.model_type).megatron_sources(hf_config, transformer_engine=te)
    return cache[te]


def _source_for(gname: str, sources: Mapping[str, Source]) -> Source:
    if gname == "output_layer.weight" and gname not in sources:
        # Tied embeddings on a last stage without the embedding: megatron keeps a copy of it here.
        gname = "embedding.word_embeddings.weight"
    if gname not in sources:
        raise KeyError(f"no HF weight maps to megatron parameter {gname!r}")
    return sources[gname]


class _RankReader:
    """Reads the slices of HF tensors one tensor-parallel rank needs, by canonical HF name."""

    def __init__(self, tensors: TensorSource, hf_config) -> None:
        self.tensors = tensors
        self.model_type = hf_config.model_type
        mapping = get_mapping(hf_config.model_type)
        self.actual = {mapping.canonical_hf_name(n): n for n in tensors.names()}

    def _name(self, hf_name: str) -> str:
        if hf_name not in self.actual:
            raise KeyError(f"HF checkpoint has no {hf_name!r} (model_type={self.model_type})")
        return self.actual[hf_name]

    def shape(self, hf_name: str) -> tuple[int, ...]:
        return self.tensors.shape(self._name(hf_name))

    def read(self, hf_name: str, dim: int | None = None, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.tensors.read(self._name(hf_name), dim, start, stop)

    def shard(self, src: Source, param: torch.nn.Parameter, tp: int, rank: int) -> torch.Tensor:
        dim = _split_dim(param)
        if tp == 1 or dim is None:
            return src.join([self.read(n) for n in src.hf_names])
        if dim == 0:
            blocks = src.row_blocks(tp, rank, rows=lambda n: self.shape(n)[0])
            return src.join_rows([self.read(n, 0, start, stop) for n, start, stop in blocks])
        if len(src.hf_names) != 1:
            raise ValueError(f"{src.hf_names}: only a single HF tensor can be split along axis {dim}")
        (name,) = src.hf_names
        size = self.shape(name)[dim]
        if size % tp:
            raise ValueError(f"{name}: {size} columns do not split over {tp} tensor-parallel ranks")
        step = size // tp
        return self.read(name, dim, rank * step, (rank + 1) * step)


@torch.no_grad()
def load_hf_state_dict(model_chunks: list[torch.nn.Module], hf_tensors: TensorSource | Mapping[str, torch.Tensor],
                       hf_config) -> None:
    """Copy HF weights into this rank's model chunks, casting to each parameter's dtype.

    ``hf_tensors`` is a ``TensorSource`` (``open_hf_checkpoint``: memory-mapped safetensors) or a dict of full
    tensors. Only the layers of this rank's pipeline stage are read, and of a tensor split over tensor-parallel ranks
    only this rank's slice: a rank's host memory holds its shard, not the model. Raises KeyError/ValueError naming
    the tensor when one is missing, left unmapped, or has the wrong shape.
    """
    from megatron.core import parallel_state

    tensors = hf_tensors if isinstance(hf_tensors, TensorSource) else InMemoryTensors(dict(hf_tensors))
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    mapping = get_mapping(hf_config.model_type)
    reader = _RankReader(tensors, hf_config)
    cache: dict = {}
    for chunk in model_chunks:
        model = _unwrap(chunk)
        sources = _sources(model, hf_config, cache)
        # Every rank checks the whole checkpoint's names (cheap: no data), so a stray tensor fails everywhere.
        check_unused(sources, reader.actual, ignored=lambda n: mapping.ignored_hf_name(n, hf_config))
        offset = _layer_offset(model)
        for name, param in model.named_parameters():
            gname = _to_global(name, offset)
            shard = reader.shard(_source_for(gname, sources), param, tp, tp_rank)
            if shard.shape != param.shape:
                raise ValueError(
                    f"shape mismatch for {gname!r}: HF gives {tuple(shard.shape)} for this rank, "
                    f"model has {tuple(param.shape)} (tp={tp})"
                )
            param.copy_(shard)


def _gather_tp(t: torch.Tensor, param: torch.nn.Parameter, src: Source | None) -> torch.Tensor:
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    dim = _split_dim(param)
    if tp == 1 or dim is None:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t, group=parallel_state.get_tensor_model_parallel_group())
    if dim == 0 and src is not None:
        return src.gather_rows(parts)
    return torch.cat(parts, dim=dim)


def _local_full_tensors(model_chunks, hf_config, skip: set[str],
                        select: Callable[[torch.nn.Parameter], torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """This stage's parameters, TP-gathered, under global megatron names. Collective over the TP group."""
    cache: dict = {}
    for chunk in model_chunks:
        model = _unwrap(chunk)
        sources = _sources(model, hf_config, cache)
        offset = _layer_offset(model)
        for name, param in model.named_parameters():
            gname = _to_global(name, offset)
            if gname in skip:
                continue
            yield gname, _gather_tp(select(param).detach(), param, sources.get(gname))


def _default_select(param: torch.nn.Parameter) -> torch.Tensor:
    return param


@torch.no_grad()
def export_hf_state_dict(model_chunks: list[torch.nn.Module], hf_config,
                         select: Callable[[torch.nn.Parameter], torch.Tensor] = _default_select,
                         ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full tensor)`` for the whole model, on EVERY rank (TP all-gather, then each PP stage
    broadcasts its layers over the pipeline group, in stage order).

    A collective: all ranks of the model-parallel group must consume the iterator to the end, in lockstep.
    Tensors are on the model's device in the model's dtype (``keeps_fp32`` tensors, Mamba's A_log and D, always in
    float32) and may alias parameters (TP=1): copy them if they must outlive the next optimizer step. A tied model
    yields no ``lm_head.weight``. ``select`` picks what is exported per parameter: the weights by default, e.g.
    ``lambda p: p.main_grad`` for the gradients under HF names.
    """
    from megatron.core import parallel_state

    mapping = get_mapping(hf_config.model_type)
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    # The last stage's copy of a tied embedding is not an HF weight; skip it before any communication.
    skip = {"output_layer.weight"} if tied else set()

    def to_hf(items: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for gname, t in items:
            for hf_name, hf_t in mapping.megatron_to_hf({gname: t}, hf_config).items():
                yield hf_name, (hf_t.float() if keeps_fp32(hf_name) else hf_t)

    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp == 1:
        yield from to_hf(_local_full_tensors(model_chunks, hf_config, skip, select))
        return

    group = parallel_state.get_pipeline_model_parallel_group()
    stage_ranks = dist.get_process_group_ranks(group)
    my_stage = parallel_state.get_pipeline_model_parallel_rank()
    device = next(_unwrap(model_chunks[0]).parameters()).device
    for stage, src in enumerate(stage_ranks):
        if stage == my_stage:
            local = list(_local_full_tensors(model_chunks, hf_config, skip, select))
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
