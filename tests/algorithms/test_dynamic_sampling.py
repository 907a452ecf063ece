"""DAPO's dynamic sampling (Yu et al. 2025, Sec. 3.2, eq. 11): which groups have a learning signal, the round bound,
and which groups a step trains on, against a reference written from the paper's constraint."""

import random

import pytest

from nemo_igrpo.algorithms.config import DynamicSamplingConfig
from nemo_igrpo.algorithms.dynamic_sampling import (check_dynamic_sampling, has_signal, needs_another_round,
                                                    select_groups)


def dapo_keeps(correct: list[float]) -> bool:
    """DAPO eq. 11's constraint on a group of G rollouts: 0 < |{o_i | is_equivalent(a, o_i)}| < G."""
    n_correct = sum(1 for c in correct if c == 1.0)
    return 0 < n_correct < len(correct)


def test_signal_is_dapo_constraint_on_accuracy():
    rng = random.Random(0)
    for _ in range(500):
        g = rng.randint(1, 8)
        acc = [float(rng.random() < rng.choice([0.0, 0.1, 0.5, 0.9, 1.0])) for _ in range(g)]
        assert has_signal(acc) == dapo_keeps(acc), acc


def test_accuracy_not_total_reward_decides():
    # All four answers right, but two miss the format bonus: the total reward varies, the accuracy does not.
    accuracy, fmt = [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]
    total = [a + f for a, f in zip(accuracy, fmt)]
    assert has_signal(total) and not has_signal(accuracy)


def test_graded_metric_and_bad_input():
    assert has_signal([0.25, 0.5]) and not has_signal([0.5, 0.5]) and not has_signal([1.0])
    with pytest.raises(ValueError, match="at least one"):
        has_signal([])
    with pytest.raises(ValueError, match="NaN"):
        has_signal([float("nan"), 1.0])


def test_round_bound():
    # target 4, at most 1 + 2 rounds
    assert needs_another_round(0, 4, rounds_done=1, max_extra_rounds=2)
    assert needs_another_round(3, 4, rounds_done=2, max_extra_rounds=2)
    assert not needs_another_round(3, 4, rounds_done=3, max_extra_rounds=2)  # bound reached: train on what is there
    assert not needs_another_round(4, 4, rounds_done=1, max_extra_rounds=2)
    assert not needs_another_round(0, 4, rounds_done=1, max_extra_rounds=0)


def test_select_takes_the_first_informative_groups_and_drops_the_surplus():
    flags = [(("r0", i), f) for i, f in enumerate([True, False, True, False])] + \
            [(("r1", i), f) for i, f in enumerate([True, True, False, True])]
    s = select_groups(flags, target=3, min_groups=2)
    assert s.trained == [("r0", 0), ("r0", 2), ("r1", 0)] and s.padding == [] and not s.bound_reached
    assert (s.generated, s.informative) == (8, 5)
    assert s.metrics(rounds=2) == {"dynamic_sampling/rounds": 2.0, "dynamic_sampling/generated_groups": 8.0,
                                   "dynamic_sampling/filtered_share": 3 / 8, "dynamic_sampling/trained_groups": 3.0,
                                   "dynamic_sampling/bound_reached": 0.0}
    # dealt round robin over 2 data-parallel ranks
    assert s.shard(0, 2) == [("r0", 0), ("r1", 0)] and s.shard(1, 2) == [("r0", 2)]


def test_select_when_the_bound_is_reached():
    flags = [(i, i == 5) for i in range(8)]
    s = select_groups(flags, target=4, min_groups=1)
    assert s.trained == [5] and s.padding == [] and s.bound_reached  # trains on the one it has
    # 4 data-parallel ranks each need a row: 3 groups without signal pad, carrying no loss
    s = select_groups(flags, target=4, min_groups=4)
    assert s.trained == [5] and s.padding == [0, 1, 2] and s.batch == [5, 0, 1, 2]
    assert [s.shard(r, 4) for r in range(4)] == [[5], [0], [1], [2]]
    none = select_groups([(i, False) for i in range(4)], target=4, min_groups=2)
    assert none.trained == [] and none.padding == [0, 1] and none.metrics(4)["dynamic_sampling/filtered_share"] == 1
    with pytest.raises(ValueError, match="ranks"):
        select_groups([(0, False)], target=4, min_groups=2)


def test_config_rules():
    check_dynamic_sampling(DynamicSamplingConfig(enabled=False, metric="nope"), [])  # off: nothing to check
    check_dynamic_sampling(DynamicSamplingConfig(enabled=True), ["accuracy", "format"])
    with pytest.raises(ValueError, match="'algorithm.dynamic_sampling.metric'.*'accuracy'.*format"):
        check_dynamic_sampling(DynamicSamplingConfig(enabled=True), ["format"])
    with pytest.raises(ValueError, match="max_extra_rounds"):
        check_dynamic_sampling(DynamicSamplingConfig(enabled=True, max_extra_rounds=-1), ["accuracy"])
