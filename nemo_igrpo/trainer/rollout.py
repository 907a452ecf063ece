"""One step's rollouts for this data-parallel shard: optional Stage 1 (drafts -> best draft -> refinement prompt),
then the group of K (GRPO) or G (iGRPO Stage 2) completions that the update trains on.

Only the model-parallel source rank runs this; the result is a plain Python object it broadcasts to its peers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from nemo_igrpo.algorithms.config import AlgorithmConfig
from nemo_igrpo.algorithms.igrpo import RolloutBudget, StageTokenCounter, build_refinement_messages, select_best_drafts
from nemo_igrpo.backends.generation.interface import GenerationInterface, SamplingParams
from nemo_igrpo.data.prompts import PromptRecord, build_messages, encode_messages
from nemo_igrpo import seeding


@dataclass
class StepRollouts:
    """The trained-on group of every prompt, flattened prompt-major: sample j of prompt i is at i * group + j."""

    group_size: int
    prompt_ids: list[list[int]]  # the prompt each completion was sampled from (q for GRPO, q' for iGRPO)
    response_ids: list[list[int]]
    generator_logprobs: list[list[float]]
    rewards: list[float]
    metrics: dict[str, float] = field(default_factory=dict)
    # For logs and tests: what Stage 1 picked (empty for GRPO).
    best_draft_texts: list[str] = field(default_factory=list)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


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

    def single_shot_messages(self, record: PromptRecord) -> list[dict[str, str]]:
        """q: the prompt of Stage 1, GRPO, validation and evaluation; Stage 2 extends it (q' = Concat(q, d))."""
        return build_messages(record.problem, self.system_prompt, self.instruction)

    def encode_single_shot(self, record: PromptRecord) -> list[int]:
        return encode_messages(self.tokenizer, self.single_shot_messages(record))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _sample(self, prompts: list[list[int]], n: int, seed: int, timings: dict[str, float]):
        repeated = [p for p in prompts for _ in range(n)]
        params = SamplingParams(temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                                top_k=self.sampling.top_k, max_new_tokens=self.sampling.max_new_tokens, seed=seed,
                                stop_token_ids=self.stop_ids)
        t0 = time.perf_counter()
        out = self.generator.generate(repeated, params)
        timings["time/generate"] += time.perf_counter() - t0
        return repeated, out

    def _score(self, records: list[PromptRecord], n: int, responses: list[str], timings: dict[str, float]):
        t0 = time.perf_counter()
        result = self.reward_fn([r.problem for r in records for _ in range(n)], responses,
                                [r.answer for r in records for _ in range(n)])
        timings["time/reward"] += time.perf_counter() - t0
        return result

    def run(self, records: list[PromptRecord], step: int, shard: int) -> StepRollouts:
        timings = {"time/generate": 0.0, "time/reward": 0.0}
        counter = StageTokenCounter()
        metrics: dict[str, float] = {}
        prompts = [self.encode_single_shot(r) for r in records]
        best_texts: list[str] = []
        n, g = self.budget.num_drafts, self.budget.num_refinements

        if n > 0:
            _, drafts = self._sample(prompts, n, seeding.derive_seed(self.run_seed, step, seeding.STAGE_DRAFTS, shard),
                                     timings)
            counter.add("stage1", len(drafts.token_ids), sum(len(t) for t in drafts.token_ids))
            draft_texts = [self._decode(t) for t in drafts.token_ids]
            scored = self._score(records, n, draft_texts, timings)
            rewards = [scored.total[i * n:(i + 1) * n] for i in range(len(records))]
            lengths = [[len(t) for t in drafts.token_ids[i * n:(i + 1) * n]] for i in range(len(records))]
            picks = select_best_drafts(rewards, lengths, self.algorithm.refinement.tie_break)
            best = [rewards[i][k] for i, k in enumerate(picks)]
            metrics["reward/draft_mean"] = _mean(scored.total)
            metrics["reward/draft_best"] = _mean(best)
            if "accuracy" in scored.components:
                acc = scored.components["accuracy"]
                metrics["accuracy/draft_mean"] = _mean(acc)
                metrics["accuracy/draft_best"] = _mean([acc[i * n + k] for i, k in enumerate(picks)])
            prompts = []
            for i, (record, k) in enumerate(zip(records, picks)):
                draft_ids = [t for t in drafts.token_ids[i * n + k] if t not in self.stop_ids]
                best_texts.append(draft_texts[i * n + k])
                messages = build_refinement_messages(self.single_shot_messages(record), draft_ids, self._decode,
                                                     self.algorithm.refinement)
                prompts.append(encode_messages(self.tokenizer, messages))

        repeated, out = self._sample(prompts, g, seeding.derive_seed(self.run_seed, step, seeding.STAGE_REFINEMENTS,
                                                                      shard), timings)
        counter.add("stage2", len(out.token_ids), sum(len(t) for t in out.token_ids))
        texts = [self._decode(t) for t in out.token_ids]
        scored = self._score(records, g, texts, timings)
        metrics["reward/mean"] = _mean(scored.total)
        for name, values in scored.components.items():
            metrics[f"reward/{name}"] = _mean(values)
        if "accuracy" in scored.components:
            metrics["accuracy/train"] = _mean(scored.components["accuracy"])
        if n > 0:
            metrics["reward/refinement_gain"] = metrics["reward/mean"] - metrics["reward/draft_best"]
            if "accuracy" in scored.components:
                metrics["accuracy/refinement_gain"] = metrics["accuracy/train"] - metrics["accuracy/draft_best"]
        metrics["reward/timeouts"] = float(scored.timeouts)
        lengths = [len(t) for t in out.token_ids]
        metrics["response_length/mean"] = _mean(lengths)
        metrics["response_length/max"] = float(max(lengths, default=0))
        metrics["response_length/clip_ratio"] = _mean([float(r == "length") for r in out.finish_reasons])
        metrics["prompt_length/mean"] = _mean([len(p) for p in prompts])
        metrics.update(counter.as_metrics())
        metrics.update(timings)
        return StepRollouts(group_size=g, prompt_ids=repeated, response_ids=out.token_ids,
                            generator_logprobs=out.logprobs, rewards=list(scored.total), metrics=metrics,
                            best_draft_texts=best_texts)

    def validate(self, records: list[PromptRecord], temperature: float, seed: int) -> tuple[float, float]:
        """Single-shot accuracy (no drafts: iGRPO inference is single-shot). Returns (correct, count)."""
        prompts = [self.encode_single_shot(r) for r in records]
        params = SamplingParams(temperature=temperature, top_p=self.sampling.top_p if temperature > 0 else 1.0,
                                max_new_tokens=self.sampling.max_new_tokens, seed=seed, stop_token_ids=self.stop_ids)
        out = self.generator.generate(prompts, params)
        scored = self.reward_fn([r.problem for r in records], [self._decode(t) for t in out.token_ids],
                                [r.answer for r in records])
        return float(sum(scored.components["accuracy"])), float(len(records))

    def close(self) -> None:
        close = getattr(self.reward_fn, "close", None)
        if close is not None:
            close()
