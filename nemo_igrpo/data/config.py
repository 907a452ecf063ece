"""Where prompts come from and how they are turned into model input."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SyntheticTaskConfig:
    """The embedded demo task: multi-step integer arithmetic, generated locally from a seed."""

    seed: int = 1234
    num_train: int = 4000
    num_validation: int = 200
    num_test: int = 200
    # Number of operations per problem, inclusive range; more operations = harder. The defaults (2-3 ops, operands
    # <= 10, values <= 50) are sized so the demo's ~1.5 min SFT leaves a tiny model well between 0% and 100%: with
    # 2-4 ops, operands <= 20 and values <= 99 the same SFT reached only 5% greedy test accuracy.
    min_ops: int = 2
    max_ops: int = 3
    # Operands are drawn from [0, max_operand] (a multiplier from [2, max_operand]).
    max_operand: int = 10
    # Every intermediate value and the answer stay in [0, max_value]: short numbers keep sequences short enough for a
    # tiny character-level model (operands are redrawn / operators skipped to respect it).
    max_value: int = 50
    # Operators to draw from, any of "+", "-", "*".
    operators: str = "+-*"


@dataclass
class DataConfig:
    # JSONL files with "problem" and "answer" per line (igrpo prepare-data writes them). Empty train_file: use the
    # synthetic demo task below.
    train_file: str = ""
    validation_file: str = ""
    test_file: str = ""
    synthetic: SyntheticTaskConfig = field(default_factory=SyntheticTaskConfig)
    # Prompts per optimizer step (before the group of K rollouts each). Paper: 128 prompts x 8 = 1024 completions.
    prompts_per_step: int = 8
    # System prompt of single-shot (GRPO, Stage-1, evaluation) prompts. Null: none.
    system_prompt: str | None = None
    # Appended to each problem in the user message (NeMo-Skills style instruction).
    instruction: str = "Put the final answer within \\boxed{}."
    # Prompts longer than this many tokens are dropped (with a count in the log). Paper: 1024.
    max_prompt_tokens: int = 1024
    # Passes over the training prompts; the paper trains 1 epoch. trainer.max_steps caps it.
    num_epochs: int = 1
    # Shuffle seed of the prompt order.
    seed: int = 0
