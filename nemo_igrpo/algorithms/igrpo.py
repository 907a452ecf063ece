"""iGRPO's two-stage rollout logic (arXiv 2602.09000, Sec. 3), as pure functions over ids, strings and rewards.

Stage 1 samples N drafts per prompt and keeps the highest-reward one (:func:`select_best_drafts`). Stage 2 appends
that draft to the original prompt, q' = Concat(q, d) (:func:`build_refinement_messages`), and samples G refinements,
the only rollouts trained on.
:class:`RolloutBudget` keeps N + G equal to GRPO's group size K; :class:`StageTokenCounter` accounts generation cost.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from nemo_igrpo.algorithms.config import AlgorithmConfig, RefinementConfig

TIE_BREAKS = ("shortest", "first")
# Put in front of a draft whose beginning was cut, so the model knows it reads the end of a longer attempt.
TRUNCATION_MARKER = "..."
# Stands in for a draft that decodes to nothing (a draft stopped at once): an empty block reads like a template bug.
EMPTY_DRAFT_TEXT = "(empty attempt)"
TEMPLATE_PLACEHOLDERS = ("{prompt}", "{draft}")
_PLACEHOLDER = re.compile(r"\{(prompt|draft)\}")

# Stage names. "stage2" holds the rollouts that are trained on: the refinements in iGRPO, the single-shot answers in
# GRPO, so that "tokens/stage2" compares the trained tokens and "tokens/generated" the total cost of both recipes.
STAGE_DRAFTS = "stage1"
STAGE_TRAINED = "stage2"
STAGES = (STAGE_DRAFTS, STAGE_TRAINED)


# ---------------------------------------------------------------- Stage 1: draft selection --------------------------


def _best_index(rewards: Sequence[float], lengths: Sequence[int], tie_break: str) -> int:
    best = max(rewards)
    tied = [i for i, r in enumerate(rewards) if r == best]
    if tie_break == "first":
        return tied[0]
    return min(tied, key=lambda i: (lengths[i], i))


def select_best_drafts(rewards: Sequence[Sequence[float]], lengths: Sequence[Sequence[int]],
                       tie_break: str) -> list[int]:
    """Per prompt, the index of the draft with the highest reward.

    Ties (exactly equal rewards) are broken deterministically: ``"shortest"`` picks the draft with the fewest tokens,
    then the lowest index (a shorter draft costs less Stage-2 context and, at equal reward, is usually the cleaner
    one); ``"first"`` picks the lowest index. A NaN reward is an error rather than silently never (or always) chosen.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break '{tie_break}'; allowed: {', '.join(TIE_BREAKS)}")
    if len(rewards) != len(lengths):
        raise ValueError(f"rewards cover {len(rewards)} prompts but lengths cover {len(lengths)}")
    chosen = []
    for p, (r, n) in enumerate(zip(rewards, lengths)):
        if len(r) == 0 or len(r) != len(n):
            raise ValueError(f"prompt {p}: {len(r)} rewards for {len(n)} drafts (need the same, at least one)")
        if any(math.isnan(x) for x in r):
            raise ValueError(f"prompt {p}: NaN draft reward")
        chosen.append(_best_index(r, n, tie_break))
    return chosen


# ---------------------------------------------------------------- Stage 2: refinement prompt ------------------------


def draft_text(draft_token_ids: Sequence[int], decode: Callable[[list[int]], str], max_draft_tokens: int) -> str:
    """The draft as it goes into the refinement prompt: its last ``max_draft_tokens`` tokens, decoded.

    Cutting from the left keeps the end of the draft, where its final answer is. A left cut can split a multi-byte
    character, which tokenizers decode to U+FFFD; those leading replacement characters are dropped.
    """
    if max_draft_tokens <= 0:
        raise ValueError(f"max_draft_tokens must be > 0, got {max_draft_tokens}")
    ids = list(draft_token_ids)
    truncated = len(ids) > max_draft_tokens
    text = decode(ids[-max_draft_tokens:]) if ids else ""
    if truncated:
        text = TRUNCATION_MARKER + text.lstrip("\ufffd")
    return text if text.strip() else EMPTY_DRAFT_TEXT


def check_template(template: str) -> None:
    """Raise ``ValueError`` unless ``template`` has both placeholders of a Stage-2 user message.

    ``{problem}`` (the bare problem) is refused by name: a Stage-2 prompt built from it loses the single-shot
    instruction (e.g. the ``\\boxed{}`` or ``<think>`` request), and the refinements are then graded on a format
    they were never asked for.
    """
    if "{problem}" in template:
        raise ValueError("the refinement template uses {problem}; use {prompt}, the whole single-shot user message "
                         "(problem + instruction): the paper's Stage-2 prompt is Concat(q, d), so the instruction "
                         "must stay")
    for name in TEMPLATE_PLACEHOLDERS:
        if name not in template:
            raise ValueError(f"the refinement template must contain {name}")


def fill_template(template: str, prompt: str, draft: str) -> str:
    """``template`` with ``{prompt}`` and ``{draft}`` replaced, in ONE pass.

    Not ``str.format``: LaTeX (``\\frac{1}{2}``) in the prompt or draft, or in the template itself, would be read as
    format fields. One regex pass also never re-scans inserted text, so a draft that contains ``{prompt}`` stays as
    written. Every other brace of the template is kept literally.
    """
    check_template(template)
    values = {"prompt": prompt, "draft": draft}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def build_refinement_messages(single_shot: Sequence[dict[str, str]], draft_token_ids: Sequence[int],
                              decode: Callable[[list[int]], str], cfg: RefinementConfig) -> list[dict[str, str]]:
    """Chat messages of one Stage-2 prompt, q' = Concat(q, d) (arXiv 2602.09000, Sec. 3).

    ``single_shot`` is the prompt q as Stage 1, GRPO and evaluation send it (``data.prompts.build_messages``). Every
    message is kept as is except the last, the user turn, whose content becomes ``cfg.template`` with ``{prompt}``
    = that content verbatim and ``{draft}`` = the draft (see :func:`draft_text`). So the system prompt and the
    instruction are the single-shot ones, and only the draft is ever cut.
    """
    if not single_shot or single_shot[-1].get("role") != "user":
        raise ValueError("the single-shot prompt must end with a user message, got roles "
                         f"{[m.get('role') for m in single_shot]}")
    *head, user = single_shot
    refined = fill_template(cfg.template, user["content"], draft_text(draft_token_ids, decode, cfg.max_draft_tokens))
    return [dict(m) for m in head] + [{**user, "content": refined}]


# ---------------------------------------------------------------- budget and accounting -----------------------------


@dataclass(frozen=True)
class RolloutBudget:
    """Rollouts per prompt: ``num_drafts`` (N, Stage 1) + ``num_refinements`` (G, Stage 2) = ``group_size`` (K).

    GRPO is N = 0, G = K: the same code path with Stage 1 switched off, at the same rollout budget.
    """

    group_size: int
    num_drafts: int
    num_refinements: int

    def __post_init__(self) -> None:
        if self.num_drafts < 0 or self.num_refinements < 1:
            raise ValueError(f"need num_drafts >= 0 and num_refinements >= 1, got N={self.num_drafts}, "
                             f"G={self.num_refinements}")
        if self.num_drafts + self.num_refinements != self.group_size:
            raise ValueError(f"num_drafts ({self.num_drafts}) + num_refinements ({self.num_refinements}) must equal "
                             f"group_size ({self.group_size})")

    @property
    def refinement_enabled(self) -> bool:
        """True for iGRPO (a Stage 1 exists), False for plain GRPO."""
        return self.num_drafts > 0

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> "RolloutBudget":
        """N and G from ``algorithm.group_size`` and ``algorithm.refinement``."""
        k = cfg.group_size
        if not cfg.refinement.enabled:
            return cls(group_size=k, num_drafts=0, num_refinements=k)
        n = cfg.refinement.num_drafts
        if not 1 <= n < k:
            raise ValueError(f"algorithm.refinement.num_drafts must be in [1, group_size - 1] = [1, {k - 1}], got {n}")
        return cls(group_size=k, num_drafts=n, num_refinements=k - n)


@dataclass
class StageTokenCounter:
    """Generated sequences and tokens of one step, per stage (``stage1`` drafts, ``stage2`` trained rollouts)."""

    sequences: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    def add(self, stage: str, num_sequences: int, num_tokens: int) -> None:
        """Count ``num_sequences`` generated sequences holding ``num_tokens`` generated tokens in ``stage``."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}'; allowed: {', '.join(STAGES)}")
        if num_sequences < 0 or num_tokens < 0:
            raise ValueError(f"counts must be >= 0, got {num_sequences} sequences, {num_tokens} tokens")
        self.sequences[stage] += int(num_sequences)
        self.tokens[stage] += int(num_tokens)

    def as_metrics(self) -> dict[str, float]:
        """``tokens/generated``, ``tokens/stage1``, ``tokens/stage2``, and the same under ``sequences/``."""
        out: dict[str, float] = {}
        for kind, counts in (("tokens", self.tokens), ("sequences", self.sequences)):
            out[f"{kind}/generated"] = float(sum(counts.values()))
            out.update({f"{kind}/{stage}": float(counts[stage]) for stage in STAGES})
        return out
