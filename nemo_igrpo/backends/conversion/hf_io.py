"""Reading and writing Hugging Face checkpoint directories (config, safetensors shards, tokenizer).

Safetensors only: pickle-based checkpoints are refused, never unpickled. Writes are atomic."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import save_file

from nemo_igrpo.backends.conversion import keeps_fp32

SHARD_BYTES = 4 * 1024**3


def save_hf_checkpoint(out_dir: str | Path, hf_config: Any, named_tensors: Iterable[tuple[str, torch.Tensor]],
                       tokenizer: Any | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``out_dir`` as a loadable HF model directory; a crash mid-write leaves no ``out_dir`` (only
    ``out_dir.partial``). Shards of at most 4 GiB with a ``model.safetensors.index.json`` when more than one.
    ``dtype`` casts every tensor except float32 ``keeps_fp32`` ones (Mamba's A_log and D)."""
    out = Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in named_tensors:
        target = dtype or tensor.dtype
        if keeps_fp32(name) and torch.float32 in (tensor.dtype, target):
            target = torch.float32  # Mamba's A_log and D are never rounded to a lower precision
        t = tensor.detach().to("cpu", dtype=target).contiguous()
        if size and size + t.numel() * t.element_size() > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.numel() * t.element_size()
    if len(shards) == 1:
        save_file(shards[0], str(partial / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(partial / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for s in shards for t in s.values())
        (partial / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    hf_config.save_pretrained(partial)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    if out.exists():
        shutil.rmtree(out)
    os.rename(partial, out)
    return out


def _safetensors_files(path: str) -> list[str]:
    """The weight files of an HF directory: ``model.safetensors`` or the shards of ``model.safetensors.index.json``.
    Safetensors only: pickle-based ``*.bin`` checkpoints are refused."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"HF checkpoint directory not found: {path!r}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path!r} has no config.json")
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = []
        for name in sorted(set(weight_map.values())):
            if os.path.basename(name) != name:
                raise ValueError(f"{index!r} names a shard outside the directory: {name!r}")
            shard = os.path.join(path, name)
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"shard {name!r} listed in {index!r} is missing")
            files.append(shard)
        return files
    others = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth"))]
    hint = f" (found {others}: pickle checkpoints are not loaded; convert them to safetensors)" if others else ""
    raise FileNotFoundError(f"{path!r} has neither model.safetensors nor model.safetensors.index.json{hint}")


class TensorSource:
    """Named tensors that can be read whole or in part: ``read(name, dim, start, stop)`` returns
    ``tensor.narrow(dim, start, stop - start)`` (the whole tensor when ``dim`` is None). ``bytes_read`` counts what
    was handed out. The policy's loader reads each rank's slices through this interface."""

    bytes_read: int = 0

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def _read(self, name: str, dim: int | None, start: int, stop: int) -> torch.Tensor:
        raise NotImplementedError

    def read(self, name: str, dim: int | None = None, start: int = 0, stop: int | None = None) -> torch.Tensor:
        shape = self.shape(name)
        if dim is not None:
            stop = shape[dim] if stop is None else stop
            if not 0 <= start <= stop <= shape[dim]:
                raise ValueError(f"{name!r}: [{start}:{stop}] along dim {dim} is outside its shape {shape}")
        t = self._read(name, dim, start, stop)
        self.bytes_read += t.numel() * t.element_size()
        return t

    def close(self) -> None:
        pass


class InMemoryTensors(TensorSource):
    """A ``TensorSource`` over a dict of tensors already in memory (slices are views)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name].shape)

    def _read(self, name, dim, start, stop):
        t = self.tensors[name]
        return t if dim is None else t.narrow(dim, start, stop - start)


class SafetensorsCheckpoint(TensorSource):
    """The tensors of an HF directory, memory-mapped from its safetensors files (``safetensors.safe_open``) and read
    on demand: a slice reads only its own bytes, so a tensor-parallel rank holds its shard, never the whole model.
    Only the files' headers are read up front. ``close()`` releases the files."""

    def __init__(self, path: str) -> None:
        from safetensors import safe_open

        self.path = path
        self._files = {}
        self._where: dict[str, str] = {}
        for file in _safetensors_files(path):
            handle = safe_open(file, framework="pt")
            self._files[file] = handle
            for name in handle.keys():
                if name in self._where:
                    raise ValueError(f"tensor {name!r} is in both {self._where[name]!r} and {file!r}")
                self._where[name] = file
        self._shapes: dict[str, tuple[int, ...]] = {}

    def names(self) -> list[str]:
        return list(self._where)

    def _slice(self, name: str):
        if name not in self._where:
            raise KeyError(f"{self.path!r} has no tensor {name!r}")
        return self._files[self._where[name]].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:
            self._shapes[name] = tuple(self._slice(name).get_shape())
        return self._shapes[name]

    def _read(self, name, dim, start, stop):
        if dim is None:
            self._slice(name)  # KeyError naming the directory for an unknown name
            return self._files[self._where[name]].get_tensor(name)
        part = self._slice(name)
        index = [slice(None)] * len(self.shape(name))
        index[dim] = slice(start, stop)
        return part[tuple(index)]

    def close(self) -> None:
        self._files.clear()


def open_hf_checkpoint(path: str, trust_remote_code: bool = False) -> tuple[object, SafetensorsCheckpoint]:
    """``(hf_config, tensors)`` of an HF model directory without reading any weight: ``tensors`` reads them on
    demand (see ``SafetensorsCheckpoint``)."""
    import transformers

    tensors = SafetensorsCheckpoint(path)
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return config, tensors


def read_hf_checkpoint(path: str, trust_remote_code: bool = False) -> tuple[object, dict[str, torch.Tensor]]:
    """``(hf_config, state_dict)`` from an HF model directory: config.json plus ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``, every tensor read into memory (the converter's whole-model path; the policy
    reads only its shards through ``open_hf_checkpoint``). Safetensors only: pickle checkpoints are refused."""
    config, tensors = open_hf_checkpoint(path, trust_remote_code=trust_remote_code)
    try:
        return config, {name: tensors.read(name) for name in tensors.names()}
    finally:
        tensors.close()
