"""Rewards: strings in, floats out. Math-verify accuracy (in worker processes with hard time limits), format, and an
optional generative judge, combined by ``RewardFunction``. No torch/megatron/vllm imports here: the grading workers
import this package and must start fast."""

from nemo_igrpo.rewards.extract import extract_answer
from nemo_igrpo.rewards.format_reward import format_reward
from nemo_igrpo.rewards.judge import JudgeInterface, OpenAIJudge, parse_score
from nemo_igrpo.rewards.math_grader import GradeResult, MathGrader, is_parseable_answer
from nemo_igrpo.rewards.reward_fn import RewardFunction, RewardOutput

__all__ = ["extract_answer", "format_reward", "JudgeInterface", "OpenAIJudge", "parse_score", "GradeResult",
           "MathGrader", "is_parseable_answer", "RewardFunction", "RewardOutput"]
