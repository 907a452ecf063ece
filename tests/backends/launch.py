"""Run a worker function as N ranks with torchrun-style env vars (RANK/WORLD_SIZE/MASTER_*) on a free port.

Each rank is a fresh process, so megatron's global parallel_state and the CPU shims never touch the pytest process.
They are forked from a multiprocessing *forkserver* that has imported torch/megatron/transformers once: importing
them costs ~7 s of CPU per process, which dominated these tests on a shared 2-core machine.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import traceback
from dataclasses import dataclass

PRELOAD = [
    "torch",
    "megatron.core.models.gpt",
    "megatron.core.pipeline_parallel",
    "megatron.core.tensor_parallel",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.modeling_qwen2",
]

_ctx = mp.get_context("forkserver")
_ctx.set_forkserver_preload(PRELOAD)


@dataclass
class Result:
    exitcodes: list[int | None]
    errors: list[str]

    @property
    def ok(self) -> bool:
        return all(rc == 0 for rc in self.exitcodes)

    def tail(self, n: int = 4000) -> str:
        return "\n".join(f"--- rank {r} exit={rc}\n{err[-n:]}" for r, (rc, err) in
                         enumerate(zip(self.exitcodes, self.errors)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn, args, env: dict[str, str], err_path: str) -> None:
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    try:
        fn(*args)
    except BaseException:
        with open(err_path, "w") as f:
            f.write(traceback.format_exc())
        raise


def launch(fn, args: tuple, world_size: int, err_dir, timeout: float = 180) -> Result:
    """Run ``fn(*args)`` on ``world_size`` ranks; ``fn`` must be a module-level function of an importable module."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        p = _ctx.Process(target=_rank_main, args=(fn, args, env, os.path.join(err_dir, f"rank{rank}.err")))
        p.start()
        procs.append(p)
    for p in procs:
        p.join(timeout)
        if p.exitcode is None:
            for q in procs:
                q.kill()
            p.join()
    errors = []
    for rank in range(world_size):
        path = os.path.join(err_dir, f"rank{rank}.err")
        errors.append(open(path).read() if os.path.exists(path) else "")
    return Result([p.exitcode for p in procs], errors)
