"""Metrics to JSONL (always), TensorBoard and W&B (optional), and a console progress bar. Rank 0 only.

The metric names are a stable interface (DESIGN.md): plots and ``igrpo compare`` read them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

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
        if truncate_after_step is not None:
            _drop_steps_after(self.jsonl_path, truncate_after_step)
        self._jsonl = open(self.jsonl_path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise RuntimeError("trainer.wandb=true needs `pip install wandb`") from None
            # The API key is read by wandb from WANDB_API_KEY; it is never put into the config we log.
            self._wandb = wandb_lib.init(project=wandb_project, name=run_name, config=config, resume="allow")
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


def _drop_steps_after(path: Path, step: int) -> None:
    """On resume, forget lines logged after the checkpoint (they will be logged again), and a torn last line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in kept))
    os.replace(tmp, path)
