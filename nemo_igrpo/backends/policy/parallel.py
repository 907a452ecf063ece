"""Process group and megatron-core model-parallel setup: the same SPMD program for a laptop, torchrun and srun."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from nemo_igrpo.errors import UserError, env_int


class LayoutError(UserError, ValueError):
    """The launched world size does not fit the configured TP x PP."""


@dataclass(frozen=True)
class ParallelLayout:
    """Where this process sits in the TP x PP x DP grid (megatron order tp-cp-ep-dp-pp)."""

    rank: int
    world_size: int
    local_rank: int
    tp_size: int
    tp_rank: int
    pp_size: int
    pp_rank: int
    dp_size: int
    dp_rank: int
    device: torch.device

    @property
    def is_mp_src(self) -> bool:
        """The one rank of a model-parallel group that speaks for it (logging, data loading, reporting)."""
        return self.tp_rank == 0 and self.pp_rank == 0

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def process_group_backend(accelerator_backend: str | None) -> str:
    """The default process group's backend for each device type: ``"gloo"`` without an accelerator,
    ``"cpu:gloo,cuda:<accelerator_backend>"`` with one.

    Host-side collectives (metrics, counters, the preemption flag, Python objects; ``backends/collectives.py``) reduce
    CPU tensors. An NCCL-only group cannot carry them: torch raises "No backend type associated with device type cpu"
    at the first one. With gloo serving the CPU beside NCCL every group can, including megatron-core's, which inherit
    the default group's backend; device tensors still go through NCCL.
    """
    return "gloo" if accelerator_backend is None else f"cpu:gloo,cuda:{accelerator_backend}"


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if nodelist and shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        hosts = out.stdout.split()
        if hosts:
            return hosts[0]
    raise RuntimeError(
        "running under SLURM without MASTER_ADDR, and it could not be derived from SLURM_JOB_NODELIST with "
        "`scontrol show hostnames`: export MASTER_ADDR (the first node's hostname) in the sbatch script"
    )


def _rendezvous_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's env, else SLURM's, else a single local process.

    Also fills MASTER_ADDR/MASTER_PORT when the launcher did not, since init_method="env://" needs them.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = env_int("RANK", default=0), env_int("WORLD_SIZE", default=1)
        local = env_int("LOCAL_RANK", default=0)
        if world > 1 and ("MASTER_ADDR" not in env or "MASTER_PORT" not in env):
            raise RuntimeError("RANK/WORLD_SIZE are set but MASTER_ADDR/MASTER_PORT are not")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = env_int("SLURM_PROCID", default=0), env_int("SLURM_NTASKS", default=1)
        local = env_int("SLURM_LOCALID", default=0)
        if "MASTER_ADDR" not in env:
            env["MASTER_ADDR"] = _slurm_master_addr() if world > 1 else "127.0.0.1"
        if "MASTER_PORT" not in env:
            # Deterministic across tasks of one job (they cannot agree on a random port) and spread across jobs.
            env["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
    else:
        # A lone process: initialize_parallel uses an in-memory store, no port and no environment variables (set
        # here, they would leak into every child process, which would then all try to listen on the same port).
        return 0, 1, 0
    env.setdefault("RANK", str(rank))
    env.setdefault("WORLD_SIZE", str(world))
    env.setdefault("LOCAL_RANK", str(local))
    return rank, world, local


def initialize_parallel(tp: int, pp: int, seed: int, timeout_minutes: int = 30) -> ParallelLayout:
    """Initialise torch.distributed (if not already) and megatron's TP/PP/DP groups and RNG states.

    Rank and world size come from RANK/WORLD_SIZE (torchrun), else SLURM_PROCID/SLURM_NTASKS (srun), else a single
    process with an in-memory store. NCCL for CUDA tensors beside gloo for host tensors when CUDA is present
    (``process_group_backend``), gloo (plus the CPU shims) otherwise.
    ``world_size`` must be divisible by ``tp * pp``; the rest is data parallel.
    """
    from megatron.core import parallel_state, tensor_parallel

    if tp < 1 or pp < 1:
        raise ValueError(f"tensor and pipeline parallel sizes must be >= 1, got tp={tp}, pp={pp}")
    use_cuda = torch.cuda.is_available()
    if dist.is_initialized():
        from nemo_igrpo.backends.collectives import group_carries

        if not group_carries(None, "cpu"):
            raise RuntimeError(
                f"the default process group was initialised before initialize_parallel with backend "
                f"{dist.get_backend_config()!r}, which cannot carry the trainer's host-side (CPU) collectives; "
                f"initialise it with backend={process_group_backend('nccl')!r} or leave it to initialize_parallel")
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    else:
        rank, world, local = _rendezvous_env()
    if world % (tp * pp) != 0:
        raise LayoutError(
            f"world_size={world} is not divisible by tensor_model_parallel_size * pipeline_model_parallel_size "
            f"= {tp} * {pp} = {tp * pp}"
        )

    if use_cuda:
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        from nemo_igrpo.backends.cpu_shims import apply_cpu_shims

        apply_cpu_shims()
        device = torch.device("cpu")
    if not dist.is_initialized():
        launched = "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ
        rendezvous = {"init_method": "env://"} if launched else {"store": dist.HashStore()}
        dist.init_process_group(
            backend=process_group_backend("nccl" if use_cuda else None),
            rank=rank,
            world_size=world,
            timeout=timedelta(minutes=timeout_minutes),
            **rendezvous,
        )

    if parallel_state.model_parallel_is_initialized():
        # Re-initialising with other sizes in one process would silently keep the old groups.
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        distributed_timeout_minutes=timeout_minutes,
    )
    # Same seed on every rank for the CPU default generator, so data-parallel replicas build identical weights
    # before any checkpoint is loaded; megatron's tracker offsets the TP-region seed by tp_rank.
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)

    return ParallelLayout(
        rank=rank,
        world_size=world,
        local_rank=local,
        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_size=parallel_state.get_pipeline_model_parallel_world_size(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_size=parallel_state.get_data_parallel_world_size(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        device=device,
    )


def destroy_parallel(shutdown: Sequence[Callable[[], None]] = ()) -> None:
    """Tear down megatron's groups, then call ``shutdown`` (engines that run on the default process group, e.g. the
    vLLM generator's ``close``, whose shutdown also destroys the groups vLLM made and the default one), then destroy
    the default process group if it still exists. Megatron's groups before the default one: the other order aborts
    at exit on gloo."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    for close in shutdown:
        close()
    if dist.is_initialized():
        dist.destroy_process_group()
