"""Stateless seeds: every random draw of a step is a pure function of (run seed, step, purpose), so a resumed run
replays exactly what the uninterrupted run would have done without saving any generator state."""

from __future__ import annotations

import hashlib

STAGE_DRAFTS = 1
STAGE_REFINEMENTS = 2
VALIDATION = 3


def derive_seed(run_seed: int, step: int, purpose: int, shard: int = 0) -> int:
    """A 63-bit seed from the tuple; distinct tuples give unrelated seeds (unlike ``seed + step``)."""
    digest = hashlib.sha256(f"{run_seed}/{step}/{purpose}/{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
