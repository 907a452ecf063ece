"""Advantage estimators against hand-computed numbers and a float64 loop written from the papers' formulas."""

import math

import pytest
import torch

from nemo_igrpo.algorithms.advantages import ADVANTAGE_ESTIMATORS, compute_advantages


def _ref(name: str, rewards: list[list[float]], eps: float) -> list[list[float]]:
    out = []
    for group in rewards:
        g = len(group)
        mean = sum(group) / g
        if name == "grpo":
            std = math.sqrt(sum((r - mean) ** 2 for r in group) / (g - 1)) if g > 1 else 0.0
            out.append([0.0 if std == 0 else (r - mean) / (std + eps) for r in group])
        elif name == "dr_grpo":
            out.append([r - mean for r in group])
        else:
            out.append([r - (sum(group) - r) / (g - 1) if g > 1 else 0.0 for r in group])
    return out


def test_grpo_uses_sample_std_hand_computed():
    # mean 0.25, sample variance 0.75 / 3 = 0.25 -> std 0.5 (the population std would be 0.433 and give 1.732).
    adv = compute_advantages("grpo", torch.tensor([[1.0, 0.0, 0.0, 0.0]]), 0.0)
    torch.testing.assert_close(adv, torch.tensor([[1.5, -0.5, -0.5, -0.5]]))


def test_ties_hand_computed():
    r = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(compute_advantages("dr_grpo", r, 1e-6), torch.tensor([[0.5, 0.5, -0.5, -0.5]]))
    # r_i minus the mean of the three others: 1 - 1/3, 0 - 2/3.
    torch.testing.assert_close(compute_advantages("rloo", r, 1e-6), torch.tensor([[2 / 3, 2 / 3, -2 / 3, -2 / 3]]))
    # sample std of [1, 1, 0, 0] = sqrt(1/3)
    s = 0.5 / math.sqrt(1 / 3)
    torch.testing.assert_close(compute_advantages("grpo", r, 0.0), torch.tensor([[s, s, -s, -s]]))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 0.7, -3.3])
def test_all_equal_group_is_exactly_zero(name, value):
    adv = compute_advantages(name, torch.tensor([[value] * 3, [1.0, 0.0, 1.0]]), 1e-6)
    assert (adv[0] == 0).all() and adv.dtype == torch.float32
    assert (adv[1] != 0).all()  # the other group is untouched


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("value", [0.1, 0.7, 1 / 3])
def test_all_equal_group_of_eight_is_exactly_zero(name, value):
    adv = compute_advantages(name, torch.full((2, 8), value), 1e-6)
    assert torch.count_nonzero(adv) == 0


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_random_against_float64_loop(name):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (16, 6), generator=gen).double() / 2  # many ties and some constant groups
    rewards[3] = 0.5
    eps = 1e-4
    want = torch.tensor(_ref(name, rewards.tolist(), eps), dtype=torch.float64)
    torch.testing.assert_close(compute_advantages(name, rewards, eps), want)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_group_of_one_is_zero(name):
    assert torch.count_nonzero(compute_advantages(name, torch.tensor([[1.0], [0.0]]), 1e-6)) == 0


def test_eps_guards_the_denominator():
    adv = compute_advantages("grpo", torch.tensor([[1.0, 0.0]]), 1.0)
    s = math.sqrt(0.5)  # sample std of [1, 0]
    torch.testing.assert_close(adv, torch.tensor([[0.5 / (s + 1), -0.5 / (s + 1)]]))


def test_integer_rewards_accepted():
    adv = compute_advantages("dr_grpo", torch.tensor([[1, 0]]), 1e-6)
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5]]))


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 0.0]), torch.tensor([[1.0, float("nan")]])])
def test_bad_rewards_raise(bad):
    with pytest.raises(ValueError):
        compute_advantages("grpo", bad, 1e-6)


def test_unknown_estimator_lists_names():
    with pytest.raises(KeyError, match="grpo.*rloo"):
        compute_advantages("ppo_gae", torch.zeros(1, 2), 1e-6)
    assert ADVANTAGE_ESTIMATORS.names() == ["dr_grpo", "grpo", "rloo"]
