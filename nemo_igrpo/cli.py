"""The ``igrpo`` console command. Each subcommand lives in the module that does its job and registers itself through
an ``add_parser(subparsers)`` function; this file only wires them together (imports are lazy so that ``igrpo score``
never pays for importing megatron).

A user mistake anywhere below is a ``nemo_igrpo.errors.UserError``; it is turned into one ``error: ...`` line and exit
code 2 here, and nowhere else (``IGRPO_TRACEBACK=1`` shows its traceback as well)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from nemo_igrpo.errors import EXIT_USER_ERROR, TRACEBACK_ENV, UserError

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
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
