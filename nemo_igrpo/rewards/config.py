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
    # Per-request HTTP timeout in seconds.
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
    # accuracy: math-verify equivalence of the last \boxed{} (or <answer>) to the gold answer, 1 or 0.
    # format: <think>...</think> followed by an answer section, 1 or 0. judge: the judge model's score in [0, 1].
    # overlong: DAPO's soft overlong penalty in [-1, 0] (reward.overlong; off unless listed).
    # Paper: {accuracy: 1.0, format: 1.0}.
    weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "format": 1.0})
    # Worker processes that grade answers with math-verify. Each item has a hard time limit.
    num_workers: int = 2
    # Hard per-item grading limit in seconds: a pathological answer scores 0 and counts as a timeout.
    timeout_s: float = 5.0
    # Address-space limit of each grading worker in MiB (0: none), so that an answer that expands into a huge
    # number cannot take the node's memory; hitting it scores 0.
    worker_memory_mb: int = 4096
    # Set when the chat template opens <think> in the prompt (e.g. DeepSeek-R1-Distill): the response then starts
    # inside the reasoning, and the format reward requires "...</think>" + answer instead of "<think>...</think>".
    think_opened_in_prompt: bool = False
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    overlong: OverlongPenaltyConfig = field(default_factory=OverlongPenaltyConfig)
