"""Algorithm options: GRPO-family advantage and loss, and the iGRPO two-stage wrapper.

Every option is documented where it is declared, with the paper it comes from. Defaults are the iGRPO paper's
(arXiv 2602.09000) unless stated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The paper (arXiv 2602.09000, Sec. 3) builds the Stage-2 prompt as q' = Concat(q, d): the original prompt, then the
# best draft, with guidance to improve on it. {prompt} is the single-shot user message exactly as Stage 1, GRPO and
# evaluation send it (problem + instruction); the system prompt is the single-shot one too (data.system_prompt), so a
# Stage-2 prompt differs from its Stage-1 prompt only by the draft block. The paper's exact guidance wording was not
# available to us: the text around {draft} paraphrases its description. Set it to the paper's text where it is known.
DEFAULT_REFINEMENT_TEMPLATE = (
    "{prompt}\n\n"
    "Here is a previous attempt at this problem:\n"
    "<previous_attempt>\n{draft}\n</previous_attempt>\n\n"
    "The attempt may be correct or wrong. Use it as a starting point: check its reasoning, fix any mistakes, and "
    "write a complete, correct solution."
)


@dataclass
class RefinementConfig:
    """iGRPO's Stage 1 / Stage 2 (arXiv 2602.09000, Sec. 3). ``enabled: false`` is plain GRPO on the same code path."""

    # Turn iGRPO on. Off: every one of the K = algorithm.group_size rollouts is a single-shot answer (GRPO).
    enabled: bool = True
    # N: Stage-1 drafts per prompt. The rest of the group, G = group_size - N, are Stage-2 refinements, so the
    # rollout budget equals GRPO's K. Paper: GRPO 8 vs iGRPO 4 + 4.
    num_drafts: int = 4
    # User message of Stage-2 prompts; must contain {prompt} and {draft}. {prompt} is the single-shot user message
    # verbatim (problem + data.instruction) and the system message is the single-shot one, so q' = Concat(q, d) as in
    # the paper and an iGRPO recipe asks for the same answer format as its GRPO twin. {draft} is the selected draft
    # (its reasoning and its final answer section). Filled in one pass, not with str.format, so other braces (LaTeX)
    # in the template, the prompt or the draft are kept literally.
    template: str = DEFAULT_REFINEMENT_TEMPLATE
    # Longest draft kept in the refinement prompt, in tokens. Longer drafts lose tokens from the *left* of their
    # reasoning, so the final answer section survives, and start with "..."; the original prompt is never cut. Not from the
    # paper (it bounds the Stage-2 prompt: max prompt 1024 + draft must fit the policy's sequence length).
    max_draft_tokens: int = 2048
    # Which draft wins when several share the best reward: "shortest" (fewest tokens, then lowest index) or "first"
    # (lowest index). Deterministic either way.
    tie_break: str = "shortest"


@dataclass
class AlgorithmConfig:
    # K: rollouts per prompt per step. GRPO samples K single-shot answers; iGRPO splits K = N drafts + G refinements.
    group_size: int = 8
    # Advantage estimator, by registry name: grpo (group mean/std, GRPO eq. 4), dr_grpo (no std division,
    # Liu et al. 2025), rloo (leave-one-out baseline, Ahmadian et al. 2024).
    advantage_estimator: str = "grpo"
    # Policy loss, by registry name: grpo (per-sequence 1/|o| then group mean, GRPO eq. 5), dapo (token-level over the
    # batch, asymmetric clip; Yu et al. 2025), gspo (sequence-level ratio; Zheng et al. 2025), dr_grpo (token sum over
    # a constant max length; Liu et al. 2025).
    policy_loss: str = "grpo"
    # PPO clip epsilon. Not given by the iGRPO paper; 0.2 is the PPO/GRPO convention.
    clip_eps: float = 0.2
    # Asymmetric clip range, used by every policy loss: the ratio is clipped to [1 - clip_low, 1 + clip_high]; each
    # null falls back to clip_eps. DAPO's "clip-higher" (Yu et al. 2025): 0.2 / 0.28. GSPO clips its sequence-level
    # ratio, whose spread is far smaller (Zheng et al. 2025 use 3e-4 / 4e-4).
    clip_low: float | None = None
    clip_high: float | None = None
    # Dual-clip constant c > 1 (Ye et al. 2020): for negative advantages the loss is bounded by c * |A|. Null: off.
    dual_clip_c: float | None = None
    # KL penalty coefficient to the reference (initial) policy, added per token inside the loss's own reduction
    # (GRPO eq. 3). Paper: 0, which also skips the reference model; > 0 requires reference log-probs.
    kl_coef: float = 0.0
    # KL estimator when kl_coef > 0: k1 (log-ratio), k2 (squared log-ratio / 2), k3 (Schulman's unbiased, the paper's).
    kl_estimator: str = "k3"
    # dr_grpo's constant normaliser: token sums are divided by this (the generation limit). Null: the longest
    # response allowed by generation.max_new_tokens.
    dr_grpo_max_tokens: int | None = None
    # Denominator guard of the grpo advantage std.
    advantage_eps: float = 1e-6
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
