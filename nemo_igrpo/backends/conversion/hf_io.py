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

from nemo_igrpo.errors import DamagedFileError

SHARD_BYTES = 4 * 1024**3


def save_hf_checkpoint(out_dir: str | Path, hf_config: Any, named_tensors: Iterable[tuple[str, torch.Tensor]],
                       tokenizer: Any | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``out_dir`` as a loadable HF model directory; a crash mid-write leaves no ``out_dir`` (only
    ``out_dir.partial``). Shards of at most 4 GiB with a ``model.safetensors.index.json`` when more than one."""
    out = Path(out_dir)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in named_tensors:
        t = tensor.detach().to("cpu", dtype=dtype or tensor.dtype).contiguous()
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


def read_hf_checkpoint(path: str, trust_remote_code: bool = False) -> tuple[object, dict[str, torch.Tensor]]:
    """``(hf_config, state_dict)`` from an HF model directory: config.json plus ``model.safetensors`` or a sharded
    ``model.safetensors.index.json``. Safetensors only: pickle-based ``*.bin`` checkpoints are refused."""
    import transformers
    from safetensors.torch import load_file

    if not os.path.isdir(path):
        raise FileNotFoundError(f"HF checkpoint directory not found: {path!r}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path!r} has no config.json")
    check_config_json(os.path.join(path, "config.json"))
    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
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
    else:
        others = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth"))]
        hint = f" (found {others}: pickle checkpoints are not loaded; convert them to safetensors)" if others else ""
        raise FileNotFoundError(f"{path!r} has neither model.safetensors nor model.safetensors.index.json{hint}")
    check_safetensors_files(files)
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        state_dict.update(load_file(file))
    return config, state_dict


def check_config_json(file: str | Path) -> None:
    """``DamagedFileError`` unless ``file`` is a JSON object (transformers' own error for a broken config.json is a
    traceback several frames deep)."""
    try:
        obj = json.loads(Path(file).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedFileError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise DamagedFileError(f"{file}: expected a JSON object, got {type(obj).__name__}")


def check_safetensors_files(files: Iterable[str | Path]) -> None:
    """``DamagedFileError`` naming the first file whose safetensors header does not parse or does not cover the file
    exactly (a truncated or overwritten shard). Reads only the headers."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except SafetensorError as err:
            raise DamagedFileError(f"{file}: damaged safetensors file (truncated or corrupted?): {err}") from None


def hf_weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of an HF directory: ``model.safetensors``, or the shards its index lists (names only
    checked to stay inside the directory)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DamagedFileError(f"{index}: not a safetensors index ({type(err).__name__}: {err})") from None
        return [path / n for n in names if os.path.basename(n) == n and (path / n).is_file()]
    return sorted(path.glob("*.safetensors"))
