"""The evaluation protocol (NeMo-Skills defaults, as used by the iGRPO paper) and the registry of evaluation sets.

Defaults, each overridable (``EvalProtocol`` fields, or the ``igrpo evaluate`` flags):

- samples per problem: 64 for AIME24/AIME25, 8 for every other set (paper Sec. 4: "pass@1 averaged over 64 samples for
  AIME24/25 and 8 for the others"), reported as avg@k;
- temperature 0.6, top-p 0.95, no top-k (NeMo-Skills' and the paper's sampling);
- the generation limit, ``DEFAULT_MAX_NEW_TOKENS`` = 65,536 new tokens. The iGRPO paper evaluates OpenReasoning-
  Nemotron-7B with NeMo-Skills and states a limit longer than the 32,768 used here before; the exact figure is not
  in the sources this repository could read, so the default is the 64K output tokens NVIDIA's model card reports for
  evaluating OpenReasoning-Nemotron. A cut-off answer is graded wrong, so a shorter limit lowers the score of a
  long-reasoning model. The CLI refuses a limit the model's context (``max_position_embeddings``) cannot hold;
- the prompt in NeMo-Skills' order (``nemo_skills/prompt/config/generic/math.yaml``): the instruction first, a blank
  line, then the problem, as the user message of the model's chat template, no system prompt. ``--prompt boxed``
  selects this project's training prompt instead (the problem, then ``Put the final answer within \\boxed{}.``);
- all of a dataset's requests in flight at once: one generate() call per dataset (per shard), which an engine like vLLM
  schedules as one continuous batch (``problems_per_call`` makes smaller calls: finer resumption, less throughput).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from nemo_igrpo.data.config import DataConfig
from nemo_igrpo.rewards.math_grader import EXTRACTION_MODES

# NeMo-Skills' generic math prompt (nemo_skills/prompt/config/generic/math.yaml, without few-shot examples).
NEMO_SKILLS_MATH_PROMPT = (
    "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}.\n\n{problem}"
)
# This project's training prompt (data.prompts.build_messages with DataConfig.instruction): the problem, a space, the
# instruction.
TRAINING_PROMPT = "{problem} " + DataConfig().instruction
# Named prompts accepted by --prompt; anything else must be a template containing {problem}.
PROMPT_PRESETS = {"nemo-skills": NEMO_SKILLS_MATH_PROMPT, "boxed": TRAINING_PROMPT}
PROBLEM_PLACEHOLDER = "{problem}"

# Sets evaluated with 64 samples per problem (few problems, high variance); every other set gets DEFAULT_K.
K_PER_DATASET = {"aime24": 64, "aime25": 64}
DEFAULT_K = 8
# See the module docstring for where this number comes from.
DEFAULT_MAX_NEW_TOKENS = 65536


def render_prompt(template: str, problem: str) -> str:
    """The user message: ``template`` with the problem in place of ``{problem}`` (a plain replacement, so braces in the
    problem or in ``\\boxed{}`` are kept as they are)."""
    return template.replace(PROBLEM_PLACEHOLDER, problem)


@dataclass
class EvalProtocol:
    """How samples are drawn and scored. ``k = 0`` means the per-dataset default (``k_for``)."""

    k: int = 0
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = -1
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    system_prompt: str | None = None
    # The user message, with {problem} where the problem goes (PROMPT_PRESETS).
    prompt: str = NEMO_SKILLS_MATH_PROMPT
    # Base seed; every generate() call's seed derives from (seed, dataset, first problem id of the call, sub-batch).
    seed: int = 0
    # Problems whose samples are generated in one generate() call; 0: all of the dataset's (shard's) problems, so an
    # engine keeps every request in flight. The grouping is fixed by problem order (not by what a resumed run still
    # has to do), so resuming reproduces it; a killed call is regenerated whole.
    problems_per_call: int = 0
    # Most sequences in one generate() call (a larger call is split into fixed sub-batches); 0: no limit.
    max_batch_sequences: int = 0
    # Evaluate only the first N problems of each set (smoke tests); 0: all. Raising it later in the same output
    # directory extends the evaluation; the samples equal a full run's when N is a multiple of problems_per_call
    # (otherwise the last call of the smaller run held fewer problems).
    limit: int = 0
    # Per-dataset k overrides, e.g. {"math500": 4}; wins over `k` and over K_PER_DATASET.
    k_per_dataset: dict[str, int] = field(default_factory=dict)
    # Where the grader takes the final answer from (reward.grading.extraction: "boxed" or "full"). Samples are graded
    # as they are written, so a resumed evaluation must grade the same way (it is part of the fingerprint).
    extraction: str = "boxed"

    def k_for(self, dataset: str) -> int:
        """Samples per problem for ``dataset``: the per-dataset override, else ``k``, else the NeMo-Skills default."""
        if dataset in self.k_per_dataset:
            return self.k_per_dataset[dataset]
        if self.k > 0:
            return self.k
        return K_PER_DATASET.get(dataset, DEFAULT_K)

    def validate(self) -> None:
        """Reject settings that cannot produce a meaningful evaluation, naming the field."""
        if self.k < 0:
            raise ValueError(f"protocol.k must be >= 0 (0: per-dataset default), got {self.k}")
        for name, k in self.k_per_dataset.items():
            if k < 1:
                raise ValueError(f"protocol.k_per_dataset[{name!r}] must be >= 1, got {k}")
        if self.temperature < 0:
            raise ValueError(f"protocol.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"protocol.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"protocol.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.problems_per_call < 0 or self.max_batch_sequences < 0:
            raise ValueError("protocol.problems_per_call and protocol.max_batch_sequences must be >= 0 (0: no limit)")
        if self.limit < 0:
            raise ValueError(f"protocol.limit must be >= 0, got {self.limit}")
        if self.extraction not in EXTRACTION_MODES:
            raise ValueError(f"protocol.extraction must be one of {list(EXTRACTION_MODES)}, got {self.extraction!r}")
        if PROBLEM_PLACEHOLDER not in self.prompt:
            raise ValueError(f"protocol.prompt must contain {PROBLEM_PLACEHOLDER} (or be one of "
                             f"{sorted(PROMPT_PRESETS)}), got {self.prompt!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sampling_fingerprint(self, dataset: str) -> dict:
        """What must not change between a killed run and its resumption for the results to be one evaluation.
        ``limit`` is left out on purpose: raising it after a smoke run extends the same evaluation."""
        d = self.as_dict()
        for key in ("limit", "k", "k_per_dataset"):
            d.pop(key)
        d["k"] = self.k_for(dataset)
        d["dataset"] = dataset
        return d


# --- dataset registry --------------------------------------------------------------------------------------------------

# Known sets and their file names in the shared data directory.
KNOWN_DATASETS = {"aime24": "aime24.jsonl", "aime25": "aime25.jsonl"}
# Environment variable naming a directory that holds <name>.jsonl files (wins over the default location).
DATA_DIR_ENV = "IGRPO_EVAL_DATA_DIR"


# The data directory of the recipes and slurm scripts (docs/cluster.md), where `igrpo prepare-data` writes <set>.jsonl.
CLUSTER_DATA_DIR_ENV = "DATA_DIR"


def default_data_dirs() -> list[Path]:
    """Where known sets are looked for, in order: $IGRPO_EVAL_DATA_DIR, $DATA_DIR, ``../shared/data`` next to the
    repository checkout, and ``../shared/data`` relative to the working directory."""
    dirs = []
    for var in (DATA_DIR_ENV, CLUSTER_DATA_DIR_ENV):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]))
    repo_root = Path(__file__).resolve().parents[2]
    dirs.append(repo_root.parent / "shared" / "data")
    dirs.append(Path.cwd().parent / "shared" / "data")
    return dirs


def resolve_datasets(names: list[str], paths: dict[str, str] | None = None) -> dict[str, Path]:
    """Map each requested set to its JSONL file. ``paths`` (``--data name=path``) wins; known sets fall back to the
    default data directories. A name with no file is an error that says how to give one."""
    paths = dict(paths or {})
    resolved: dict[str, Path] = {}
    for name in names:
        if name in paths:
            p = Path(paths[name]).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"dataset {name!r}: {p} is not a file")
            resolved[name] = p
            continue
        if name in KNOWN_DATASETS:
            for d in default_data_dirs():
                if (d / KNOWN_DATASETS[name]).is_file():
                    resolved[name] = d / KNOWN_DATASETS[name]
                    break
            else:
                looked = ", ".join(str(d) for d in default_data_dirs())
                raise FileNotFoundError(
                    f"dataset {name!r}: {KNOWN_DATASETS[name]} not found in {looked}; "
                    f"pass --data {name}=PATH.jsonl or set {DATA_DIR_ENV}"
                )
            continue
        raise ValueError(
            f"unknown dataset {name!r}: known sets are {sorted(KNOWN_DATASETS)}; for any other set pass "
            f"--data {name}=PATH.jsonl (one JSON object per line with 'problem' and 'answer', optionally 'id')"
        )
    return resolved


def load_records(path: str | Path) -> list[dict]:
    """Read an evaluation set with the project's prompt reader (``data.prompts.load_prompts``: ``problem`` and
    ``answer`` per line, ``id`` optional, errors name file and line) as plain dicts. Ids must be unique because they
    key the resumable sample file."""
    from nemo_igrpo.data.prompts import load_prompts

    records = [{"id": r.id, "problem": r.problem, "answer": r.answer} for r in load_prompts(path)]
    if not records:
        raise ValueError(f"{path}: no records")
    seen: set[str] = set()
    for r in records:
        if r["id"] in seen:
            raise ValueError(f"{path}: duplicate id {r['id']!r}")
        seen.add(r["id"])
    return records
