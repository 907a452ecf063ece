"""Running `igrpo train` the way a user does, for the end-to-end tests."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def igrpo_train_cmd(model: Path, out: Path, *overrides: str) -> list[str]:
    """A small but complete iGRPO run: 2 prompts x (2 drafts + 2 refinements) per step, short completions."""
    return [sys.executable, "-m", "nemo_igrpo.cli", "train", "--config", str(REPO / "conf" / "demo_igrpo.yaml"),
            f"policy.model_path={model}", f"trainer.output_dir={out}", "data.prompts_per_step=2",
            "algorithm.group_size=4", "algorithm.refinement.num_drafts=2", "generation.max_new_tokens=56",
            "algorithm.refinement.max_draft_tokens=56", "policy.micro_batch_size=4", "trainer.validate_every=0",
            "trainer.progress_bar=false", "trainer.tensorboard=false", "reward.num_workers=1",
            "policy.optimizer.lr=1e-3", *overrides]


LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def train_env() -> dict[str, str]:
    """The test process's environment without launcher variables (a run must not join another's rendezvous),
    one thread per process so that timings and results do not depend on what else the machine runs."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_train(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=train_env(), timeout=900, **kw)
