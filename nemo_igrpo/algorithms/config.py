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
    # Optimizer updates per rollout batch (PPO, Schulman et al. 2017, Alg. 1: K epochs of minibatch SGD on each batch;
    # GRPO's mu iterations, Shao et al. 2024, Alg. 1). Each step's rollouts (on each data-parallel rank) are split into
    # num_mini_batches parts and the whole batch is passed over num_update_epochs times; every part is one optimizer
    # update. The old log-probs are taken once, before the first update, so from the second update on the ratio
    # pi/pi_old differs from 1 and the clip range acts. The LR schedule counts optimizer updates. With more than one
    # mini-batch, rows are shuffled (seeded by the run seed and step) each epoch. Default 1 and 1: one on-policy update
    # per step (the iGRPO paper's setting), and exactly the single-update code path.
    num_mini_batches: int = 1
    num_update_epochs: int = 1
    # dr_grpo's constant normaliser: token sums are divided by this (the generation limit). Null: the longest
    # response allowed by generation.max_new_tokens.
    dr_grpo_max_tokens: int | None = None
    # Denominator guard of the grpo advantage std.
    advantage_eps: float = 1e-6
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    # Training-vs-generation mismatch correction (TIS / MIS); off by default. See MismatchCorrectionConfig below.
    mismatch: MismatchCorrectionConfig = field(default_factory=lambda: MismatchCorrectionConfig())


# Mismatch correction modes and levels, named once: the config validation and nemo_igrpo.algorithms.mismatch read them.
MISMATCH_MODES = ("none", "tis", "mis")
MISMATCH_LEVELS = ("token", "sequence")


@dataclass
class MismatchCorrectionConfig:
    """Correct for the difference between the generator's sampling distribution pi_gen (vLLM kernels, bf16) and the
    trainer's pi_old for the same weights. Tokens are sampled from pi_gen but the loss treats them as samples of
    pi_old; the per-token importance weight ``k = pi_old / pi_gen`` (from the log-probs both already compute)
    multiplies each token's policy-gradient term. The KL penalty and the length normalisation are unchanged.

    Needs the generator's log-probs of the full distribution: ``generation.top_p`` must be 1 and ``generation.top_k``
    off, otherwise the generator reports log-probs renormalised over the kept tokens (biased), and the config is
    refused. Metrics: ``mismatch/kl`` (KL(pi_gen || pi_old), k3 estimate, logged whether or not the correction is on),
    ``mismatch/weight_mean``, ``mismatch/truncated_fraction`` (TIS) and ``mismatch/masked_fraction`` (MIS: share of
    response tokens dropped).
    """

    # "none": off (the iGRPO paper trains without it). "tis": truncated importance sampling, weight min(k, tis_cap)
    # per token (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training").
    # "mis": masked importance sampling, weight k inside [mis_low, mis_high] and 0 outside, so those tokens (or whole
    # sequences, see mis_level) carry no policy gradient (IcePop, Ling Team 2025, "Every Step Evolves", token level;
    # Liu et al. 2025, "When Speed Kills Stability", sequence level).
    mode: str = "none"
    # TIS cap C > 0 on the token weight. 2.0 as in Yao et al.'s recipe.
    tis_cap: float = 2.0
    # MIS level: "token" (IcePop: each token's own k) or "sequence" (Seq-MIS: the sequence ratio prod_t k_t, one
    # weight and one keep/drop decision for all tokens of the sequence).
    mis_level: str = "token"
    # MIS acceptance range [mis_low, mis_high], 0 <= low < 1 < high. Not from a paper: [0.5, 2] is symmetric in
    # log-space; both sources tune it per setup (a sequence ratio spreads far wider than a token ratio).
    mis_low: float = 0.5
    mis_high: float = 2.0
