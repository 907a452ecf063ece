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
    timeout_s: float = 60.0
    max_retries: int = 3


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
    judge: JudgeConfig = field(default_factory=JudgeConfig)
