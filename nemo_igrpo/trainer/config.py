"""The actor loop: how long, how often to validate, save and log, and where."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainerConfig:
    # Results directory: metrics.jsonl, TensorBoard events, checkpoints/, hf/, the resolved config. It holds one run: a
    # fresh start into a directory that already holds one is refused unless trainer.resume or trainer.overwrite is set.
    output_dir: str = "runs/default"
    # Stop after this many optimizer steps; 0 means one pass of data.num_epochs over the training prompts. The LR
    # schedule (policy.optimizer) spans this many steps: raising it on resume stretches the schedule over the new
    # length, so the LR at the resumed step is recomputed and can go back up (a warning gives both values).
    max_steps: int = 0
    # Checkpoint every k steps (and at the end, and on a stop signal). 0: only at the end. A preemption (SIGTERM) whose
    # grace period is shorter than the step in flight loses the steps since the last checkpoint: up to save_every
    # (trainer/stop_signals.py; docs/cluster.md, "Preemption").
    save_every: int = 50
    # Keep this many newest complete checkpoints; older ones are deleted after a new one is complete. 0 keeps all.
    keep_checkpoints: int = 2
    # Validate every m steps (single-shot accuracy on data.validation_file); 0: never.
    validate_every: int = 25
    # Validation prompts (from the head of the validation split); 0: all.
    num_validation_prompts: int = 0
    # Validation sampling temperature; 0 is greedy.
    validation_temperature: float = 0.0
    # Continue from the newest intact checkpoint in output_dir/checkpoints (a damaged newest one is set aside as
    # step_N.damaged with a warning, and the one before it is used).
    resume: bool = False
    # Start afresh in an output_dir that holds an earlier run, deleting that run's metrics, TensorBoard events,
    # checkpoints, hf/ export and config dump first (other files are left alone). Off: such a start is refused.
    overwrite: bool = False
    # Resume even when the checkpoint's model or config differ from this run's (normally refused).
    force_resume: bool = False
    # After SIGTERM/SIGINT, wait at most this many seconds for the step in flight to end and its checkpoint to be
    # written; past it the process says which steps are lost and exits 0, so that the batch script can requeue before
    # Slurm's SIGKILL. Set it a little below the cluster's preemption grace time (`scontrol show config | grep -i
    # grace`). 0: wait as long as it takes. SIGUSR1 (the time-limit warning) is not bounded by it.
    preemption_grace_s: float = 60.0
    # Global seed: sampling, shuffling and initialisation derive from it.
    seed: int = 42
    # This many non-finite losses in a row stop the run (one is skipped and counted).
    max_consecutive_nonfinite: int = 3
    # Log metrics to TensorBoard (JSONL is always written).
    tensorboard: bool = True
    # Log to Weights & Biases (needs `pip install wandb` and WANDB_API_KEY in the environment). Off by default.
    wandb: bool = False
    wandb_project: str = "nemo_igrpo"
    # Console progress bar.
    progress_bar: bool = True
