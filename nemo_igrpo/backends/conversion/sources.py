"""How each Megatron tensor is made from HF tensors: the one description both the converter (whole tensors) and the
policy's loader (this rank's tensor-parallel slice, read straight from the safetensors files) use.

A mapping module (``llama.py``, ``nemotron_h.py``) describes its architecture as ``megatron_sources(hf_config,
transformer_engine) -> {megatron name: Source}``. A ``Source`` lists the HF tensors and how they are joined:

* one HF tensor: copied;
* several, with ``qkv_head_dim``: q/k/v fused per query group (Megatron's ``linear_qkv``);
* several, without: concatenated along rows (``linear_fc1`` = [gate; up]).

``sections`` names the row blocks of the full Megatron tensor that are each split over tensor-parallel ranks on their
own: one block per HF tensor for a concatenation, or the parts of a single fused HF tensor (Mamba's ``in_proj`` =
[z, x, B, C, dt], ``conv1d`` = [x, B, C]). Chunking such a tensor as a whole would give a rank pieces of the wrong
parts, silently. Everything else splits as one block (the fused q/k/v too: its query groups are contiguous).

Joining commutes with that split: a rank's shard is the join of its slice of each HF tensor. So a rank never needs a
whole HF tensor it shards, and the converter's full tensors are the same join at TP = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch


@dataclass(frozen=True)
class Source:
    hf_names: tuple[str, ...]
    # Rows of each separately split block of the full tensor (empty: one block).
    sections: tuple[int, ...] = ()
    # q/k/v fused per query group with this head size (0: not a q/k/v fusion).
    qkv_head_dim: int = 0

    def __post_init__(self) -> None:
        if len(self.hf_names) > 1 and not self.qkv_head_dim and len(self.sections) != len(self.hf_names):
            raise ValueError(f"{self.hf_names}: a concatenation needs one section per HF tensor")

    def join(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The Megatron tensor (or a rank's shard of it) from the HF tensors (or the rank's slices of them)."""
        if self.qkv_head_dim:
            return fuse_qkv_groups(*tensors, head_dim=self.qkv_head_dim)
        if len(tensors) == 1:
            return tensors[0]
        return torch.cat(tensors, dim=0)

    def join_rows(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """A rank's shard from the row blocks ``row_blocks`` named, read in that order."""
        return torch.cat(blocks, dim=0) if len(self.hf_names) == 1 else self.join(blocks)

    def row_blocks(self, tp: int, rank: int, rows: Callable[[str], int]) -> list[tuple[str, int, int]]:
        """``(hf_name, start, stop)`` row ranges of the HF tensors that make up tensor-parallel rank ``rank``'s shard
        when the Megatron tensor is split over its rows; ``rows(name)`` gives an HF tensor's row count."""
        blocks = []
        if len(self.hf_names) == 1 and self.sections:
            (name,) = self.hf_names
            if sum(self.sections) != rows(name):
                raise ValueError(f"{name}: {rows(name)} rows, expected {'+'.join(map(str, self.sections))}")
            starts = [sum(self.sections[:i]) for i in range(len(self.sections))]
            pieces = [(name, start, size) for start, size in zip(starts, self.sections)]
        else:
            pieces = [(name, 0, rows(name)) for name in self.hf_names]
            if self.sections and tuple(size for _, _, size in pieces) != self.sections:
                raise ValueError(f"{self.hf_names}: rows {[size for _, _, size in pieces]}, expected "
                                 f"{list(self.sections)}")
        for name, start, size in pieces:
            if size % tp:
                raise ValueError(f"{name}: a block of {size} rows does not split over {tp} tensor-parallel ranks")
            step = size // tp
            blocks.append((name, start + rank * step, start + (rank + 1) * step))
        return blocks

    def gather_rows(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of the row split: the full Megatron tensor from every rank's shard (in rank order)."""
        if not self.sections:
            return torch.cat(parts, dim=0)
        tp = len(parts)
        local = [s // tp for s in self.sections]
        per_rank = [torch.split(p, local, dim=0) for p in parts]
        return torch.cat([per_rank[r][i] for i in range(len(local)) for r in range(tp)], dim=0)


def fuse_qkv_groups(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim: int) -> torch.Tensor:
    """HF q/k/v (weights [out, in] or biases [out]) -> Megatron's linear_qkv, [q heads of group g; k_g; v_g] per
    query group g. The group count comes from ``k`` (one head per group), so a rank's slices fuse the same way."""
    groups = k.shape[0] // head_dim
    rest = q.shape[1:]
    q = q.reshape(groups, -1, *rest)
    k = k.reshape(groups, head_dim, *rest)
    v = v.reshape(groups, head_dim, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest).clone()


def join_all(sources: Mapping[str, Source], hf_sd: Mapping[str, torch.Tensor], model_type: str,
             ignored: Callable[[str], bool] = lambda name: False) -> dict[str, torch.Tensor]:
    """Every Megatron tensor from whole HF tensors (the converter's direction, TP = 1).

    KeyError names a missing HF tensor; ValueError lists HF tensors no source uses (a silently dropped weight is
    never possible), except those ``ignored`` accepts (derived buffers, a tied lm_head)."""
    def take(name: str) -> torch.Tensor:
        if name not in hf_sd:
            raise KeyError(f"HF state dict has no {name!r} (model_type={model_type})")
        return hf_sd[name]

    out = {mg: src.join([take(n) for n in src.hf_names]) for mg, src in sources.items()}
    check_unused(sources, hf_sd, ignored)
    return out


def check_unused(sources: Mapping[str, Source], hf_names: Iterable[str],
                 ignored: Callable[[str], bool] = lambda name: False) -> None:
    used = {n for src in sources.values() for n in src.hf_names}
    leftover = sorted(n for n in hf_names if n not in used and not ignored(n))
    if leftover:
        raise ValueError(f"HF tensors not mapped to Megatron (unsupported variant?): {leftover[:10]}")
