"""Prompt records and their conversion to chat messages and token ids."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_igrpo.data.jsonl import JsonlError, iter_jsonl_lines


@dataclass(frozen=True)
class PromptRecord:
    """A problem with its gold answer; ``id`` is stable across runs (the file's own id, else ``<file stem>-<line>``)."""

    id: str
    problem: str
    answer: str


def load_prompts(
    path: str | Path,
    problem_key: str = "problem",
    answer_key: str = "answer",
    id_key: str = "id",
) -> list[PromptRecord]:
    """Read ``PromptRecord``s from a JSONL file. A record whose problem or answer is missing, null, empty or not text
    is an error naming the file and line (a ``null`` must not become the string "None" that the model is then trained
    or graded on); answers are kept as strings (numbers are converted) because the verifier compares text."""
    path = Path(path)
    out = []
    for idx, (lineno, rec) in enumerate(iter_jsonl_lines(path)):
        fields = {key: _text_field(rec, key, f"{path}:{lineno}") for key in (problem_key, answer_key)}
        rid = rec.get(id_key)
        out.append(
            PromptRecord(
                id=str(rid) if rid is not None else f"{path.stem}-{idx}",
                problem=fields[problem_key],
                answer=fields[answer_key],
            )
        )
    return out


def _text_field(rec: dict[str, Any], key: str, where: str) -> str:
    if key not in rec:
        raise JsonlError(f"{where}: no key {key!r} (keys: {sorted(rec)})")
    value = rec[key]
    if value is None:
        raise JsonlError(f"{where}: {key!r} is null")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise JsonlError(f"{where}: {key!r} must be a string (or a number), got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise JsonlError(f"{where}: {key!r} is empty")
    return text


def build_messages(problem: str, system_prompt: str | None = None, instruction: str | None = None) -> list[dict]:
    """Chat messages of a single-shot prompt: an optional system message, then the problem followed by the
    instruction (separated by a space, NeMo-Skills style) as the user message."""
    content = problem if not instruction else f"{problem} {instruction}"
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages.append({"role": "user", "content": content})
    return messages


def encode_messages(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` rendered with the tokenizer's chat template, ending with the assistant header."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding from apply_chat_template; 4.x returned the list itself.
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    return [int(i) for i in ids]
