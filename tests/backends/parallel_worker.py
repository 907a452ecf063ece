"""Ranks for the parallel-setup tests: layout fields, the divisibility error, SLURM env resolution."""

from __future__ import annotations

import json
import os


def layout(tp: int, pp: int, out_dir: str) -> None:
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    lay = initialize_parallel(tp, pp, seed=0)
    fields = {k: getattr(lay, k) for k in ("rank", "world_size", "tp_size", "tp_rank", "pp_size", "pp_rank",
                                          "dp_size", "dp_rank", "is_mp_src", "is_first_stage", "is_last_stage")}
    fields["device"] = str(lay.device)
    with open(os.path.join(out_dir, f"rank{lay.rank}.json"), "w") as f:
        json.dump(fields, f)
    destroy_parallel()


def not_divisible(out_dir: str) -> None:
    from nemo_igrpo.backends.policy.parallel import initialize_parallel

    try:
        initialize_parallel(2, 1, seed=0)
    except ValueError as e:
        msg = str(e)
    else:
        msg = "no error"
    with open(os.path.join(out_dir, "error.txt"), "w") as f:
        f.write(msg)


def slurm_env(out_dir: str) -> None:
    from nemo_igrpo.backends.policy.parallel import _rendezvous_env

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(k, None)
    os.environ.update(SLURM_PROCID="5", SLURM_NTASKS="8", SLURM_LOCALID="1", SLURM_JOB_ID="12345",
                      MASTER_ADDR="node001")
    got = _rendezvous_env()
    with open(os.path.join(out_dir, "slurm.json"), "w") as f:
        json.dump({"got": got, "port": os.environ["MASTER_PORT"], "rank": os.environ["RANK"]}, f)


def cpu_simulation(backend: str) -> str:
    """``backend`` (a default-group backend string as ``init_process_group`` takes it) with the same device types and
    gloo serving each: a CPU build of torch has no NCCL, but which device types a group carries is what decides
    whether a host-side collective can run."""
    import torch.distributed as dist

    devices = dist.distributed_c10d.BackendConfig(dist.Backend(backend)).get_device_backend_map()
    return ",".join(f"{device}:gloo" for device in devices)


def host_collectives(backend: str, out_dir: str) -> None:
    """Every collective of backends/collectives.py on a default group built like ``backend`` (simulated on CPU), with
    megatron's groups on top as initialize_parallel makes them; records which group carried which device."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from nemo_igrpo.backends import collectives
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    dist.init_process_group(backend=cpu_simulation(backend), init_method="env://", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    calls: list[dict] = []
    originals = {name: getattr(dist, name) for name in ("all_reduce", "broadcast_object_list", "barrier")}

    def recording(name):
        def call(*args, **kwargs):
            tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
            group = kwargs.get("group")
            device = tensor.device.type if tensor is not None else "cpu"  # objects and barriers travel on the host
            calls.append({"op": name, "device": device, "carried": collectives.group_carries(group, device)})
            return originals[name](*args, **kwargs)
        return call

    result: dict = {}
    try:
        initialize_parallel(1, 1, seed=0)
        for name in originals:
            setattr(dist, name, recording(name))
        result["mean"] = collectives.data_parallel_mean({"a": float(rank), "b": 2.0 * rank})
        result["sum"] = collectives.data_parallel_sum([1.0, float(rank)])
        result["any"] = collectives.any_rank(rank == 1)
        collectives.barrier()
        result["bcast"] = collectives.broadcast_from_rank0({"from": rank})
        result["mp_bcast"] = collectives.broadcast_from_model_parallel_source({"from": rank})
    except RuntimeError as err:
        result["error"] = str(err)
        try:  # what the collective itself does on such a group, without initialize_parallel's check
            collectives.any_rank(True)
        except RuntimeError as raw:
            result["raw_error"] = str(raw)
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    result["calls"] = calls
    with open(os.path.join(out_dir, f"collectives{rank}.json"), "w") as f:
        json.dump(result, f)
    destroy_parallel()
