"""Train/validation/test splits of a generated task: distinct problems, drawn in an order that keeps the evaluation sets
fixed, and written as one JSONL file per split."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

from nemo_igrpo.data.jsonl import write_jsonl

SPLITS = ("train", "validation", "test")


def draw_splits(sample: Callable[[random.Random], dict[str, Any]], rng: random.Random, sizes: dict[str, int],
                id_prefix: str) -> dict[str, list[dict[str, Any]]]:
    """``sizes[split]`` records per split from ``sample(rng)``, no problem text shared between them. Test is drawn
    first, then validation, then train, so a larger train split never changes the evaluation sets. Records get ids
    ``{id_prefix}-{split}-00000``."""
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split in ("test", "validation", "train"):
        records: list[dict[str, Any]] = []
        attempts = 0
        while len(records) < sizes[split]:
            attempts += 1
            if attempts > 50 * sizes[split] + 1000:
                raise ValueError(f"{id_prefix}: only {len(seen)} distinct problems found, the settings allow too few "
                                 "(raise max_operand/max_ops or lower the split sizes)")
            rec = sample(rng)
            if rec["problem"] in seen:
                continue
            seen.add(rec["problem"])
            records.append({"id": f"{id_prefix}-{split}-{len(records):05d}", **rec})
        out[split] = records
    return {s: out[s] for s in SPLITS}


def write_splits(out_dir: str | Path, splits: dict[str, list[dict[str, Any]]]) -> dict[str, Path]:
    """``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` in ``out_dir`` (each written atomically); split -> path."""
    out_dir = Path(out_dir)
    paths = {}
    for split, records in splits.items():
        paths[split] = out_dir / f"{split}.jsonl"
        write_jsonl(paths[split], records)
    return paths
