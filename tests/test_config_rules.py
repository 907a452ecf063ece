"""Config validation asks the code that owns a rule (the registries, the iGRPO budget and tie-break, the loss's clip
range, each reward's own checks) instead of restating it: the error a user gets is the rule's own message."""

from pathlib import Path

import pytest

from nemo_igrpo.algorithms.config import AlgorithmConfig, RefinementConfig
from nemo_igrpo.algorithms.igrpo import TIE_BREAKS, RolloutBudget, check_tie_break
from nemo_igrpo.algorithms.losses import clip_range_from_config
from nemo_igrpo.config import ConfigError, load_config


def _message(fn, *args):
    with pytest.raises((ValueError, KeyError)) as err:
        fn(*args)
    return err.value.args[0]


def test_budget_rule_is_the_budget_codes():
    want = _message(RolloutBudget.from_config, AlgorithmConfig(group_size=4, refinement=RefinementConfig(num_drafts=4)))
    with pytest.raises(ConfigError) as err:
        load_config(None, ["algorithm.group_size=4", "algorithm.refinement.num_drafts=4"])
    assert str(err.value) == want
    assert "'algorithm.refinement.num_drafts'" in want and "N drafts + G refinements = group_size (4)" in want


def test_tie_break_names_are_the_selections():
    assert TIE_BREAKS == ("shortest", "first")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["algorithm.refinement.tie_break=longest"])
    assert str(err.value) == _message(check_tie_break, "longest")
    assert "'algorithm.refinement.tie_break'" in str(err.value) and "shortest, first" in str(err.value)


@pytest.mark.parametrize("override", ["algorithm.clip_low=1.5", "algorithm.clip_high=-0.1", "algorithm.clip_eps=0",
                                      "algorithm.dual_clip_c=0.5"])
def test_clip_range_rule_is_the_losss(override):
    key, value = override.split("=")
    cfg = AlgorithmConfig(**{key.split(".")[1]: float(value)})
    want = _message(clip_range_from_config, cfg)
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert want in str(err.value) and "algorithm.clip" in str(err.value)


def test_valid_asymmetric_clip_passes():
    cfg = load_config(None, ["algorithm.clip_low=0.2", "algorithm.clip_high=0.28", "algorithm.dual_clip_c=3"])
    assert (cfg.algorithm.clip_low, cfg.algorithm.clip_high) == (0.2, 0.28)


def test_kl_estimator_names_are_the_estimators():
    with pytest.raises(ConfigError, match=r"algorithm.kl_estimator.*'k4'.*'k1', 'k2', 'k3'"):
        load_config(None, ["algorithm.kl_estimator=k4"])


def test_dynamic_sampling_needs_its_metric_computed():
    cfg = load_config("conf/demo_igrpo.yaml", ["algorithm.dynamic_sampling.enabled=true"])
    assert cfg.algorithm.dynamic_sampling.metric == "accuracy" and cfg.algorithm.dynamic_sampling.max_extra_rounds == 3
    with pytest.raises(ConfigError, match="algorithm.dynamic_sampling.metric.*'accuracy'.*format"):
        load_config("conf/demo_igrpo.yaml", ["algorithm.dynamic_sampling.enabled=true", "reward.weights.accuracy=0"])
    with pytest.raises(ConfigError, match="algorithm.dynamic_sampling.max_extra_rounds"):
        load_config("conf/demo_igrpo.yaml", ["algorithm.dynamic_sampling.enabled=true",
                                             "algorithm.dynamic_sampling.max_extra_rounds=-1"])


def test_features_are_off_by_default():
    a = load_config().algorithm
    assert not a.dynamic_sampling.enabled and not a.overlong_filter
    assert "overlong" not in load_config().reward.weights


RECIPES = sorted(Path(__file__).resolve().parents[1].glob("conf/*.yaml"))


@pytest.mark.parametrize("switch", ["algorithm.dynamic_sampling.enabled=true", "algorithm.overlong_filter=true",
                                    "reward.weights.overlong=1.0"])
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_each_feature_is_one_switch_in_every_recipe(recipe, switch):
    key, value = switch.split("=")
    cfg = load_config(recipe, [switch])
    node = cfg
    for part in key.split(".")[:-1]:
        node = getattr(node, part)
    leaf = key.split(".")[-1]
    got = node[leaf] if isinstance(node, dict) else getattr(node, leaf)
    assert str(got).lower() == value


def test_dry_run_shows_the_dynamic_sampling_worst_case():
    from nemo_igrpo.trainer.plan import build_plan, describe_plan

    recipe = Path(__file__).resolve().parents[1] / "conf" / "orn7b_acereason_igrpo.yaml"
    assert "# dynamic sampling" not in describe_plan(build_plan(load_config(recipe), 16, inspect=False))
    text = describe_plan(build_plan(load_config(recipe, ["algorithm.dynamic_sampling.enabled=true"]), 16,
                                    inspect=False))
    assert ("per step                  up to 3 extra round(s) of 128 prompts: at most 4,096 completions, "
            "16,777,216 generated tokens") in text
