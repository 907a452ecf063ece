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
