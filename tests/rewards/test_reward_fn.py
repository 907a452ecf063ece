import pytest

from nemo_igrpo.rewards.config import RewardConfig
from nemo_igrpo.rewards.judge import JudgeInterface
from nemo_igrpo.rewards.reward_fn import RewardFunction

RESPONSES = ["<think>r</think> \\boxed{\\frac{1}{2}}", "<think>r</think> \\boxed{3}", "\\boxed{0.5}", "nothing"]
ANSWERS = ["0.5", "4", "1/2", "1"]
PROBLEMS = ["p"] * 4


class _FixedJudge(JudgeInterface):
    def __init__(self):
        self.calls = 0

    def score(self, problems, golds, responses):
        self.calls += 1
        return [0.5, 2.0, -1.0, 0.25]  # out-of-range values are clipped to [0, 1]


def test_paper_default_accuracy_plus_format():
    with RewardFunction(RewardConfig(num_workers=1, timeout_s=10.0)) as fn:
        out = fn(PROBLEMS, RESPONSES, ANSWERS)
    assert out.components == {"accuracy": [1.0, 0.0, 1.0, 0.0], "format": [1.0, 1.0, 0.0, 0.0]}
    assert out.total == [2.0, 1.0, 1.0, 0.0]
    assert out.extracted == ["\\frac{1}{2}", "3", "0.5", None]
    assert out.timeouts == 0


def test_zero_weight_components_are_not_computed():
    judge = _FixedJudge()
    cfg = RewardConfig(weights={"accuracy": 0.0, "format": 0.5, "judge": 2.0})
    with RewardFunction(cfg, judge=judge) as fn:
        assert fn.grader is None
        out = fn(PROBLEMS, RESPONSES, ANSWERS)
    assert set(out.components) == {"format", "judge"} and judge.calls == 1
    assert out.components["judge"] == [0.5, 1.0, 0.0, 0.25]
    assert out.total == [0.5 + 1.0, 0.5 + 2.0, 0.0, 0.5]
    assert out.extracted[0] == "\\frac{1}{2}"


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown reward component"):
        RewardFunction(RewardConfig(weights={"acuracy": 1.0}))
    with RewardFunction(RewardConfig(weights={"format": 1.0})) as fn:
        with pytest.raises(ValueError, match="lengths differ"):
            fn(["p"], ["a", "b"], ["1"])
