"""Rewards: strings in, floats out. Registered components (registry.py: math-verify accuracy in worker processes with
hard time limits, format, an optional generative judge, DAPO's overlong penalty), combined by ``RewardFunction``.
No torch/megatron/vllm imports here: the grading workers import this package and must start fast."""

from nemo_igrpo.rewards.base import Reward, ResponseMeta, Sample, Scores
from nemo_igrpo.rewards.extract import extract_answer
from nemo_igrpo.rewards.format_reward import format_reward
from nemo_igrpo.rewards.judge import JudgeInterface, OpenAIJudge, parse_score
from nemo_igrpo.rewards.math_grader import GradeResult, MathGrader, is_parseable_answer
from nemo_igrpo.rewards.registry import REWARDS
from nemo_igrpo.rewards.reward_fn import RewardFunction, RewardOutput

__all__ = ["REWARDS", "Reward", "ResponseMeta", "Sample", "Scores", "extract_answer", "format_reward", "JudgeInterface",
           "OpenAIJudge", "parse_score", "GradeResult", "MathGrader", "is_parseable_answer", "RewardFunction",
           "RewardOutput"]
