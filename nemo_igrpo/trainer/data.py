"""Training and validation prompts for a run: from JSONL files, or the synthetic demo task when none is given."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from nemo_igrpo.data.config import DataConfig
from nemo_igrpo.data.prompts import PromptRecord, build_messages, encode_messages, load_prompts
from nemo_igrpo.data.synthetic import generate_splits

log = logging.getLogger("nemo_igrpo.trainer")


@dataclass
class PromptSplits:
    train: list[PromptRecord]
    validation: list[PromptRecord]


def _from_synthetic(cfg: DataConfig) -> dict[str, list[PromptRecord]]:
    splits = generate_splits(cfg.synthetic)
    return {name: [PromptRecord(id=str(r["id"]), problem=r["problem"], answer=str(r["answer"])) for r in records]
            for name, records in splits.items()}


def _fits(records: list[PromptRecord], cfg: DataConfig, tokenizer: Any, split: str) -> list[PromptRecord]:
    """Drop prompts longer than data.max_prompt_tokens (the paper's 1024), counting them in the log."""
    kept = [r for r in records if len(encode_messages(tokenizer, build_messages(
        r.problem, cfg.system_prompt, cfg.instruction))) <= cfg.max_prompt_tokens]
    if len(kept) < len(records):
        log.warning("%s: dropped %d of %d prompts longer than data.max_prompt_tokens=%d", split,
                    len(records) - len(kept), len(records), cfg.max_prompt_tokens)
    return kept


def load_prompt_splits(cfg: DataConfig, tokenizer: Any) -> PromptSplits:
    if cfg.train_file:
        train = load_prompts(cfg.train_file)
        validation = load_prompts(cfg.validation_file) if cfg.validation_file else []
    else:
        synthetic = _from_synthetic(cfg)
        train, validation = synthetic["train"], synthetic["validation"]
    return PromptSplits(train=_fits(train, cfg, tokenizer, "train"),
                        validation=_fits(validation, cfg, tokenizer, "validation"))
