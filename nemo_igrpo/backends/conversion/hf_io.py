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

from nemo_igrpo.errors import DamagedFileError

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
        t = tensor.detach().to("cpu", dtype=dtype or tensor.dtype).contiguous()
        if t.is_floating_point():
            written_dtypes.add(t.dtype)
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
