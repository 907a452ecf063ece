"""Stateless seeds: every random draw is a pure function of what it is for (run seed, step, purpose; or the
evaluation's dataset and problem), so a resumed run or evaluation replays exactly what the uninterrupted one would
have done without saving any generator state."""

from __future__ import annotations

import hashlib

STAGE_DRAFTS = 1
STAGE_REFINEMENTS = 2
VALIDATION = 3
MINI_BATCHES = 4  # the row order of a step's mini-batches (algorithm.num_mini_batches > 1)


def hashed_seed(text: str) -> int:
    """64 bits of SHA-256 of ``text``: the same in every process and run (unlike Python's salted ``hash``), and
    unrelated for distinct texts (unlike ``seed + step``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def derive_seed(run_seed: int, step: int, purpose: int, shard: int = 0) -> int:
    """A 63-bit seed of one training-time draw."""
    return hashed_seed(f"{run_seed}/{step}/{purpose}/{shard}") >> 1
