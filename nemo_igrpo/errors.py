"""The one way a user mistake is reported: raise ``UserError`` (or a subclass) with a message that names the offending
key, file, line or value; ``igrpo`` (``nemo_igrpo.cli.main``) prints it as ``error: <message>`` and exits with code 2.

Anything else that escapes a command is a bug and keeps its traceback. Set ``IGRPO_TRACEBACK=1`` to see the traceback
of a user error too. Pure standard library: every layer may import this module.
"""

from __future__ import annotations

import os
from pathlib import Path

EXIT_USER_ERROR = 2
TRACEBACK_ENV = "IGRPO_TRACEBACK"


class UserError(Exception):
    """A problem with the user's input (arguments, config, files, environment), not with the program."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist (still a ``FileNotFoundError`` for callers that catch one)."""


class OutputExistsError(UserError, FileExistsError):
    """An output the command would replace exists and no overwrite was asked for."""


class DamagedFileError(UserError):
    """A file that exists but is not what it should be (truncated, overwritten, not the format); names the file."""


def env_int(*names: str, default: int) -> int:
    """The first of the environment variables ``names`` that is set, as an int, else ``default``.

    A set but empty or non-integer value is a ``UserError`` naming the variable (``WORLD_SIZE=`` is a typo, not 1).
    """
    for name in names:
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            return int(raw.strip())
        except ValueError:
            raise UserError(f"environment variable {name}={raw!r} is not an integer") from None
    return default


def require_local_dir(path: str | Path, what: str) -> Path:
    """``path`` as an existing directory, else a ``UserError``.

    Called before any Hugging Face ``from_pretrained``: given a directory that does not exist, transformers would take
    the string for a hub repository id and try the network (about a minute before failing on a machine without one).
    Every model and tokenizer this project loads is a local directory, so a missing one is an error at once.
    """
    p = Path(path).expanduser()
    if not str(path):
        raise UserError(f"{what}: empty path")
    if not p.exists():
        raise UserError(f"{what} {str(path)!r}: no such directory (models and tokenizers are loaded from local "
                        "directories only, never looked up on the model hub)")
    if not p.is_dir():
        raise UserError(f"{what} {str(path)!r}: not a directory")
    return p
