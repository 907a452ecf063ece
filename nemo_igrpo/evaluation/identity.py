"""Which model an evaluation sampled from, so that two models' samples are never mixed in one output directory.

The identity is the model directory's resolved path plus SHA-256 digests of its ``config.json`` and of its weights'
layout and content. Hashing whole weight files (15 GB for a 7B model) would take minutes, so the weights digest covers
the safetensors index (or the single file's header: names, dtypes, shapes, offsets), every weight file's size, and
1 MiB read from the start, middle and end of each file's tensor data: two trainings of one architecture (the GRPO and
iGRPO twins) share the index but not these bytes. Reading that takes milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

SAMPLE_BYTES = 1024 * 1024


def _weight_files(model_dir: Path) -> tuple[list[Path], bytes]:
    """(weight files, the bytes that describe their layout)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        raw = index.read_bytes()
        names = sorted(set(json.loads(raw).get("weight_map", {}).values()))
        return [model_dir / n for n in names], raw
    single = model_dir / "model.safetensors"
    if single.is_file():
        with single.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return [single], f.read(min(n, 100 * 1024**2))
    return sorted(model_dir.glob("*.safetensors")), b""


def _sample(path: Path) -> bytes:
    size = path.stat().st_size
    out = bytearray(size.to_bytes(8, "little"))
    with path.open("rb") as f:
        for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            f.seek(offset)
            out += f.read(SAMPLE_BYTES)
    return bytes(out)


def model_identity(model_dir: str | Path) -> dict[str, str]:
    """``{"path", "config_sha256", "weights_sha256"}`` of an HF model directory (see the module docstring)."""
    d = Path(model_dir).resolve()
    config = (d / "config.json").read_bytes() if (d / "config.json").is_file() else b""
    files, layout = _weight_files(d)
    weights = hashlib.sha256(layout)
    for f in files:
        weights.update(f.name.encode() + b"\0")
        if f.is_file():
            weights.update(_sample(f))
    return {"path": str(d), "config_sha256": hashlib.sha256(config).hexdigest(),
            "weights_sha256": weights.hexdigest()}
