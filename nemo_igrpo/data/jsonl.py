"""JSON Lines files: one JSON object per line."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from nemo_igrpo.errors import UserError


class JsonlError(UserError, ValueError):
    """A JSONL file that cannot be read, or a line that is not a JSON object; the message names the file (and the
    1-based line number)."""


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file, in order; every such line must be a JSON
    object. A missing or unreadable file, or a line that is not UTF-8, is a ``JsonlError`` too."""
    path = Path(path)
    lineno = 0
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, start=1):
                line = raw.decode("utf-8")  # per line, so that an error names the right one
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise JsonlError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(obj, dict):
                    raise JsonlError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except FileNotFoundError:
        raise JsonlError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise JsonlError(f"{path}: is a directory, expected a JSONL file") from None
    except UnicodeDecodeError:
        raise JsonlError(f"{path}:{lineno}: not UTF-8 text") from None
    except OSError as err:
        raise JsonlError(f"{path}: cannot read ({err.strerror or err})") from None


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the objects of a JSONL file in order. Blank lines are skipped; anything else must be a JSON object."""
    for _, obj in iter_jsonl_lines(path):
        yield obj


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All objects of a JSONL file, as a list."""
    return list(iter_jsonl(path))


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write ``records`` one per line, atomically.

    The file is written next to its destination and renamed over it, so a reader (or a crash) never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                # ensure_ascii=False keeps LaTeX and non-English problems readable in the file.
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
