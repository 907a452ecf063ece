"""The config loader: defaults, YAML, overrides, and errors that name the key."""

import pytest

from nemo_igrpo.config import Config, ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_papers():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.algorithm.group_size == 8 and cfg.algorithm.refinement.num_drafts == 4
    assert cfg.algorithm.kl_coef == 0.0
    assert cfg.policy.optimizer.lr == 1e-6 and cfg.policy.optimizer.min_lr_ratio == 0.1
    assert cfg.policy.optimizer.warmup_ratio == 0.1
    assert cfg.generation.temperature == 0.7 and cfg.generation.max_new_tokens == 4096
    assert cfg.data.max_prompt_tokens == 1024
    assert cfg.reward.weights == {"accuracy": 1.0, "format": 1.0}


def test_yaml_then_overrides(tmp_path):
    p = write(tmp_path, "algorithm:\n  group_size: 16\ntrainer:\n  max_steps: 5\n")
    cfg = load_config(p, ["trainer.max_steps=7", "algorithm.refinement.num_drafts=8"])
    assert cfg.algorithm.group_size == 16
    assert cfg.trainer.max_steps == 7
    assert cfg.algorithm.refinement.num_drafts == 8


def test_unknown_key_names_the_key(tmp_path):
    p = write(tmp_path, "algorithm:\n  grop_size: 16\n")
    with pytest.raises(ConfigError, match="algorithm.grop_size"):
        load_config(p)
    with pytest.raises(ConfigError, match="trainer.max_stepz"):
        load_config(None, ["trainer.max_stepz=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config(None, ["trainer.max_steps=ten"])


def test_unknown_registry_name_lists_allowed():
    with pytest.raises(ConfigError, match=r"algorithm.policy_loss.*'ppo'.*dapo.*grpo"):
        load_config(None, ["algorithm.policy_loss=ppo"])


def test_budget_rule():
    with pytest.raises(ConfigError, match="num_drafts"):
        load_config(None, ["algorithm.group_size=4", "algorithm.refinement.num_drafts=4"])
    # GRPO ignores num_drafts
    cfg = load_config(None, ["algorithm.group_size=4", "algorithm.refinement.num_drafts=4",
                             "algorithm.refinement.enabled=false"])
    assert cfg.algorithm.refinement.enabled is False


def test_template_needs_placeholders():
    with pytest.raises(ConfigError, match="template.*\\{draft\\}"):
        load_config(None, ["algorithm.refinement.template=only {prompt}"])
    with pytest.raises(ConfigError, match="template.*use \\{prompt\\}"):
        load_config(None, ["algorithm.refinement.template=only {problem} {draft}"])


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["trainer.max_steps"])


def test_demo_recipes_are_matched_twins():
    a = load_config("conf/demo_igrpo.yaml")
    b = load_config("conf/demo_grpo.yaml")
    assert a.algorithm.refinement.enabled and not b.algorithm.refinement.enabled
    assert a.algorithm.group_size == b.algorithm.group_size == 8
    assert a.algorithm.refinement.num_drafts == 4
