"""Reading and writing Hugging Face checkpoint directories (config, generation config, safetensors shards,
tokenizer).

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
from nemo_igrpo.errors import DamagedFileError, InputNotFoundError

SHARD_BYTES = 4 * 1024**3


def save_hf_checkpoint(out_dir: str | Path, hf_config: Any, named_tensors: Iterable[tuple[str, torch.Tensor]],
                       tokenizer: Any | None = None, dtype: torch.dtype | None = None,
                       source_dir: str | Path | None = None) -> Path:
    """Write ``out_dir`` as an HF model directory that transformers 4 and 5 readers (and vLLM, NeMo-Skills) load the
    same way; a crash mid-write leaves no ``out_dir`` (only ``out_dir.partial``). Shards of at most 4 GiB with a
    ``model.safetensors.index.json`` when more than one.

    ``config.json`` is the source checkpoint's own file (``source_dir``, by default the directory ``hf_config`` was
    read from), with only its dtype fields changed when the written tensors have another dtype: transformers 5's
    ``save_pretrained`` drops the top-level ``rope_theta`` (it moves it into ``rope_parameters``), and a transformers-4
    reader would then run a Qwen model with the default RoPE base. Without a source, the config is saved by
    transformers and the top-level ``rope_theta``/``torch_dtype`` are added back. ``generation_config.json`` (the
    stop tokens and sampling defaults evaluation stacks read) is copied from the source, or derived from the config.
    ``dtype`` casts every tensor except float32 ``keeps_fp32`` ones (Mamba's A_log and D).
    """
    out = Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    written_dtypes: set[torch.dtype] = set()
    for name, tensor in named_tensors:
        target = dtype or tensor.dtype
        if keeps_fp32(name) and torch.float32 in (tensor.dtype, target):
            target = torch.float32  # Mamba's A_log and D are never rounded to a lower precision
        t = tensor.detach().to("cpu", dtype=target).contiguous()
        if t.is_floating_point() and not keeps_fp32(name):
            written_dtypes.add(t.dtype)  # A_log/D are float32 whatever the model's dtype: they do not name it
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
    # One dtype written (the usual case) names the checkpoint's dtype; a mix keeps what the config says.
    weights_dtype = next(iter(written_dtypes)) if len(written_dtypes) == 1 else None
    source = _matching_source(hf_config, source_dir)
    _write_config(partial, hf_config, source, weights_dtype)
    _write_generation_config(partial, hf_config, source)
    if tokenizer is not None:
        tokenizer.save_pretrained(partial)
    if out.exists():
        shutil.rmtree(out)
    os.rename(partial, out)
    return out


# Fields that must agree for a source config.json to describe the model being written.
_IDENTITY_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads")


def _matching_source(hf_config: Any, source_dir: str | Path | None) -> tuple[Path, dict] | None:
    """``(source directory, its config.json)`` when that file describes the same model as ``hf_config``."""
    candidate = source_dir if source_dir is not None else getattr(hf_config, "_name_or_path", None)
    if not candidate:
        return None
    path = Path(candidate) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or any(raw.get(k) != getattr(hf_config, k, None) for k in _IDENTITY_KEYS):
        return None
    return Path(candidate), raw


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _write_config(dst: Path, hf_config: Any, source: tuple[Path, dict] | None,
                  weights_dtype: torch.dtype | None) -> None:
    if source is not None:
        data = dict(source[1])
        if weights_dtype is not None:
            # transformers 4 reads torch_dtype, transformers 5 dtype: set whichever the file has (torch_dtype if none).
            for key in [k for k in ("torch_dtype", "dtype") if k in data] or ["torch_dtype"]:
                data[key] = _dtype_name(weights_dtype)
    else:
        hf_config.save_pretrained(dst)
        data = json.loads((dst / "config.json").read_text(encoding="utf-8"))
        rope = data.get("rope_parameters") or {}
        if "rope_theta" not in data and (rope.get("rope_type") or "default") == "default" and "rope_theta" in rope:
            data["rope_theta"] = rope["rope_theta"]  # what transformers-4 readers look for
        if weights_dtype is not None:
            data["dtype"] = data["torch_dtype"] = _dtype_name(weights_dtype)
        elif "dtype" in data and "torch_dtype" not in data:
            data["torch_dtype"] = data["dtype"]
    (dst / "config.json").write_text(json.dumps(data, indent=2, sort_keys=source is None) + "\n", encoding="utf-8")


def _write_generation_config(dst: Path, hf_config: Any, source: tuple[Path, dict] | None) -> None:
    if source is not None and (source[0] / "generation_config.json").is_file():
        shutil.copyfile(source[0] / "generation_config.json", dst / "generation_config.json")
        return
    from transformers import GenerationConfig

    GenerationConfig.from_model_config(hf_config).save_pretrained(dst)


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
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise DamagedFileError(f"{index}: not a safetensors index ({type(err).__name__}: {err})") from None
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
            handle = _open_safetensors(file)
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

    check_config_json(os.path.join(path, "config.json"))
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


def _open_safetensors(file: str | Path):
    """``safe_open(file)``; a header that does not parse or does not cover the file exactly (a truncated or
    overwritten file) is a ``DamagedFileError`` naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(file), framework="pt")
    except SafetensorError as err:
        raise DamagedFileError(f"{file}: damaged safetensors file (truncated or corrupted?): {err}") from None


def check_safetensors_files(files: Iterable[str | Path]) -> None:
    """``DamagedFileError`` naming the first damaged file of ``files``. Reads only the headers."""
    for file in files:
        _open_safetensors(file)


def check_config_json(file: str | Path) -> None:
    """``DamagedFileError`` unless ``file`` is a JSON object (transformers' own error for a broken config.json is a
    traceback several frames deep)."""
    try:
        obj = json.loads(Path(file).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedFileError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise DamagedFileError(f"{file}: expected a JSON object, got {type(obj).__name__}")


def hf_weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of an HF directory (``model.safetensors``, or the shards its index lists); a missing one
    (or only pickle weights) is an ``InputNotFoundError`` saying so."""
    try:
        return [Path(f) for f in _safetensors_files(str(path))]
    except FileNotFoundError as err:
        raise InputNotFoundError(str(err)) from None
