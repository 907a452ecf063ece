"""The reward registry: component name -> factory (a ``Reward`` subclass, called with the ``RewardConfig``).

``reward.weights`` names the components a run uses; config validation takes the allowed names from here and each
component's own rules from its ``check_config``. Adding a reward: one module with a ``Reward`` subclass
(see base.py) and one line below.
"""

from __future__ import annotations

from nemo_igrpo.registry import Registry
from nemo_igrpo.rewards.accuracy import AccuracyReward
from nemo_igrpo.rewards.base import Reward
from nemo_igrpo.rewards.format_reward import FormatReward
from nemo_igrpo.rewards.judge_reward import JudgeReward
from nemo_igrpo.rewards.overlong import OverlongReward

REWARDS: Registry[type[Reward]] = Registry("reward")

# math-verify equivalence of the final answer to the gold answer, 1 or 0 (the iGRPO paper's accuracy reward).
REWARDS.register("accuracy")(AccuracyReward)
# <think>...</think> then a final answer, 1 or 0 (the paper's format reward).
REWARDS.register("format")(FormatReward)
# A generative judge's score in [0, 1] behind an OpenAI-compatible endpoint (reward.judge).
REWARDS.register("judge")(JudgeReward)
# DAPO's soft overlong punishment, in [-1, 0] (reward.overlong).
REWARDS.register("overlong")(OverlongReward)
