"""The few collectives the trainer needs, over megatron-core's process groups (the only parallel state there is).

Every function is a no-op shortcut in a single process and must be called by all ranks of the group it names.

They are host-side: their tensors live on the CPU (metrics, counters, flags, pickled objects), so every group they use
must have a CPU backend. ``initialize_parallel`` gives the default group one beside NCCL (``process_group_backend``),
and megatron-core's groups inherit it; ``group_carries`` is the check.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def group_carries(group, device_type: str) -> bool:
    """Whether ``group`` (None: the default group) has a backend for tensors on ``device_type``. An NCCL-only group
    has none for ``"cpu"``; its backend config reads ``"cuda:nccl"`` where a usable one reads
    ``"cpu:gloo,cuda:nccl"``."""
    entries = str(dist.get_backend_config(group)).split(",")
    return any(entry.split(":")[0].strip() == device_type for entry in entries if ":" in entry)


def broadcast_from_model_parallel_source(obj: T) -> T:
    """Send ``obj`` from tensor-rank 0 / pipeline-rank 0 to the other ranks of its model-parallel group, which all
    work on the same data-parallel shard (the source alone runs generation and grading)."""
    from megatron.core import parallel_state as ps

    group = ps.get_model_parallel_group()
    if dist.get_world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    return box[0]


def data_parallel_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of each metric over data-parallel ranks (all ranks must pass the same keys)."""
    from megatron.core import parallel_state as ps

    if _world() == 1 or not values:
        return dict(values)
    group = ps.get_data_parallel_group()
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    t /= dist.get_world_size(group)
    return dict(zip(keys, t.tolist()))


def data_parallel_sum(values: list[float]) -> list[float]:
    from megatron.core import parallel_state as ps

    if _world() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=ps.get_data_parallel_group())
    return t.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (e.g. one rank received SIGTERM)."""
    if _world() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if _world() > 1:
        dist.barrier()


def broadcast_from_rank0(obj: Any) -> Any:
    if _world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
