"""Metrics to JSONL (always), TensorBoard and W&B (optional), and a console progress bar. Rank 0 only.

The metric names are a stable interface (DESIGN.md): plots and ``igrpo compare`` read them.

A resumed run logs the steps after its checkpoint again, so each sink forgets what was logged past it: JSONL lines are
dropped (a corrupted line in the middle of the file is reported by line number and kept in ``metrics.jsonl.corrupt``),
TensorBoard events are purged from the first replayed step on (``purge_step``), and W&B continues the same run (its id
is kept in ``wandb_run_id.txt`` next to the metrics; W&B ignores a step it has already recorded, so for the steps
between the checkpoint and the interruption it keeps the values first logged).
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("nemo_igrpo.trainer")

WANDB_RUN_ID_FILE = "wandb_run_id.txt"

# Shown in the progress bar, in this order, when present.
_BAR_KEYS = ("reward/mean", "reward/draft_best", "accuracy/train", "val/accuracy", "entropy", "time/step")


class MetricsLogger:
    def __init__(self, output_dir: str | Path, *, enabled: bool, tensorboard: bool, wandb: bool,
                 wandb_project: str, run_name: str, config: dict[str, Any], progress_bar: bool, total_steps: int,
                 initial_step: int, truncate_after_step: int | None = None) -> None:
        self.enabled = enabled
        self._tb = self._wandb = self._bar = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = out / "metrics.jsonl"
        # The first step that will be logged (again): the checkpoint's step + 1, or 0 (step-0 validation) from scratch.
        first_step = initial_step + 1 if initial_step > 0 else 0
        if truncate_after_step is not None:
            _drop_steps_after(self.jsonl_path, truncate_after_step if truncate_after_step > 0 else -1)
        self._jsonl = open(self.jsonl_path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir = out / "tensorboard"
            resumed = tb_dir.is_dir() and any(tb_dir.iterdir())
            # purge_step hides every earlier event at or after that step, so replayed steps are not shown twice.
            self._tb = SummaryWriter(log_dir=str(tb_dir), purge_step=first_step if resumed else None)
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise RuntimeError("trainer.wandb=true needs `pip install wandb`") from None
            # The API key is read by wandb from WANDB_API_KEY; it is never put into the config we log.
            self._wandb = wandb_lib.init(project=wandb_project, name=run_name, config=config,
                                         id=_wandb_run_id(out), resume="allow")
        if progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc=run_name, dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in sorted(metrics.items())}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=step)
        if self._bar is not None:
            self._bar.set_postfix({k.split("/")[-1]: f"{clean[k]:.3g}" for k in _BAR_KEYS if clean.get(k) is not None},
                                  refresh=False)
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._bar is not None:
            self._bar.close()


def _wandb_run_id(out: Path) -> str:
    """This output directory's W&B run id: read from ``wandb_run_id.txt``, or made and saved there on the first start,
    so that every restart of the run logs into the same W&B run."""
    path = out / WANDB_RUN_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    run_id = uuid.uuid4().hex[:16]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)
    return run_id


def _drop_steps_after(path: Path, step: int) -> None:
    """On resume, forget lines logged after the checkpoint (they will be logged again), and a torn last line (a kill
    mid-write). A line that does not parse anywhere else is not a kill: it is reported by line number and moved to
    ``metrics.jsonl.corrupt`` rather than silently lost."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept, corrupt = [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rec_step = rec["step"] if isinstance(rec, dict) else None
        except (json.JSONDecodeError, KeyError):
            rec_step = None
        if not isinstance(rec_step, int):
            if lineno == len(lines):
                log.info("%s:%d: dropped a torn last line (the run was killed while writing it)", path, lineno)
            else:
                log.warning("%s:%d: corrupted line (not a JSON object with an integer 'step'); moved to %s: %.80r",
                            path, lineno, path.name + ".corrupt", line)
                corrupt.append(f"{lineno}\t{line}")
            continue
        if rec_step <= step:
            kept.append(line)
    if corrupt:
        with open(path.with_name(path.name + ".corrupt"), "a", encoding="utf-8") as f:
            f.write("".join(x + "\n" for x in corrupt))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    os.replace(tmp, path)
