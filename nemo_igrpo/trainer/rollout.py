"""One data-parallel shard's rollouts: optional Stage 1 (drafts -> best draft -> refinement prompt), then the group of
K (GRPO) or G (iGRPO Stage 2) completions per prompt that the update trains on.

Only the model-parallel source rank runs this (every rank with vLLM); which groups a step trains on, over one or
more generation rounds, is decided in ``step_rollouts.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from nemo_igrpo import seeding
from nemo_igrpo.algorithms.config import AlgorithmConfig
from nemo_igrpo.algorithms.igrpo import (STAGE_DRAFTS, STAGE_TRAINED, RolloutBudget, StageTokenCounter,
                                         build_refinement_messages, select_best_drafts)
from nemo_igrpo.backends.generation.interface import GenerationInterface, GenerationOutput, SamplingParams
from nemo_igrpo.data.prompts import PromptRecord, build_messages, encode_messages
from nemo_igrpo.rewards.base import FINISH_LENGTH, ResponseMeta


@dataclass
class Group:
    """One prompt's trained-on rollouts (GRPO: K answers to q; iGRPO: G refinements of q') and how they came about."""

    prompt_ids: list[int]  # q for GRPO, q' for iGRPO
    response_ids: list[list[int]]
    generator_logprobs: list[list[float]]
    finish_reasons: list[str]
    rewards: list[float]
    components: dict[str, list[float]]  # per reward component, one value per rollout
    shard: int = 0  # the data-parallel rank that generated it, where its tokens are counted
    # iGRPO Stage 1 (empty for GRPO): the N drafts' rewards, components, lengths and finish reasons, and the pick.
    draft_rewards: list[float] = field(default_factory=list)
    draft_components: dict[str, list[float]] = field(default_factory=dict)
    draft_lengths: list[int] = field(default_factory=list)
    draft_finish_reasons: list[str] = field(default_factory=list)
    draft_logprobs: list[list[float]] = field(default_factory=list)  # the generator's, for the Stage-1 entropy
    best_draft: int = -1
    best_draft_text: str = ""

    @property
    def tokens(self) -> int:
        """Generated tokens of both stages."""
        return sum(len(r) for r in self.response_ids) + sum(self.draft_lengths)

    @property
    def truncated(self) -> list[bool]:
        """Per rollout: cut at the generation limit."""
        return [r == FINISH_LENGTH for r in self.finish_reasons]


@dataclass
class RoundResult:
    """One generation round of a shard: its groups and what producing them cost."""

    groups: list[Group]
    timings: dict[str, float]
    timeouts: int = 0  # responses whose grading hit a limit (scored 0)
    over_budget: int = 0  # of those, responses left ungraded because the batch's grading budget was spent


@dataclass
class StepRollouts:
    """The groups one shard trains on, flattened prompt-major: sample j of prompt i is at i * group_size + j."""

    group_size: int
    prompt_ids: list[list[int]]  # the prompt each completion was sampled from (q for GRPO, q' for iGRPO)
    response_ids: list[list[int]]
    generator_logprobs: list[list[float]]
    rewards: list[float]
    # Per row: whether it carries loss. False for a rollout removed by overlong filtering or a group that only
    # pads a data-parallel rank (dynamic sampling); such rows keep their place in their group's advantages.
    loss_rows: list[bool] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    # For logs and tests: what Stage 1 picked (empty for GRPO).
    best_draft_texts: list[str] = field(default_factory=list)

    @classmethod
    def from_groups(cls, groups: Sequence[Group], group_size: int, carries_loss: Sequence[bool],
                    overlong_filter: bool, metrics: dict[str, float]) -> "StepRollouts":
        """Flatten ``groups``; ``carries_loss[i]`` False masks group i whole, ``overlong_filter`` its truncated rows."""
        out = cls(group_size=group_size, prompt_ids=[], response_ids=[], generator_logprobs=[], rewards=[],
                  metrics=dict(metrics))
        masked_truncated = 0
        for g, keep in zip(groups, carries_loss, strict=True):
            if len(g.response_ids) != group_size:
                raise ValueError(f"a group has {len(g.response_ids)} rollouts, expected {group_size}")
            out.prompt_ids += [g.prompt_ids] * group_size
            out.response_ids += g.response_ids
            out.generator_logprobs += g.generator_logprobs
            out.rewards += g.rewards
            for t in g.truncated:
                drop = overlong_filter and t
                masked_truncated += int(drop and keep)
                out.loss_rows.append(keep and not drop)
            if g.best_draft >= 0:
                out.best_draft_texts.append(g.best_draft_text)
        if overlong_filter:
            out.metrics["overlong/masked_share"] = masked_truncated / len(out.loss_rows) if out.loss_rows else 0.0
        return out


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def sampled_entropy(logprobs: Sequence[Sequence[float]]) -> float:
    """Mean of -log p over every sampled token: an unbiased estimate of the policy's per-token entropy at the
    sampling temperature (E_{x~p}[-log p(x)] = H(p)) when sampling applies no top-p / top-k cut. It costs nothing
    (the generator returns the log-probs) and is the same estimator for both stages, so drafts, refinements and GRPO
    rollouts compare on one scale."""
    total = sum(len(lp) for lp in logprobs)
    return -float(sum(sum(lp) for lp in logprobs)) / total if total else 0.0


def rollout_metrics(groups: Sequence[Group], timings: dict[str, float], timeouts: int,
                    over_budget: int = 0) -> dict[str, float]:
    """Reward, accuracy, length and budget metrics over every generated group (all rounds, trained on or not: they
    are unbiased samples of the current policy, and their tokens were spent)."""
    metrics: dict[str, float] = {}
    counter = StageTokenCounter()
    rows = [x for g in groups for x in g.rewards]
    drafts = any(g.best_draft >= 0 for g in groups)
    if drafts:
        counter.add(STAGE_DRAFTS, sum(len(g.draft_lengths) for g in groups), sum(sum(g.draft_lengths) for g in groups))
        metrics["reward/draft_mean"] = _mean([x for g in groups for x in g.draft_rewards])
        metrics["reward/draft_best"] = _mean([g.draft_rewards[g.best_draft] for g in groups])
        if all("accuracy" in g.draft_components for g in groups):
            metrics["accuracy/draft_mean"] = _mean([x for g in groups for x in g.draft_components["accuracy"]])
            metrics["accuracy/draft_best"] = _mean([g.draft_components["accuracy"][g.best_draft] for g in groups])
        metrics["overlong/draft_truncated_share"] = _mean(
            [float(r == FINISH_LENGTH) for g in groups for r in g.draft_finish_reasons])
        metrics["entropy/stage1_sampled"] = sampled_entropy([lp for g in groups for lp in g.draft_logprobs])
    # The trained-on rollouts: GRPO's single-shot answers, iGRPO's Stage-2 refinements.
    metrics["entropy/stage2_sampled"] = sampled_entropy([lp for g in groups for lp in g.generator_logprobs])
    counter.add(STAGE_TRAINED, len(rows), sum(len(r) for g in groups for r in g.response_ids))
    metrics["reward/mean"] = _mean(rows)
    names = groups[0].components.keys() if groups else ()
    for name in names:
        metrics[f"reward/{name}"] = _mean([x for g in groups for x in g.components[name]])
    if "accuracy" in names:
        metrics["accuracy/train"] = metrics["reward/accuracy"]
    if drafts:
        # Against the selected draft (the refinement's own starting point) and against the mean draft: a copier of
        # the selected draft scores 0 on the first but gains on the second; the mean draft is the single-shot policy,
        # the fair baseline of what a refinement adds.
        metrics["reward/refinement_gain"] = metrics["reward/mean"] - metrics["reward/draft_best"]
        metrics["reward/refinement_gain_vs_draft_mean"] = metrics["reward/mean"] - metrics["reward/draft_mean"]
        if "accuracy/train" in metrics and "accuracy/draft_best" in metrics:
            metrics["accuracy/refinement_gain"] = metrics["accuracy/train"] - metrics["accuracy/draft_best"]
            metrics["accuracy/refinement_gain_vs_draft_mean"] = metrics["accuracy/train"] - metrics["accuracy/draft_mean"]
    metrics["reward/timeouts"] = float(timeouts)
    metrics["reward/over_budget"] = float(over_budget)
    lengths = [len(r) for g in groups for r in g.response_ids]
    metrics["response_length/mean"] = _mean(lengths)
    metrics["response_length/max"] = float(max(lengths, default=0))
    metrics["response_length/clip_ratio"] = _mean([float(t) for g in groups for t in g.truncated])
    metrics["prompt_length/mean"] = _mean([len(g.prompt_ids) for g in groups])
    metrics.update(counter.as_metrics())
    metrics.update(timings)
    return metrics


class RolloutWorker:
    """Turns prompts into scored groups with a generator and a reward function (backend-agnostic)."""

    def __init__(self, generator: GenerationInterface, reward_fn: Callable, tokenizer: Any,
                 algorithm: AlgorithmConfig, sampling: SamplingParams, system_prompt: str | None, instruction: str,
                 run_seed: int) -> None:
        self.generator = generator
        self.reward_fn = reward_fn
        self.tokenizer = tokenizer
        self.algorithm = algorithm
        self.budget = RolloutBudget.from_config(algorithm)
        self.sampling = sampling
        self.system_prompt = system_prompt
        self.instruction = instruction
        self.run_seed = run_seed
        self.stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        # Overlong handling on: a truncated draft never wins the selection over a complete one.
        self.truncation_counts = algorithm.overlong_filter or bool(getattr(reward_fn, "penalises_truncation", False))

    def single_shot_messages(self, record: PromptRecord) -> list[dict[str, str]]:
        """q: the prompt of Stage 1, GRPO, validation and evaluation; Stage 2 extends it (q' = Concat(q, d))."""
        return build_messages(record.problem, self.system_prompt, self.instruction)

    def encode_single_shot(self, record: PromptRecord) -> list[int]:
        return encode_messages(self.tokenizer, self.single_shot_messages(record))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _sample(self, prompts: list[list[int]], n: int, seed: int, timings: dict[str, float]) -> GenerationOutput:
        repeated = [p for p in prompts for _ in range(n)]
        params = SamplingParams(temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                                top_k=self.sampling.top_k, max_new_tokens=self.sampling.max_new_tokens, seed=seed,
                                stop_token_ids=self.stop_ids)
        t0 = time.perf_counter()
        out = self.generator.generate(repeated, params)
        timings["time/generate"] += time.perf_counter() - t0
        return out

    def _score(self, records: list[PromptRecord], n: int, out: GenerationOutput, stage: str,
               timings: dict[str, float] | None = None):
        """Rewards of ``out`` (``n`` responses per record, in order), each seen with its metadata."""
        t0 = time.perf_counter()
        meta = [ResponseMeta(num_tokens=len(ids), finish_reason=reason, max_tokens=self.sampling.max_new_tokens,
                             stage=stage) for ids, reason in zip(out.token_ids, out.finish_reasons)]
        result = self.reward_fn([r.problem for r in records for _ in range(n)],
                                [self._decode(t) for t in out.token_ids],
                                [r.answer for r in records for _ in range(n)], meta)
        if timings is not None:
            timings["time/reward"] += time.perf_counter() - t0
        return result

    def generate_groups(self, records: list[PromptRecord], step: int, shard: int, round_index: int = 0
                        ) -> RoundResult:
        """One group per record (both stages in iGRPO). Seeds depend on (run seed, step, stage, shard, round)."""
        timings = {"time/generate": 0.0, "time/reward": 0.0}
        timeouts = over_budget = 0
        prompts = [self.encode_single_shot(r) for r in records]
        n, g = self.budget.num_drafts, self.budget.num_refinements
        groups = [Group(prompt_ids=[], response_ids=[], generator_logprobs=[], finish_reasons=[], rewards=[],
                        components={}, shard=shard) for _ in records]

        if n > 0:
            seed = seeding.derive_seed(self.run_seed, step, seeding.STAGE_DRAFTS, shard, round_index)
            drafts = self._sample(prompts, n, seed, timings)
            scored = self._score(records, n, drafts, STAGE_DRAFTS, timings)
            timeouts, over_budget = timeouts + scored.timeouts, over_budget + scored.over_budget
            rows = [slice(i * n, (i + 1) * n) for i in range(len(records))]
            rewards = [scored.total[s] for s in rows]
            lengths = [[len(t) for t in drafts.token_ids[s]] for s in rows]
            truncated = [[r == FINISH_LENGTH for r in drafts.finish_reasons[s]] for s in rows]
            picks = select_best_drafts(rewards, lengths, self.algorithm.refinement.tie_break,
                                       truncated if self.truncation_counts else None)
            prompts = []
            for i, (record, k) in enumerate(zip(records, picks)):
                grp, best = groups[i], i * n + k
                grp.draft_rewards, grp.draft_lengths = rewards[i], lengths[i]
                grp.draft_components = {name: v[rows[i]] for name, v in scored.components.items()}
                grp.draft_finish_reasons = drafts.finish_reasons[rows[i]]
                grp.draft_logprobs = drafts.logprobs[rows[i]]
                grp.best_draft, grp.best_draft_text = k, self._decode(drafts.token_ids[best])
                draft_ids = [t for t in drafts.token_ids[best] if t not in self.stop_ids]
                messages = build_refinement_messages(self.single_shot_messages(record), draft_ids, self._decode,
                                                     self.algorithm.refinement)
                prompts.append(encode_messages(self.tokenizer, messages))

        seed = seeding.derive_seed(self.run_seed, step, seeding.STAGE_REFINEMENTS, shard, round_index)
        out = self._sample(prompts, g, seed, timings)
        scored = self._score(records, g, out, STAGE_TRAINED, timings)
        timeouts, over_budget = timeouts + scored.timeouts, over_budget + scored.over_budget
        for i, grp in enumerate(groups):
            s = slice(i * g, (i + 1) * g)
            grp.prompt_ids = prompts[i]
            grp.response_ids, grp.generator_logprobs = out.token_ids[s], out.logprobs[s]
            grp.finish_reasons, grp.rewards = out.finish_reasons[s], scored.total[s]
            grp.components = {name: v[s] for name, v in scored.components.items()}
        return RoundResult(groups=groups, timings=timings, timeouts=timeouts, over_budget=over_budget)

    def run(self, records: list[PromptRecord], step: int, shard: int) -> StepRollouts:
        """Every record's group, all trained on (one round, no dynamic sampling)."""
        result = self.generate_groups(records, step, shard)
        metrics = rollout_metrics(result.groups, result.timings, result.timeouts, result.over_budget)
        return StepRollouts.from_groups(result.groups, self.budget.num_refinements, [True] * len(result.groups),
                                        self.algorithm.overlong_filter, metrics)

    def validate(self, records: list[PromptRecord], temperature: float, seed: int) -> tuple[float, float]:
        """Single-shot accuracy (no drafts: iGRPO inference is single-shot). Returns (correct, count)."""
        prompts = [self.encode_single_shot(r) for r in records]
        params = SamplingParams(temperature=temperature, top_p=self.sampling.top_p if temperature > 0 else 1.0,
                                max_new_tokens=self.sampling.max_new_tokens, seed=seed, stop_token_ids=self.stop_ids)
        out = self.generator.generate(prompts, params)
        scored = self._score(records, 1, out, "")
        return float(sum(scored.components["accuracy"])), float(len(records))

    def close(self) -> None:
        close = getattr(self.reward_fn, "close", None)
        if close is not None:
            close()
