"""The reward function: registered components, their weights, the metadata they see, and DAPO's overlong penalty
against the paper's equation."""

from typing import Sequence

import pytest

from nemo_igrpo.config import ConfigError, load_config
from nemo_igrpo.rewards.base import Reward, ResponseMeta, Sample, Scores
from nemo_igrpo.rewards.config import OverlongPenaltyConfig, RewardConfig
from nemo_igrpo.rewards.judge import JudgeInterface
from nemo_igrpo.rewards.judge_reward import JudgeReward
from nemo_igrpo.rewards.overlong import overlong_penalty
from nemo_igrpo.rewards.registry import REWARDS
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
    assert fn.grader is not None  # the evaluator asks the accuracy component's grader for per-item timeouts


def test_zero_weight_components_are_not_computed():
    judge = _FixedJudge()
    cfg = RewardConfig(weights={"accuracy": 0.0, "format": 0.5, "judge": 2.0})
    with RewardFunction(cfg, components={"judge": JudgeReward(cfg, judge)}) as fn:
        assert fn.grader is None and set(fn.components) == {"format", "judge"}
        out = fn(PROBLEMS, RESPONSES, ANSWERS)
    assert set(out.components) == {"format", "judge"} and judge.calls == 1
    assert out.components["judge"] == [0.5, 1.0, 0.0, 0.25]
    assert out.total == [0.5 + 1.0, 0.5 + 2.0, 0.0, 0.5]
    assert out.extracted[0] == "\\frac{1}{2}"


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown reward component.*registered: accuracy, format, judge, overlong"):
        RewardFunction(RewardConfig(weights={"acuracy": 1.0}))
    with pytest.raises(ValueError, match="not listed in reward.weights"):
        RewardFunction(RewardConfig(weights={"format": 1.0}), components={"judge": JudgeReward(RewardConfig(),
                                                                                                _FixedJudge())})
    with RewardFunction(RewardConfig(weights={"format": 1.0})) as fn:
        with pytest.raises(ValueError, match="lengths differ"):
            fn(["p"], ["a", "b"], ["1"])
        with pytest.raises(ValueError, match="lengths differ"):
            fn(["p"], ["a"], ["1"], [ResponseMeta(), ResponseMeta()])


# ---------------------------------------------------------------- a reward added from outside ------------------------


class _LengthSeen(Reward):
    """A reward a user would add: it reads the response's metadata."""

    seen: list = []

    def __init__(self, cfg: RewardConfig) -> None:
        self.closed = False

    @classmethod
    def check_config(cls, cfg, max_response_tokens):
        if max_response_tokens < 10:
            raise ValueError("config key 'generation.max_new_tokens': the length reward needs at least 10")

    def score(self, samples: Sequence[Sample]) -> Scores:
        type(self).seen = list(samples)
        return Scores(values=[s.meta.num_tokens / s.meta.max_tokens for s in samples])

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def length_reward(monkeypatch):
    # What "one file and one registration" does: the registry holds the new name, nothing else changes.
    monkeypatch.setitem(REWARDS._items, "length", _LengthSeen)
    return _LengthSeen


def test_a_registered_reward_is_configured_validated_and_sees_the_metadata(length_reward):
    cfg = load_config(None, ["reward.weights={accuracy: 0.0, length: 0.5}", "generation.max_new_tokens=20"])
    assert cfg.reward.weights == {"accuracy": 0.0, "format": 1.0, "length": 0.5}
    with pytest.raises(ConfigError, match="generation.max_new_tokens.*at least 10"):
        load_config(None, ["reward.weights={length: 0.5}", "generation.max_new_tokens=5"])
    meta = [ResponseMeta(num_tokens=n, finish_reason=f, max_tokens=20, stage=s)
            for n, f, s in [(5, "stop", "stage1"), (20, "length", "stage2"), (10, "stop", "stage2"),
                            (1, "stop", "stage2")]]
    with RewardFunction(cfg.reward) as fn:
        out = fn(PROBLEMS, RESPONSES, ANSWERS, meta)
        component = fn.components["length"]
        assert set(fn.components) == {"format", "length"}
    assert component.closed
    assert out.components["length"] == [0.25, 1.0, 0.5, 0.05]
    assert out.total == pytest.approx([1 + 0.125, 1 + 0.5, 0.25, 0.025])
    seen = length_reward.seen
    assert [s.problem for s in seen] == PROBLEMS and [s.response for s in seen] == RESPONSES
    assert [s.answer for s in seen] == ANSWERS and [s.meta for s in seen] == meta
    assert [s.truncated for s in seen] == [False, True, False, False]


def test_unknown_reward_name_in_config_lists_the_registered_ones(length_reward):
    with pytest.raises(ConfigError, match=r"reward.weights.*'lenght'.*'accuracy', 'format', 'judge', 'length'"):
        load_config(None, ["reward.weights={lenght: 1.0}"])


# ---------------------------------------------------------------- DAPO soft overlong penalty ------------------------


def dapo_eq13(length: int, l_max: int, l_cache: int) -> float:
    """DAPO (Yu et al. 2025) eq. 13, R_length(y), in float64, as printed in the paper."""
    if length <= l_max - l_cache:
        return 0.0
    if l_max - l_cache < length <= l_max:
        return float((l_max - l_cache) - length) / float(l_cache)
    return -1.0


def test_overlong_penalty_hand_values():
    # L_max 10, L_cache 4: free up to 6 tokens, then -1/4 per token, -1 at and beyond the limit.
    assert [overlong_penalty(n, 10, 4) for n in (0, 6, 7, 8, 9, 10, 11)] == [0, 0, -0.25, -0.5, -0.75, -1, -1]


@pytest.mark.parametrize("l_max, l_cache", [(4096, 1024), (20480, 4096), (96, 16), (2, 1), (7, 3)])
def test_overlong_penalty_matches_the_paper(l_max, l_cache):
    for n in range(0, l_max + 3, max(1, l_max // 97)):
        assert overlong_penalty(n, l_max, l_cache) == pytest.approx(dapo_eq13(n, l_max, l_cache), abs=1e-12)


@pytest.mark.parametrize("l_cache", [0, -1, 10, 11])
def test_overlong_buffer_must_fit_under_the_limit(l_cache):
    with pytest.raises(ValueError, match="L_cache"):
        overlong_penalty(5, 10, l_cache)


def test_overlong_reward_in_the_reward_function():
    cfg = RewardConfig(weights={"format": 1.0, "overlong": 0.5}, overlong=OverlongPenaltyConfig(buffer_tokens=4))
    lengths, reasons = [3, 8, 10, 9], ["stop", "stop", "length", "stop"]
    meta = [ResponseMeta(num_tokens=n, finish_reason=r, max_tokens=10, stage="stage2") for n, r in zip(lengths,
                                                                                                       reasons)]
    with RewardFunction(cfg) as fn:
        assert fn.penalises_truncation
        out = fn(PROBLEMS, RESPONSES, ANSWERS, meta)
        with pytest.raises(ValueError, match="token count and generation limit"):
            fn(PROBLEMS, RESPONSES, ANSWERS)  # offline grading has no lengths: a clear error, not a silent 0
    expected = [dapo_eq13(n, 10, 4) for n in lengths]
    assert out.components["overlong"] == pytest.approx(expected)
    assert out.total == pytest.approx([f + 0.5 * p for f, p in zip([1.0, 1.0, 0.0, 0.0], expected)])
    with RewardFunction(RewardConfig(weights={"format": 1.0})) as fn:
        assert not fn.penalises_truncation


def test_overlong_config_is_checked_against_the_generation_limit():
    with pytest.raises(ConfigError, match="reward.overlong.buffer_tokens.*L_cache = 1024.*L_max = 96"):
        load_config("conf/demo_igrpo.yaml", ["reward.weights.overlong=1.0", "reward.overlong.buffer_tokens=1024"])
    cfg = load_config("conf/demo_igrpo.yaml", ["reward.weights.overlong=1.0", "reward.overlong.buffer_tokens=16"])
    assert cfg.reward.weights["overlong"] == 1.0
    # Listed with weight 0: not computed, so not checked.
    load_config("conf/demo_igrpo.yaml", ["reward.weights.overlong=0.0", "reward.overlong.buffer_tokens=1024"])


def test_overlong_default_buffer_is_daps_fifth_of_the_limit():
    cfg = RewardConfig(weights={"overlong": 1.0})
    assert cfg.overlong.buffer_tokens is None
    meta = [ResponseMeta(num_tokens=n, max_tokens=100) for n in (80, 90, 100)]
    with RewardFunction(cfg) as fn:
        out = fn(["p"] * 3, ["a"] * 3, ["1"] * 3, meta)
    assert out.components["overlong"] == pytest.approx([dapo_eq13(n, 100, 20) for n in (80, 90, 100)])
    assert out.components["overlong"] == pytest.approx([0.0, -0.5, -1.0])


def test_judge_needs_an_endpoint():
    with pytest.raises(ConfigError, match="reward.judge.base_url"):
        load_config(None, ["reward.weights.judge=1.0"])
