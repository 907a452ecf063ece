"""Reward options. The paper uses accuracy (math-verify) + format, weight 1.0 each (arXiv 2602.09000, Sec. 4).

Which components exist is the reward registry's business (``rewards/registry.py``); each component's own options
live in a small section of their own below.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class JudgeConfig:
    """A generative judge served behind an OpenAI-compatible endpoint (e.g. ``vllm serve``)."""

    # Base URL of the endpoint, e.g. http://localhost:8000/v1. Empty: the judge is not used.
    base_url: str = ""
    model: str = ""
    # Name of the environment variable that holds the API key (the key itself never goes into a config or a log).
    api_key_env: str = "JUDGE_API_KEY"
    # Deadline of one request in seconds, from connecting to the last byte of the reply (a server that trickles its
    # reply is cut off here, not after timeout_s of silence per read).
    timeout_s: float = 60.0
    # Retries after a failed request (connection error, timeout, HTTP 429 or 5xx); other 4xx are not retried.
    max_retries: int = 3
    # First retry waits this long; each further retry doubles it (exponential backoff, capped at 30 s).
    backoff_s: float = 1.0
    # Requests in flight at once (threads); the endpoint batches them.
    concurrency: int = 8
    # Token budget of the judge's reply (it must end with "SCORE: <number in [0, 1]>", see docs/rewards.md).
    max_tokens: int = 512
    # Sampling temperature of the judge (0: deterministic verdicts).
    temperature: float = 0.0
    # Largest reply accepted, in bytes (a judge's verdict is a few KB); a larger one is cut off and scores 0.
    max_reply_bytes: int = 1_000_000
    # Circuit breaker: after this many failed requests in a row (no answer, timeout, HTTP error, redirect, oversized
    # reply) the endpoint counts as down. Until breaker_cooldown_s has passed, every score is 0 without a request
    # (counted in stats.skipped, logged once); then one request probes it again. 0 disables the breaker.
    breaker_failures: int = 5
    breaker_cooldown_s: float = 60.0


@dataclass
class GradingConfig:
    """How the accuracy component finds and checks a final answer (``math_grader.MathGrader``). The worker count,
    the per-item limit and the worker memory limit are ``RewardConfig`` fields above this section's."""

    # Where the final answer is taken from. "boxed" (default, for training with a "put the answer in \boxed{}"
    # instruction): the last run of \boxed{} (several boxes in a row are one multi-part answer, as math-verify reads
    # them) or the last <answer> tag; a response without one scores 0. "full": math-verify's own extraction from the
    # whole response (LaTeX and plain expressions, "final answer is ...", boxes), which reproduces math-verify's
    # verdicts on free-form responses. Gold answers are handled the same way in both modes (a whole solution is
    # reduced to its final answer). docs/evaluation.md says which mode matches NeMo-Skills' or math-verify's numbers.
    extraction: str = "boxed"
    # Per-batch CPU budget of grading, in CPU seconds per answer sent to the workers (0: no budget); a batch gets at
    # least batch_budget_min_s. Once a batch has spent it, no new item starts and the rest score 0, counted as
    # over-budget timeouts (a normal answer costs 1-30 ms; the budget only bites when many answers hit their limit).
    batch_budget_s_per_answer: float = 0.25
    batch_budget_min_s: float = 30.0
    # Wall-clock seconds after which a worker that has not answered is killed and its item scores 0. Only a guard
    # against a worker hung without using CPU (per-item limits count CPU time, so machine load cannot trigger them);
    # must exceed RewardConfig.timeout_s. null (default): the larger of 60 s and 10 x timeout_s.
    hung_worker_s: float | None = None


@dataclass
class OverlongPenaltyConfig:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), the ``overlong`` reward component."""

    # L_cache: the penalty grows linearly from 0 to -1 over the last buffer_tokens tokens before the generation
    # limit L_max (generation.max_new_tokens); a response cut at the limit gets -1. Must be in (0, L_max). Null: a
    # fifth of L_max, DAPO's proportion (4096 of a 20480-token limit). Used only when reward.weights lists
    # "overlong" (its weight scales the penalty).
    buffer_tokens: int | None = None


@dataclass
class RewardConfig:
    # The reward components of the scalar reward and their weights: total = sum(weight * component). Names come
    # from the reward registry (rewards/registry.py); a component with weight 0 is not computed. Built in:
    # accuracy: math-verify equivalence of the final answer (grading.extraction) to the gold answer, 1 or 0.
    # format: <think>...</think> followed by an answer section, 1 or 0. judge: the judge model's score in [0, 1].
    # overlong: DAPO's soft overlong penalty in [-1, 0] (reward.overlong; off unless listed).
    # Paper: {accuracy: 1.0, format: 1.0}.
    weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 1.0})
    # Worker processes that grade answers with math-verify. Each item has a hard time limit.
    num_workers: int = 2
    # Per-item grading limit in CPU seconds (CPU time, so that machine load cannot change a verdict; the kernel ends
    # the worker shortly after): a pathological answer scores 0 and counts as a timeout.
    timeout_s: float = 5.0
    # Address-space limit of each grading worker in MiB (0: none), so that an answer that expands into a huge
    # number cannot take the node's memory; hitting it scores 0.
    worker_memory_mb: int = 4096
    # Set when the chat template opens <think> in the prompt (e.g. DeepSeek-R1-Distill): the response then starts
    # inside the reasoning, and the format reward requires "...</think>" + answer instead of "<think>...</think>".
    think_opened_in_prompt: bool = False
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    grading: GradingConfig = field(default_factory=GradingConfig)
    overlong: OverlongPenaltyConfig = field(default_factory=OverlongPenaltyConfig)
