"""Checkpoint directories that are either complete or absent, and the output directory that holds one run.

A checkpoint is written into ``checkpoints/.step_000010.partial`` and renamed to ``checkpoints/step_000010`` only after
every rank has finished writing and the trainer state is on disk; ``os.rename`` of a directory is atomic on POSIX, so a
process killed mid-save leaves at most a ``.partial`` directory, which resume ignores and the next save replaces.

A complete checkpoint can still be damaged later (a full disk, a copy cut short). Resume then falls back to the
newest intact one, and the damaged one is renamed ``step_000010.damaged`` so that it is kept for inspection but
neither found by a later resume nor counted by retention.

An output directory holds one run. A fresh start (``trainer.resume=false``) into a directory that already holds a run
is refused before anything in it is touched, unless ``trainer.overwrite=true`` says to delete that run first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from nemo_igrpo.errors import DamagedFileError, UserError

_STEP_DIR = re.compile(r"^step_(\d{6,})$")
TRAINER_STATE = "trainer_state.json"

# Keys that may change between the run that wrote a checkpoint and the run that resumes it.
RESUMABLE_CHANGES = (
    "trainer.resume", "trainer.force_resume", "trainer.overwrite", "trainer.max_steps", "trainer.save_every", "trainer.keep_checkpoints",
    "trainer.validate_every", "trainer.progress_bar", "trainer.tensorboard", "trainer.wandb", "trainer.wandb_project",
    "trainer.output_dir", "reward.num_workers", "generation.batch_size", "policy.micro_batch_size",
    "policy.tensor_model_parallel_size", "policy.pipeline_model_parallel_size", "policy.model_path",
    "policy.tokenizer_path", "trainer.preemption_grace_s",
)


class ResumeError(UserError, RuntimeError):
    """Resuming would continue a different run (config or model differ), or no checkpoint can be loaded."""


class OutputDirError(UserError):
    """A fresh run was pointed at a directory that holds another run."""


# What a run writes into its output directory (the logger, the checkpoints, the final export, the config dump).
RUN_ARTIFACTS = ("metrics.jsonl", "checkpoints", "tensorboard", "hf", "config.yaml", "wandb_run_id.txt")


def existing_run_artifacts(output_dir: str | Path) -> list[str]:
    """The names in ``output_dir`` that a run wrote (empty directories and empty files do not count)."""
    out = Path(output_dir)
    found = []
    for name in RUN_ARTIFACTS:
        p = out / name
        if (p.is_dir() and any(p.iterdir())) or (p.is_file() and p.stat().st_size > 0):
            found.append(name)
    return found


def output_dir_refusal(output_dir: str | Path, resume: bool, overwrite: bool) -> str | None:
    """Why a run may not start in ``output_dir`` (None: it may). Reads only; a refused start changes nothing."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        return f"config key 'trainer.output_dir': {str(out)!r} exists and is not a directory"
    if resume or overwrite:
        return None
    found = existing_run_artifacts(out)
    if not found:
        return None
    return (f"config key 'trainer.output_dir': {str(out)!r} already holds a run ({', '.join(found)}); nothing was "
            "changed. Continue it with trainer.resume=true, replace it with trainer.overwrite=true, or choose "
            "another trainer.output_dir")


def remove_run_artifacts(output_dir: str | Path) -> list[str]:
    """``trainer.overwrite=true``: delete what an earlier run wrote into ``output_dir`` (nothing else); returns the
    names removed. Rank 0 only."""
    out = Path(output_dir)
    removed = []
    for name in RUN_ARTIFACTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
            removed.append(name)
        elif p.exists():
            p.unlink()
            removed.append(name)
    return removed


def read_trainer_state(step_dir: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint, checked for the keys resume needs; ``DamagedFileError`` naming the
    file when it is not valid JSON or lacks them."""
    path = Path(step_dir) / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedFileError(f"{path}: missing") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(state, dict):
        raise DamagedFileError(f"{path}: expected a JSON object, got {type(state).__name__}")
    for key, kind in (("step", int), ("sampler", dict), ("config", dict)):
        if not isinstance(state.get(key), kind):
            raise DamagedFileError(f"{path}: '{key}' is missing or not a{'n' if kind is int else ''} "
                                   f"{kind.__name__}")
    return state


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointDirectory:
    """Naming, discovery and retention of the checkpoints under ``root``. Only rank 0 renames and deletes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def partial_dir(self, step: int) -> Path:
        return self.root / f".{step_dir_name(step)}.partial"

    def begin(self, step: int) -> Path:
        """Rank 0: a fresh, empty partial directory for ``step`` (a leftover from a killed save is removed)."""
        partial = self.partial_dir(step)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        return partial

    def commit(self, step: int, trainer_state: dict[str, Any]) -> Path:
        """Rank 0, after all ranks wrote their shards: write the trainer state, then publish by rename."""
        partial = self.partial_dir(step)
        write_json_atomic(partial / TRAINER_STATE, trainer_state)
        final = self.root / step_dir_name(step)
        if final.exists():  # re-saving a step (e.g. SIGTERM right after a periodic save): replace it
            shutil.rmtree(final)
        os.rename(partial, final)
        _fsync_dir(self.root)
        return final

    def complete_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        steps = []
        for entry in self.root.iterdir():
            m = _STEP_DIR.match(entry.name)
            if m and (entry / TRAINER_STATE).is_file():
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest(self) -> Path | None:
        steps = self.complete_steps()
        return self.root / step_dir_name(steps[-1]) if steps else None

    def set_aside(self, step: int) -> Path:
        """Rename a damaged checkpoint to ``step_N.damaged`` (kept, but no longer complete). Rank 0 only."""
        src = self.root / step_dir_name(step)
        dst = self.root / f"{step_dir_name(step)}.damaged"
        n = 1
        while dst.exists():
            n += 1
            dst = self.root / f"{step_dir_name(step)}.damaged{n}"
        os.rename(src, dst)
        _fsync_dir(self.root)
        return dst

    def prune(self, keep: int) -> None:
        """Delete all but the ``keep`` newest complete checkpoints (0 keeps all)."""
        if keep <= 0:
            return
        for step in self.complete_steps()[:-keep]:
            shutil.rmtree(self.root / step_dir_name(step), ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ, other than those a resume may change."""
    a, b = _flatten(saved), _flatten(current)
    return sorted(k for k in set(a) | set(b)
                  if a.get(k, "<absent>") != b.get(k, "<absent>") and k not in RESUMABLE_CHANGES)


def check_resume_compatible(saved_state: dict[str, Any], current_config: dict[str, Any],
                            current_model_fingerprint: dict[str, Any], force: bool) -> None:
    """Refuse to resume into a different model or config unless forced; the message lists what differs."""
    problems = [f"config key '{k}': checkpoint has {_get(saved_state['config'], k)!r}, this run has "
                f"{_get(current_config, k)!r}" for k in config_differences(saved_state["config"], current_config)]
    saved_fp = saved_state.get("model_fingerprint", {})
    for k in sorted(set(saved_fp) | set(current_model_fingerprint)):
        if saved_fp.get(k) != current_model_fingerprint.get(k):
            problems.append(f"model '{k}': checkpoint has {saved_fp.get(k)!r}, this run has "
                            f"{current_model_fingerprint.get(k)!r}")
    if problems and not force:
        raise ResumeError("refusing to resume: the checkpoint was written by a different run\n  - "
                          + "\n  - ".join(problems) + "\nset trainer.force_resume=true to resume anyway")


def _get(d: dict[str, Any], dotted: str) -> Any:
    return _flatten(d).get(dotted, "<absent>")
