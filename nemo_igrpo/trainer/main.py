"""``igrpo train --config conf/X.yaml [key=value ...]``: one SPMD program for a laptop (one process), ``torchrun`` on a
node and ``srun`` on many nodes (rank and rendezvous come from the environment).

``--dry-run`` plans the run for a stated layout (``--nodes`` x ``--gpus-per-node``; by default the recipe's
``# Layout:`` comment) and checks everything the job will open, on a login node, without megatron or a GPU."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from nemo_igrpo.errors import env_int
from nemo_igrpo.trainer.provenance import CODE_VERSION_ENV, code_version  # noqa: F401 (re-exported)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a policy with iGRPO or GRPO",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="recipe YAML (see conf/)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the parallel layout and the per-step budget, open the model, "
                        "data and output directory the job will need, report every problem, then exit (2 if any)")
    p.add_argument("--nodes", type=_positive_int, default=None,
                   help="dry run: plan for this many nodes (default: the recipe's '# Layout:' comment, else 1)")
    p.add_argument("--gpus-per-node", type=_positive_int, default=None,
                   help="dry run: GPUs (ranks) per node (default: the recipe's '# Layout:' comment, else 1)")
    p.add_argument("--gpu-memory-gib", type=float, default=80.0,
                   help="dry run: memory of one GPU for the per-GPU memory plan (default: 80, an H100/A100 80GB)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=10")
    p.set_defaults(func=run)


def dry_run_world_size(args: argparse.Namespace) -> tuple[int, str]:
    """``(world size, where it came from)`` for the dry run: --nodes/--gpus-per-node, else WORLD_SIZE when a
    launcher set it, else the recipe's ``# Layout:`` comment, else one process."""
    from nemo_igrpo.config import ConfigError
    from nemo_igrpo.trainer.plan import recipe_layout

    recipe = recipe_layout(args.config)
    if args.nodes or args.gpus_per_node:
        nodes = args.nodes or (recipe[0] if recipe else 1)
        gpus = args.gpus_per_node or (recipe[1] if recipe else 1)
        return nodes * gpus, f"{nodes} node(s) x {gpus} GPU(s) per node (--nodes / --gpus-per-node)"
    env = os.environ.get("WORLD_SIZE")
    if env is not None:
        try:
            world = int(env)
            if world < 1:
                raise ValueError
        except ValueError:
            raise ConfigError(f"environment variable WORLD_SIZE={env!r}: expected a positive integer (or unset it "
                              "and pass --nodes / --gpus-per-node)") from None
        return world, f"WORLD_SIZE={world} (from the environment; --nodes / --gpus-per-node override it)"
    if recipe:
        nodes, gpus = recipe
        return nodes * gpus, (f"{nodes} node(s) x {gpus} GPU(s) per node (the recipe's '# Layout:' comment; "
                              "--nodes / --gpus-per-node override it)")
    return 1, "1 process (no '# Layout:' comment in the recipe; pass --nodes / --gpus-per-node)"


def run(args: argparse.Namespace) -> int:
    from nemo_igrpo.config import ConfigError, check_input_paths, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        from nemo_igrpo.trainer.plan import build_plan, describe_plan

        try:
            world, source = dry_run_world_size(args)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        plan = build_plan(cfg, world, layout_source=source, gpu_memory_gib=args.gpu_memory_gib)
        print(describe_plan(plan), end="")
        if plan.problems:
            print(f"error: {len(plan.problems)} problem(s), listed above under '# problems'", file=sys.stderr)
            return 2
        return 0
    if args.nodes or args.gpus_per_node:
        print("error: --nodes / --gpus-per-node only apply to --dry-run (a real run takes its ranks from the "
              "launcher: torchrun or srun)", file=sys.stderr)
        return 2
    rank = env_int("RANK", "SLURM_PROCID", default=0)
    check_input_paths(cfg)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[%(asctime)s rank{rank}] %(levelname)s %(name)s: %(message)s")
    import nemo_igrpo

    logging.getLogger("nemo_igrpo.trainer").info("code: nemo_igrpo from %s, version %s",
                                                 Path(nemo_igrpo.__file__).parent, code_version())
    from nemo_igrpo.trainer.loop import NonFiniteLossError, Trainer
    from nemo_igrpo.trainer.checkpoints import ResumeError

    trainer = None
    try:
        trainer = Trainer(cfg)
        trainer.fit()
    except (ConfigError, ResumeError, NonFiniteLossError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (the first one saves: trainer/stop_signals.py)
        print("interrupted: stopped without saving the step in flight; the newest complete checkpoint is kept",
              file=sys.stderr)
        return 130
    finally:
        if trainer is not None:
            trainer.close()
    return 0
