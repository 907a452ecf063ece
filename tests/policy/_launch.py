"""Run ``policy_worker.py`` as N processes with torchrun-style env vars on a free localhost port.

Subprocesses keep megatron's global parallel state and the CPU shims out of the pytest process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(args: list[str], world_size: int, timeout: float = 240, script: str = "policy_worker.py") -> None:
    """Start ``world_size`` ranks of the worker ``script``; raise with every rank's output tail if one fails."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, script), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs, rcs = [], []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, _ = p.communicate()
            out += "\n[timed out]"
        outs.append(out)
        rcs.append(p.returncode)
    if any(rcs):
        tails = "\n".join(f"--- rank {r} rc={rc}\n{o[-4000:]}" for r, (rc, o) in enumerate(zip(rcs, outs)))
        raise AssertionError(f"worker {args} failed:\n{tails}")
