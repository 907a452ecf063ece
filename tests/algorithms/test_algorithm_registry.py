"""The name -> function registries the config selects from."""

import pytest

from nemo_igrpo.algorithms.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, Registry


def test_builtin_names():
    assert ADVANTAGE_ESTIMATORS.names() == ["dr_grpo", "grpo", "rloo"]
    assert POLICY_LOSSES.names() == ["dapo", "dr_grpo", "grpo", "gspo"]


@pytest.mark.parametrize("registry, listed", [(ADVANTAGE_ESTIMATORS, "dr_grpo, grpo, rloo"),
                                              (POLICY_LOSSES, "dapo, dr_grpo, grpo, gspo")])
def test_unknown_name_lists_registered_names(registry, listed):
    with pytest.raises(KeyError) as err:
        registry.get("nope")
    assert "unknown" in str(err.value) and "'nope'" in str(err.value) and listed in str(err.value)


def test_duplicate_registration_is_an_error():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
