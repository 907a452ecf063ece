"""``igrpo train --config conf/X.yaml [key=value ...]``: one SPMD program for a laptop (one process), ``torchrun`` on a
node and ``srun`` on many nodes (rank and rendezvous come from the environment)."""

from __future__ import annotations

import argparse
import logging
import sys

from nemo_igrpo.errors import env_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a policy with iGRPO or GRPO",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="recipe YAML (see conf/)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the parallel layout and the per-step budget, then exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=10")
    p.set_defaults(func=run)


def _world_size() -> int:
    return env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)


def run(args: argparse.Namespace) -> int:
    from nemo_igrpo.config import ConfigError, check_input_paths, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        from nemo_igrpo.trainer.plan import describe_plan

        try:
            print(describe_plan(cfg, _world_size()))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    rank = env_int("RANK", "SLURM_PROCID", default=0)
    check_input_paths(cfg)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[%(asctime)s rank{rank}] %(levelname)s %(name)s: %(message)s")
    from nemo_igrpo.trainer.loop import NonFiniteLossError, Trainer
    from nemo_igrpo.trainer.checkpoints import ResumeError

    trainer = None
    try:
        trainer = Trainer(cfg)
        trainer.fit()
    except (ConfigError, ResumeError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if trainer is not None:
            trainer.close()
    return 0
