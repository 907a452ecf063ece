"""The whole run's configuration: typed sections loaded from YAML with OmegaConf, overridden with ``key=value``.

An unknown key, a wrong type or a value outside its allowed set is an error that names the key, before any model is
built. Each section is declared (and documented) next to the code it configures.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nemo_igrpo.algorithms.config import AlgorithmConfig
from nemo_igrpo.backends.generation.config import GenerationConfig
from nemo_igrpo.backends.policy.config import PolicyConfig
from nemo_igrpo.data.config import DataConfig
from nemo_igrpo.rewards.config import RewardConfig
from nemo_igrpo.errors import UserError
from nemo_igrpo.trainer.config import TrainerConfig


class ConfigError(UserError, ValueError):
    """A configuration problem, with the offending key in the message."""


@dataclass
class Config:
    # Free-form name of the run (shows up in logs and reports).
    name: str = "igrpo"
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def _friendly(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    msg = (getattr(err, "msg", None) or str(err) or type(err).__name__).splitlines()[0]
    return ConfigError(f"{source}: config key '{key}': {msg}")


def _yaml_problem(err: Exception) -> str:
    """One line from a YAML parser error: what went wrong and where."""
    import yaml

    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{err.problem or err.context or 'invalid YAML'}{where}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _load_yaml_file(path: Path) -> DictConfig:
    import yaml

    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got a list")
    return loaded


def _parse_override(item: str) -> DictConfig:
    """One ``key=value`` override; the value is YAML, as in Hydra (so ``k=[1,2]`` is a list and ``k=null`` is None)."""
    import yaml

    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: {key!r} is not a config key (dotted names, e.g. trainer.max_steps)")
    try:
        return OmegaConf.from_dotlist([item])
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {item!r}: the value of '{key}' is not valid YAML ({_yaml_problem(err)}); a value that starts "
            f"with '{{', '[', '*', '&', '!', '%', '@' or contains ': ' must be quoted, e.g. {key}='\"...\"'"
        ) from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- YAML file <- ``key=value`` overrides, type-checked, then value-checked by ``validate``.

    Every problem (a missing or malformed file, an override that does not parse, an unknown key, a wrong type, a
    value out of range) is a ``ConfigError`` naming the file, override or key."""
    merged: DictConfig = OmegaConf.structured(Config)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            merged = OmegaConf.merge(merged, _load_yaml_file(path))
        except OmegaConfBaseException as err:
            raise _friendly(err, str(path)) from None
    parsed = [_parse_override(item) for item in overrides]  # all parse errors before any merge error
    for item, override in zip(overrides, parsed):
        try:
            merged = OmegaConf.merge(merged, override)
        except OmegaConfBaseException as err:
            raise _friendly(err, f"override {item!r}") from None
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _friendly(err, "resolving the config") from None
    validate(cfg)
    return cfg


def check_input_paths(cfg: Config) -> None:
    """Before a run builds anything: the model and tokenizer directories and the data files the config names exist.

    Kept out of ``validate`` on purpose: ``--dry-run`` checks a cluster recipe on a login node where those paths need
    not exist. A missing model directory is an error here rather than a model-hub lookup in transformers.
    """
    from nemo_igrpo.errors import require_local_dir

    if not cfg.policy.model_path:
        raise ConfigError("config key 'policy.model_path': required (a Hugging Face model directory)")
    require_local_dir(cfg.policy.model_path, "config key 'policy.model_path':")
    if cfg.policy.tokenizer_path:
        require_local_dir(cfg.policy.tokenizer_path, "config key 'policy.tokenizer_path':")
    for key in ("train_file", "validation_file", "test_file"):
        value = getattr(cfg.data, key)
        if value and not Path(value).is_file():
            raise ConfigError(f"config key 'data.{key}': {value!r} is not a file")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {sorted(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"config key '{key}': must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _ask(check: Callable[[], Any], keys: str = "") -> None:
    """Run a check that the code using the options owns, as a config error. Its message names the key; where it
    does not (a rule of the losses), ``keys`` says which keys it is about."""
    try:
        check()
    except (ValueError, KeyError) as err:
        msg = err.args[0] if err.args else str(err)
        raise ConfigError(msg if msg.startswith("config key") else f"config key {keys}: {msg}") from None


def validate(cfg: Config) -> None:
    """Checks the types cannot express: allowed names, ranges and cross-field rules.

    Names and rules come from the code that uses them (the registries, the iGRPO budget and template rules, the
    loss's clip range, each reward component's own checks), so each is stated once.
    """
    from nemo_igrpo.algorithms.advantages import ADVANTAGE_ESTIMATORS
    from nemo_igrpo.algorithms.dynamic_sampling import check_dynamic_sampling
    from nemo_igrpo.algorithms.igrpo import check_refinement
    from nemo_igrpo.algorithms.kl import KL_ESTIMATORS
    from nemo_igrpo.algorithms.losses import POLICY_LOSSES, clip_range_from_config
    from nemo_igrpo.rewards.registry import REWARDS

    a = cfg.algorithm
    _choice("algorithm.advantage_estimator", a.advantage_estimator, ADVANTAGE_ESTIMATORS.names())
    _choice("algorithm.policy_loss", a.policy_loss, POLICY_LOSSES.names())
    _choice("algorithm.kl_estimator", a.kl_estimator, list(KL_ESTIMATORS))
    _positive("algorithm.group_size", a.group_size)
    _ask(lambda: clip_range_from_config(a), "'algorithm.clip_eps' / 'clip_low' / 'clip_high' / 'dual_clip_c'")
    if a.dr_grpo_max_tokens is not None:
        _positive("algorithm.dr_grpo_max_tokens", a.dr_grpo_max_tokens)
    _positive("algorithm.advantage_eps", a.advantage_eps, allow_zero=True)
    _positive("algorithm.kl_coef", a.kl_coef, allow_zero=True)
    _positive("algorithm.num_mini_batches", a.num_mini_batches)
    _positive("algorithm.num_update_epochs", a.num_update_epochs)
    _validate_mismatch(cfg)
    _ask(lambda: check_refinement(a))
    for name, weight in cfg.reward.weights.items():
        _choice("reward.weights", name, REWARDS.names())
        _positive(f"reward.weights.{name}", weight, allow_zero=True)
        if weight > 0:
            _ask(lambda: REWARDS.get(name).check_config(cfg.reward, cfg.generation.max_new_tokens))
    computed = [name for name, weight in cfg.reward.weights.items() if weight > 0]
    _ask(lambda: check_dynamic_sampling(a.dynamic_sampling, computed))
    _positive("reward.num_workers", cfg.reward.num_workers)
    _positive("reward.timeout_s", cfg.reward.timeout_s)
    _positive("reward.worker_memory_mb", cfg.reward.worker_memory_mb, allow_zero=True)
    j = cfg.reward.judge
    _positive("reward.judge.timeout_s", j.timeout_s)
    _positive("reward.judge.max_retries", j.max_retries, allow_zero=True)
    _positive("reward.judge.backoff_s", j.backoff_s, allow_zero=True)
    _positive("reward.judge.concurrency", j.concurrency)
    _positive("reward.judge.max_tokens", j.max_tokens)
    _positive("reward.judge.temperature", j.temperature, allow_zero=True)
    _positive("reward.judge.max_reply_bytes", j.max_reply_bytes)
    _positive("reward.judge.breaker_failures", j.breaker_failures, allow_zero=True)
    _positive("reward.judge.breaker_cooldown_s", j.breaker_cooldown_s, allow_zero=True)
    _positive("data.prompts_per_step", cfg.data.prompts_per_step)
    _positive("data.max_prompt_tokens", cfg.data.max_prompt_tokens)
    _positive("data.num_epochs", cfg.data.num_epochs)
    p = cfg.policy
    _choice("policy.precision", p.precision, ["auto", "bf16", "fp32"])
    _positive("policy.tensor_model_parallel_size", p.tensor_model_parallel_size)
    _positive("policy.pipeline_model_parallel_size", p.pipeline_model_parallel_size)
    _positive("policy.micro_batch_size", p.micro_batch_size)
    _choice("policy.micro_batching", p.micro_batching, ["auto", "padded", "bucketed", "packed"])
    _positive("policy.micro_batch_tokens", p.micro_batch_tokens, allow_zero=True)
    _positive("policy.logprob_micro_batch_tokens", p.logprob_micro_batch_tokens, allow_zero=True)
    _positive("policy.optimizer.lr", p.optimizer.lr)
    if not 0 <= p.optimizer.min_lr_ratio <= 1:
        raise ConfigError(f"config key 'policy.optimizer.min_lr_ratio': must be in [0, 1], got {p.optimizer.min_lr_ratio}")
    if not 0 <= p.optimizer.warmup_ratio < 1:
        raise ConfigError(f"config key 'policy.optimizer.warmup_ratio': must be in [0, 1), got {p.optimizer.warmup_ratio}")
    g = cfg.generation
    _choice("generation.backend", g.backend, ["hf", "vllm"])
    _choice("generation.vllm_refit", g.vllm_refit, ["auto", "layerwise", "load_weights"])
    _positive("generation.temperature", g.temperature)
    if not 0 < g.top_p <= 1:
        raise ConfigError(f"config key 'generation.top_p': must be in (0, 1], got {g.top_p}")
    _positive("generation.max_new_tokens", g.max_new_tokens)
    _positive("generation.batch_size", g.batch_size)
    _choice("generation.sleep_level", g.sleep_level, [1, 2])
    _positive("generation.max_model_len", g.max_model_len, allow_zero=True)
    t = cfg.trainer
    for key in ("max_steps", "save_every", "keep_checkpoints", "validate_every", "num_validation_prompts"):
        _positive(f"trainer.{key}", getattr(t, key), allow_zero=True)
    _positive("trainer.max_consecutive_nonfinite", t.max_consecutive_nonfinite)
    _positive("trainer.preemption_grace_s", t.preemption_grace_s, allow_zero=True)
    if t.resume and t.overwrite:
        raise ConfigError("config keys 'trainer.resume' and 'trainer.overwrite': both true contradict each other "
                          "(continue the run in trainer.output_dir, or replace it): choose one")


def _validate_mismatch(cfg: Config) -> None:
    from nemo_igrpo.algorithms.mismatch import check_mismatch_config

    m = cfg.algorithm.mismatch
    try:
        check_mismatch_config(m)
    except ValueError as err:
        key, _, msg = str(err).partition(": ")
        raise ConfigError(f"config key 'algorithm.mismatch.{key}': {msg}") from None
    if m.mode == "none":
        return
    # The generator then reports log-probs renormalised over the kept tokens, not pi_gen's: the weights are biased.
    g = cfg.generation
    if g.top_p < 1:
        raise ConfigError(f"config key 'generation.top_p': {g.top_p} < 1 is refused with algorithm.mismatch.mode="
                          f"{m.mode}: the generator's log-probs are then renormalised over the nucleus, which biases "
                          "the importance weights; use top_p 1 or mode none")
    if g.top_k > 0:
        raise ConfigError(f"config key 'generation.top_k': {g.top_k} is refused with algorithm.mismatch.mode={m.mode}: "
                          "the generator's log-probs are then renormalised over the top-k tokens, which biases the "
                          "importance weights; use top_k -1 or mode none")
