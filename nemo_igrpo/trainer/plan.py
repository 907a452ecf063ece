"""What a run would do, without doing it: the text behind ``igrpo train --dry-run``.

``describe_plan`` resolves the configuration, checks that the parallel layout fits the world size and spells out the
per-step rollout budget, so that a researcher can check a recipe (and its GRPO twin's matched budget) before asking
a cluster for 16 GPUs. Pure Python on purpose: it must run on a login node, without megatron, torch.distributed or
a GPU.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from omegaconf import OmegaConf

from nemo_igrpo.config import Config, ConfigError

REDACTED = "<redacted>"

# Keys whose values are credentials. A key ending in "_env" holds the NAME of an environment variable (for example
# reward.judge.api_key_env), which is safe to show and useful to check, so it is exempt.
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|passw(or)?d|credential|auth)", re.IGNORECASE)
# Query parameters that carry credentials in URLs (?api_key=..., ?token=...).
_SECRET_QUERY = re.compile(r"((?:api[_-]?key|key|token|secret|sig|signature|password)=)[^&]*", re.IGNORECASE)


def _redact_url(value: str) -> str:
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    netloc = parts.netloc
    if "@" in netloc:  # http://user:pass@host/ -> http://<redacted>@host/
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = _SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_secrets(node: Any, key: str = "") -> Any:
    """A copy of a plain dict/list tree with credential values replaced. The config only ever holds the names of the
    environment variables that carry secrets; this is the belt to those braces, in case a user pastes a key into a
    field or a URL anyway."""
    if isinstance(node, dict):
        return {k: redact_secrets(v, str(k)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact_secrets(v, key) for v in node]
    if isinstance(node, str):
        if node and _SECRET_KEY.search(key) and not key.endswith("_env"):
            return REDACTED
        return _redact_url(node)
    return node


def resolved_config_yaml(cfg: Config) -> str:
    """The configuration as the run would use it (interpolations resolved, defaults filled in), secrets redacted."""
    return OmegaConf.to_yaml(OmegaConf.create(redact_secrets(dataclasses.asdict(cfg))))


@dataclasses.dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    world_size: int


def parallel_layout(cfg: Config, world_size: int) -> Layout:
    """TP x PP x DP = world size; a world size the model-parallel product does not divide is an error naming the keys."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world size must be a positive integer, got {world_size!r}")
    tp = cfg.policy.tensor_model_parallel_size
    pp = cfg.policy.pipeline_model_parallel_size
    if world_size % (tp * pp):
        raise ConfigError(
            f"world size {world_size} is not divisible by policy.tensor_model_parallel_size ({tp}) x "
            f"policy.pipeline_model_parallel_size ({pp}) = {tp * pp}: the data-parallel size would not be an integer. "
            f"Change those keys or the number of GPUs (nodes x GPUs per node).")
    return Layout(tp=tp, pp=pp, dp=world_size // (tp * pp), world_size=world_size)


@dataclasses.dataclass(frozen=True)
class StepBudget:
    prompts: int
    group_size: int  # K
    drafts: int  # N per prompt (0 for GRPO)
    refinements: int  # G per prompt (K for GRPO: every rollout is trained)
    completions: int  # generated sequences per step, both stages
    trained: int  # sequences that receive gradient per step
    max_generated_tokens: int


def step_budget(cfg: Config) -> StepBudget:
    k = cfg.algorithm.group_size
    prompts = cfg.data.prompts_per_step
    n = cfg.algorithm.refinement.num_drafts if cfg.algorithm.refinement.enabled else 0
    g = k - n
    completions = prompts * k
    return StepBudget(prompts=prompts, group_size=k, drafts=n, refinements=g, completions=completions,
                      trained=prompts * g, max_generated_tokens=completions * cfg.generation.max_new_tokens)


def _per_rank(total: int, dp: int) -> str:
    if total % dp == 0:
        return f"{total // dp:,}"
    return f"{total / dp:,.2f} (uneven: {total} does not divide by DP={dp})"


def describe_plan(cfg: Config, world_size: int, gpu_memory_gib: float = 80.0) -> str:
    """Human-readable dry-run report: resolved config, parallel layout, per-step budget, sequence lengths and the
    per-GPU memory plan (``memory_plan.py``). Raises ``ConfigError`` when the layout does not fit ``world_size``."""
    layout = parallel_layout(cfg, world_size)
    b = step_budget(cfg)
    dp = layout.dp
    warnings: list[str] = []
    lines = ["# resolved config (secrets redacted; API keys appear only as environment variable names)", "",
             resolved_config_yaml(cfg).rstrip(), ""]

    lines += [
        "# parallel layout",
        f"world size        {layout.world_size} = TP {layout.tp} x PP {layout.pp} x DP {dp}",
        f"  tensor parallel   policy.tensor_model_parallel_size = {layout.tp}",
        f"  pipeline parallel policy.pipeline_model_parallel_size = {layout.pp}",
        f"  data parallel     world / (TP x PP) = {dp}",
        f"  generation        {cfg.generation.backend}, colocated: each model-parallel group of {layout.tp * layout.pp} "
        f"rank(s) runs one engine, {dp} engine(s) in all",
        "",
    ]

    if cfg.algorithm.refinement.enabled:
        algo = (f"iGRPO (refinement on): K = {b.group_size} = N {b.drafts} drafts (Stage 1) + "
                f"G {b.refinements} refinements (Stage 2)")
        completions = (f"{b.completions:,} = {b.prompts * b.drafts:,} drafts + {b.prompts * b.refinements:,} "
                       f"refinements")
        trained_note = "Stage-2 refinements only; draft tokens get no gradient"
    else:
        algo = f"GRPO (refinement off): K = {b.group_size} single-shot rollouts per prompt"
        completions = f"{b.completions:,}"
        trained_note = "every rollout"
    mbs = cfg.policy.micro_batch_size
    trained_per_rank = b.trained / dp
    lines += [
        "# per-step budget",
        f"algorithm                 {algo}",
        f"prompts per step          {b.prompts:,}   per DP rank: {_per_rank(b.prompts, dp)}",
        f"completions per step      {completions}   per DP rank: {_per_rank(b.completions, dp)}",
        f"trained sequences         {b.trained:,} ({trained_note})   per DP rank: {_per_rank(b.trained, dp)}",
        f"micro-batches per rank    {trained_per_rank / mbs:g} of policy.micro_batch_size = {mbs}",
        f"max generated tokens      {b.completions:,} x {cfg.generation.max_new_tokens:,} = "
        f"{b.max_generated_tokens:,}   per DP rank: {_per_rank(b.max_generated_tokens, dp)}",
        f"max prompt tokens         {cfg.data.max_prompt_tokens:,}"
        + (f" (Stage-2 prompts add up to {cfg.algorithm.refinement.max_draft_tokens:,} draft tokens)"
           if cfg.algorithm.refinement.enabled else ""),
        "optimizer steps           "
        + (f"{cfg.trainer.max_steps:,} (trainer.max_steps)" if cfg.trainer.max_steps
           else f"{cfg.data.num_epochs} epoch(s) of the training prompts / {b.prompts} per step "
                "(the count is known once the data is read)"),
    ]
    if b.prompts % dp:
        warnings.append(f"data.prompts_per_step ({b.prompts}) does not divide by DP ({dp}): ranks get unequal shares")
    if b.trained % dp == 0 and (b.trained // dp) % mbs:
        warnings.append(f"trained sequences per DP rank ({b.trained // dp}) is not a multiple of policy.micro_batch_size "
                        f"({mbs}): the last micro-batch is partial")
    if warnings:
        lines += ["", "# warnings"] + [f"- {w}" for w in warnings]
    from nemo_igrpo.trainer.memory_plan import memory_plan_section

    lines += ["", memory_plan_section(cfg, layout.tp, layout.pp, dp, gpu_memory_gib).rstrip()]
    return "\n".join(lines) + "\n"
