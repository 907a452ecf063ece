"""The ``igrpo`` console command. Each subcommand lives in the module that does its job and registers itself through
an ``add_parser(subparsers)`` function; this file only wires them together (imports are lazy so that ``igrpo score``
never pays for importing megatron)."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that defines add_parser(subparsers); the parser sets `func(args) -> int`.
SUBCOMMANDS = {
    "train": "nemo_igrpo.trainer.main",
    "sft": "nemo_igrpo.demo.sft",
    "demo": "nemo_igrpo.demo.run",
    "score": "nemo_igrpo.rewards.score",
    "evaluate": "nemo_igrpo.evaluation.evaluate",
    "compare": "nemo_igrpo.evaluation.compare",
    "convert": "nemo_igrpo.backends.conversion.cli",
    "prepare-model": "nemo_igrpo.backends.conversion.prepare_model",
    "prepare-data": "nemo_igrpo.data.prepare",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igrpo", description="iGRPO (arXiv 2602.09000) on megatron-core: train, evaluate, convert, grade.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"see `igrpo {name} --help`")
            continue
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
