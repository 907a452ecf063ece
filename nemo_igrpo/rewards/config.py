"""Reward options. The paper uses accuracy (math-verify) + format, weight 1.0 each (arXiv 2602.09000, Sec. 4)."""

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
class RewardConfig:
    # Weight of each component in the scalar reward; a component with weight 0 is not computed.
    # accuracy: math-verify equivalence of the last \boxed{} (or <answer>) to the gold answer, 1 or 0.
    # format: <think>...</think> followed by an answer section, 1 or 0. judge: the judge model's score in [0, 1].
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
