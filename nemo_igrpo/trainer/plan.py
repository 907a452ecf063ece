"""What a run would do, and whether it can, without doing it: the text behind ``igrpo train --dry-run``.

``build_plan`` resolves the configuration for a stated layout (nodes x GPUs per node), spells out the per-step rollout
budget, and (``plan_inputs.inspect_inputs``) opens everything the job will need: the model directory, every data file
and the output directory. Every problem is collected, each naming the config key or file that causes it, so that one
dry run on a login node reports them all before a cluster allocates GPUs. Pure Python on purpose: no megatron,
torch.distributed or GPU.

``describe_plan`` renders a plan as sections (``PLAN_SECTIONS``, functions ``Plan -> lines``); a new section is one
function appended to that list.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from omegaconf import OmegaConf

from nemo_igrpo.config import Config, ConfigError
from nemo_igrpo.trainer.memory_plan import memory_section
from nemo_igrpo.trainer.plan_record import Layout, Plan, StepBudget
from nemo_igrpo.trainer.plan_training import training_section

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


# --- the layout --------------------------------------------------------------------------------------------------------

# A recipe states the layout it was sized for in a header comment, e.g. "# Layout: 2 nodes x 8 GPUs"; the dry run
# plans for it unless --nodes / --gpus-per-node say otherwise. CPU recipes say "1 node x 1 process".
_LAYOUT_COMMENT = re.compile(r"^#\s*Layout:\s*(\d+)\s*nodes?\s*x\s*(\d+)\s*(?:GPUs?|process(?:es)?)\b",
                             re.IGNORECASE | re.MULTILINE)


def recipe_layout(config_path: str | Path) -> tuple[int, int] | None:
    """``(nodes, gpus_per_node)`` from the recipe's ``# Layout: N nodes x G GPUs`` comment, or None."""
    try:
        text = Path(config_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    m = _LAYOUT_COMMENT.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


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


def step_budget(cfg: Config) -> StepBudget:
    k = cfg.algorithm.group_size
    prompts = cfg.data.prompts_per_step
    n = cfg.algorithm.refinement.num_drafts if cfg.algorithm.refinement.enabled else 0
    g = k - n
    completions = prompts * k
    return StepBudget(prompts=prompts, group_size=k, drafts=n, refinements=g, completions=completions,
                      trained=prompts * g, max_generated_tokens=completions * cfg.generation.max_new_tokens)


def build_plan(cfg: Config, world_size: int, *, layout_source: str = "", inspect: bool = True,
               gpu_memory_gib: float = 80.0) -> Plan:
    """The plan of ``cfg`` on ``world_size`` ranks. With ``inspect``, also open the model directory, the data files
    and the output directory; every problem found is in ``plan.problems`` (nothing raises for them)."""
    plan = Plan(cfg=cfg, world_size=world_size, layout_source=layout_source or f"world size {world_size}",
                gpu_memory_gib=gpu_memory_gib)
    try:
        plan.layout = parallel_layout(cfg, world_size)
    except ConfigError as err:
        plan.problem("policy.tensor_model_parallel_size / policy.pipeline_model_parallel_size", str(err))
    plan.budget = step_budget(cfg)
    if plan.layout is not None and plan.budget.prompts % plan.layout.dp:
        plan.problem("data.prompts_per_step", f"{plan.budget.prompts} is not divisible by the data-parallel size "
                     f"{plan.layout.dp} (the trainer refuses unequal shares)")
    if plan.layout is not None:
        dp, mbs = plan.layout.dp, cfg.policy.micro_batch_size
        if plan.budget.trained % dp == 0 and (plan.budget.trained // dp) % mbs:
            plan.warnings.append(f"trained sequences per DP rank ({plan.budget.trained // dp}) is not a multiple of "
                                 f"policy.micro_batch_size ({mbs}): the last micro-batch is partial")
    if inspect:
        from nemo_igrpo.trainer.plan_inputs import inspect_inputs

        plan.inspected = True
        inspect_inputs(plan)
    _count_steps(plan)
    return plan


def _count_steps(plan: Plan) -> None:
    c = plan.cfg
    per_step = c.data.prompts_per_step
    if plan.train_rows is not None:
        if plan.train_rows < per_step:
            plan.problem("data.prompts_per_step", f"{per_step} exceeds the {plan.train_rows} training prompts")
            return
        plan.steps_per_epoch = plan.train_rows // per_step
    if c.trainer.max_steps:
        plan.total_steps = c.trainer.max_steps
    elif plan.steps_per_epoch is not None:
        plan.total_steps = plan.steps_per_epoch * c.data.num_epochs


# --- rendering ---------------------------------------------------------------------------------------------------------


def _per_rank(total: int, dp: int) -> str:
    if total % dp == 0:
        return f"{total // dp:,}"
    return f"{total / dp:,.2f} (uneven: {total} does not divide by DP={dp})"


def config_section(plan: Plan) -> list[str]:
    return ["# resolved config (secrets redacted; API keys appear only as environment variable names)", "",
            resolved_config_yaml(plan.cfg).rstrip()]


def layout_section(plan: Plan) -> list[str]:
    lines = ["# parallel layout", f"planned for       {plan.layout_source}"]
    layout = plan.layout
    if layout is None:
        return lines + [f"world size        {plan.world_size}: does not fit TP x PP (see problems)"]
    g = plan.cfg.generation
    return lines + [
        f"world size        {layout.world_size} = TP {layout.tp} x PP {layout.pp} x DP {layout.dp}",
        f"  tensor parallel   policy.tensor_model_parallel_size = {layout.tp}",
        f"  pipeline parallel policy.pipeline_model_parallel_size = {layout.pp}",
        f"  data parallel     world / (TP x PP) = {layout.dp}",
        f"  generation        {g.backend}, colocated: each model-parallel group of {layout.tp * layout.pp} "
        f"rank(s) runs one engine, {layout.dp} engine(s) in all",
    ]


def budget_section(plan: Plan) -> list[str]:
    c, b = plan.cfg, plan.budget
    dp = plan.layout.dp if plan.layout is not None else 1
    if c.algorithm.refinement.enabled:
        algo = (f"iGRPO (refinement on): K = {b.group_size} = N {b.drafts} drafts (Stage 1) + "
                f"G {b.refinements} refinements (Stage 2)")
        completions = (f"{b.completions:,} = {b.prompts * b.drafts:,} drafts + {b.prompts * b.refinements:,} "
                       f"refinements")
        trained_note = "Stage-2 refinements only; draft tokens get no gradient"
    else:
        algo = f"GRPO (refinement off): K = {b.group_size} single-shot rollouts per prompt"
        completions = f"{b.completions:,}"
        trained_note = "every rollout"
    mbs = c.policy.micro_batch_size
    lines = [
        "# per-step budget" + ("" if plan.layout else " (per-rank numbers for DP = 1: the layout does not fit)"),
        f"algorithm                 {algo}",
        f"prompts per step          {b.prompts:,}   per DP rank: {_per_rank(b.prompts, dp)}",
        f"completions per step      {completions}   per DP rank: {_per_rank(b.completions, dp)}",
        f"trained sequences         {b.trained:,} ({trained_note})   per DP rank: {_per_rank(b.trained, dp)}",
        f"micro-batches per rank    {b.trained / dp / mbs:g} of policy.micro_batch_size = {mbs}",
        f"max generated tokens      {b.completions:,} x {c.generation.max_new_tokens:,} = "
        f"{b.max_generated_tokens:,}   per DP rank: {_per_rank(b.max_generated_tokens, dp)}",
        f"max prompt tokens         {c.data.max_prompt_tokens:,}"
        + (f" (Stage-2 prompts add up to {c.algorithm.refinement.max_draft_tokens:,} draft tokens)"
           if c.algorithm.refinement.enabled else ""),
    ]
    if plan.steps_per_epoch is not None:
        lines.append(f"steps per epoch           {plan.steps_per_epoch:,} = {plan.train_rows:,} training prompts // "
                     f"{b.prompts} per step (before prompts over data.max_prompt_tokens are dropped)")
    if c.trainer.max_steps:
        lines.append(f"optimizer steps           {c.trainer.max_steps:,} (trainer.max_steps)")
    elif plan.total_steps is not None:
        lines.append(f"optimizer steps           {plan.total_steps:,} = {plan.steps_per_epoch:,} x "
                     f"{c.data.num_epochs} epoch(s) (data.num_epochs)")
    else:
        lines.append(f"optimizer steps           {c.data.num_epochs} epoch(s) of the training prompts / {b.prompts} "
                     "per step (the count is known once the data is read)")
    if plan.total_steps and c.trainer.save_every:
        lines.append(f"checkpoints               every {c.trainer.save_every} steps (trainer.save_every): "
                     f"{plan.total_steps // c.trainer.save_every} in the run; a preemption (SIGTERM) can lose up to "
                     f"{c.trainer.save_every} steps (docs/cluster.md, Preemption)")
    return lines


def checks_section(plan: Plan) -> list[str]:
    if not plan.inspected:
        return []
    return ["# inputs (opened, as the job will)"] + (plan.checks or ["(nothing could be checked)"])


def warnings_section(plan: Plan) -> list[str]:
    return ["# warnings"] + [f"- {w}" for w in plan.warnings] if plan.warnings else []


def problems_section(plan: Plan) -> list[str]:
    if not plan.problems:
        return ["# no problems found"] if plan.inspected else []
    return [f"# problems ({len(plan.problems)}): the job would fail"] + [f"- {p}" for p in plan.problems]


def dynamic_sampling_section(plan: Plan) -> list[str]:
    """With dynamic sampling on, the budget above is one round; each extra round repeats it (the worst case)."""
    ds = plan.cfg.algorithm.dynamic_sampling
    if not ds.enabled or plan.budget is None:
        return []
    b, rounds = plan.budget, 1 + ds.max_extra_rounds
    return ["# dynamic sampling (algorithm.dynamic_sampling)",
            f"per step                  up to {ds.max_extra_rounds} extra round(s) of {b.prompts:,} prompts: at most "
            f"{rounds * b.completions:,} completions, {rounds * b.max_generated_tokens:,} generated tokens"]


# The sections of describe_plan, in order. Append a function (Plan -> lines) to add one.
PLAN_SECTIONS: list[Callable[[Plan], list[str]]] = [config_section, layout_section, budget_section, training_section,
                                                     dynamic_sampling_section, memory_section, checks_section]
# Always last: they collect what the sections above found.
_CLOSING_SECTIONS = (warnings_section, problems_section)


def describe_plan(plan: Plan) -> str:
    """Human-readable dry-run report: resolved config, layout, per-step budget, the inputs checked, warnings and
    problems."""
    blocks = [section(plan) for section in (*PLAN_SECTIONS, *_CLOSING_SECTIONS)]
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"
