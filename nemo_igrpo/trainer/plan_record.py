"""The record a dry run fills in (``plan.build_plan``, ``plan_inputs.inspect_inputs``) and its sections read
(``plan.PLAN_SECTIONS``): a module of its own, so that the modules that fill and render it import it, not each other."""

from __future__ import annotations

import dataclasses

from nemo_igrpo.config import Config


@dataclasses.dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    world_size: int


@dataclasses.dataclass(frozen=True)
class StepBudget:
    prompts: int
    group_size: int  # K
    drafts: int  # N per prompt (0 for GRPO)
    refinements: int  # G per prompt (K for GRPO: every rollout is trained)
    completions: int  # generated sequences per step, both stages
    trained: int  # sequences that receive gradient per step
    max_generated_tokens: int


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something that would make the job fail: ``where`` is the config key or the file, ``what`` the reason."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclasses.dataclass
class DataFile:
    key: str  # data.train_file, ...
    path: str
    rows: int | None = None  # None: not readable


@dataclasses.dataclass
class Plan:
    cfg: Config
    world_size: int
    layout_source: str  # where the world size came from, for the reader
    layout: Layout | None = None  # None when TP x PP does not divide the world size
    budget: StepBudget | None = None
    inspected: bool = False  # whether model, data and output were opened
    model_config: dict | None = None  # config.json of policy.model_path, when readable
    data: list[DataFile] = dataclasses.field(default_factory=list)
    train_rows: int | None = None  # training prompts (file rows, or the synthetic task's size)
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    checks: list[str] = dataclasses.field(default_factory=list)  # what was verified, one line each
    warnings: list[str] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    gpu_memory_gib: float = 80.0  # one GPU's memory, for the memory plan (igrpo train --gpu-memory-gib)

    def problem(self, where: str, what: str) -> None:
        self.problems.append(Problem(where, what))
