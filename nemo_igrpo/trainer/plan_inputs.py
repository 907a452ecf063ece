"""What ``igrpo train --dry-run`` opens, as the job will: the model directory (``config.json`` against the
architecture rules of ``backends.policy.architecture``, the safetensors files, the tokenizer and its chat template),
every data file (exists, parses, row count) and the output directory. Each finding is a line of ``plan.checks``, a
``plan.warnings`` entry or a ``plan.problems`` entry naming the config key or file; nothing raises. Pure Python: no
torch, megatron or GPU.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from nemo_igrpo.trainer.plan_record import DataFile, Plan


def inspect_inputs(plan: Plan) -> None:
    """Open the model directory, the data files and the output directory of ``plan.cfg``."""
    _inspect_model(plan)
    _inspect_data(plan)
    _inspect_output(plan)


# --- inspecting the model directory ------------------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def _read_json(plan: Plan, path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        plan.problem(where, f"{path}: cannot be read ({err})")
    except json.JSONDecodeError as err:
        plan.problem(where, f"{path}:{err.lineno}: malformed JSON ({err.msg})")
    return None


def safetensors_header_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (None when the header parses and the data fits the file):
    catches truncated or interrupted downloads by reading only the header."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return "shorter than a safetensors header"
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 * 1024**2):
                return "header length exceeds the file: not a safetensors file, or truncated"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        return f"unreadable safetensors header ({err})"
    if not isinstance(header, dict):
        return "malformed safetensors header"
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        return f"truncated: the header describes {8 + n + end:,} bytes, the file has {size:,}"
    return None


def _inspect_model(plan: Plan) -> None:
    p = plan.cfg.policy
    if not p.model_path:
        plan.problem("policy.model_path", "required (a Hugging Face model directory: config.json, safetensors, "
                     "tokenizer)")
        return
    model_dir = Path(p.model_path)
    if not model_dir.is_dir():
        plan.problem("policy.model_path", f"{model_dir}: not a directory (download the checkpoint first; "
                     "docs/cluster.md, step 1)")
        return
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        plan.problem("policy.model_path", f"{cfg_file}: missing (expected a Hugging Face model directory)")
    else:
        hf = _read_json(plan, cfg_file, "policy.model_path")
        if isinstance(hf, dict):
            plan.model_config = hf
            _check_architecture(plan, hf, cfg_file)
    _check_weights(plan, model_dir)
    _check_tokenizer(plan, Path(p.tokenizer_path) if p.tokenizer_path else model_dir,
                     "policy.tokenizer_path" if p.tokenizer_path else "policy.model_path")


def _check_architecture(plan: Plan, hf: dict, cfg_file: Path) -> None:
    from nemo_igrpo.backends.policy import architecture

    tp = plan.cfg.policy.tensor_model_parallel_size
    pp = plan.cfg.policy.pipeline_model_parallel_size
    problems = architecture.architecture_problems(hf, tp, pp)
    for what in problems:
        plan.problem(str(cfg_file), what)
    for what in architecture.micro_batching_problems(hf, plan.cfg.policy.micro_batching):
        plan.problem("policy.micro_batching", f"{what} ({cfg_file} is model_type {hf.get('model_type')!r})")
    if not problems:
        heads, kv = architecture.num_heads(hf)
        plan.checks.append(f"model     {cfg_file}: {hf.get('model_type')}, {hf.get('num_hidden_layers')} layers, "
                           f"{heads} heads / {kv} kv heads, vocab {hf.get('vocab_size')}: splits over TP {tp} x PP {pp}")
    max_pos = hf.get("max_position_embeddings")
    c = plan.cfg
    longest = c.data.max_prompt_tokens + c.generation.max_new_tokens
    if c.algorithm.refinement.enabled:
        longest += c.algorithm.refinement.max_draft_tokens
    if isinstance(max_pos, int) and longest > max_pos:
        plan.warnings.append(f"the longest sequence (data.max_prompt_tokens + generation.max_new_tokens"
                             f"{' + algorithm.refinement.max_draft_tokens' if c.algorithm.refinement.enabled else ''}"
                             f" = {longest:,} tokens, plus the template) exceeds max_position_embeddings={max_pos:,} "
                             f"of {cfg_file}")


def _check_weights(plan: Plan, model_dir: Path) -> None:
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        data = _read_json(plan, index, "policy.model_path")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            if data is not None:
                plan.problem("policy.model_path", f"{index}: no 'weight_map'")
            return
        files = []
        for name in sorted(set(weight_map.values())):
            if os.path.basename(name) != name:
                plan.problem("policy.model_path", f"{index} names a shard outside the directory: {name!r}")
            elif not (model_dir / name).is_file():
                plan.problem("policy.model_path", f"{model_dir / name}: missing (listed in {index.name})")
            else:
                files.append(model_dir / name)
    else:
        pickles = sorted(f.name for f in model_dir.glob("*") if f.suffix in (".bin", ".pt", ".pth"))
        hint = f" (found {pickles}: pickle checkpoints are never loaded; convert them to safetensors)" if pickles else ""
        plan.problem("policy.model_path", f"{model_dir}: neither model.safetensors nor model.safetensors.index.json"
                     + hint)
        return
    bad = 0
    for f in files:
        why = safetensors_header_problem(f)
        if why:
            plan.problem("policy.model_path", f"{f}: {why}")
            bad += 1
    if files and not bad:
        size = sum(f.stat().st_size for f in files)
        plan.checks.append(f"weights   {len(files)} safetensors file(s), {size / 1024**3:.2f} GiB, headers complete")


def _check_tokenizer(plan: Plan, tok_dir: Path, key: str) -> None:
    if not tok_dir.is_dir():
        plan.problem(key, f"{tok_dir}: not a directory")
        return
    if not any((tok_dir / f).is_file() for f in _TOKENIZER_FILES):
        plan.problem(key, f"{tok_dir}: no tokenizer ({' / '.join(_TOKENIZER_FILES)})")
        return
    tok_cfg = tok_dir / "tokenizer_config.json"
    template = any((tok_dir / f).is_file() for f in _CHAT_TEMPLATE_FILES)
    if not template and tok_cfg.is_file():
        data = _read_json(plan, tok_cfg, key)
        template = isinstance(data, dict) and bool(data.get("chat_template"))
    if not template:
        plan.problem(key, f"{tok_dir}: the tokenizer has no chat template, and prompts are rendered with it (a base "
                     "model needs policy.tokenizer_path pointing at a copy with one; docs/cluster.md, step 1)")
        return
    plan.checks.append(f"tokenizer {tok_dir}: tokenizer files and a chat template")


# --- inspecting the data -----------------------------------------------------------------------------------------------


def _count_rows(plan: Plan, key: str, path: str) -> int | None:
    """Rows of a prompt JSONL file, after checking every line (a JSON object with a non-empty problem and answer);
    the first bad line of a file is reported, with the number of bad lines."""
    p = Path(path)
    if not p.is_file():
        plan.problem(key, f"{p}: not found (igrpo prepare-data writes it; docs/cluster.md, step 2)")
        return None
    rows, bad, first = 0, 0, ""
    try:
        with p.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    why = f"malformed JSON ({err.msg})"
                else:
                    why = _row_problem(obj)
                if why:
                    bad += 1
                    first = first or f"{p}:{lineno}: {why}"
                else:
                    rows += 1
    except (OSError, UnicodeDecodeError) as err:
        plan.problem(key, f"{p}: cannot be read ({err})")
        return None
    if bad:
        plan.problem(key, first + (f" (and {bad - 1} more bad lines)" if bad > 1 else ""))
        return None
    if not rows:
        plan.problem(key, f"{p}: no records")
        return None
    return rows


def _row_problem(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for k in ("problem", "answer"):
        if k not in obj:
            return f"no key {k!r}"
        v = obj[k]
        if v is None or isinstance(v, (bool, dict, list)) or not str(v).strip():
            return f"{k!r} is {json.dumps(v)}: a non-empty string (or number) is needed"
    return ""


def _inspect_data(plan: Plan) -> None:
    d = plan.cfg.data
    if not d.train_file:
        plan.train_rows = d.synthetic.num_train
        plan.checks.append(f"data      no data.train_file: the synthetic demo task, {d.synthetic.num_train:,} "
                           "training problems")
        return
    for key in ("train_file", "validation_file", "test_file"):
        path = getattr(d, key)
        if not path:
            continue
        rows = _count_rows(plan, f"data.{key}", path)
        plan.data.append(DataFile(f"data.{key}", path, rows))
        if rows is not None:
            plan.checks.append(f"data      data.{key} {path}: {rows:,} rows")
    plan.train_rows = plan.data[0].rows


# --- inspecting the output directory -----------------------------------------------------------------------------------


def _inspect_output(plan: Plan) -> None:
    from nemo_igrpo.trainer.checkpoints import CheckpointDirectory, existing_run_artifacts, output_dir_refusal

    out = Path(plan.cfg.trainer.output_dir)
    key = "trainer.output_dir"
    if out.exists() and not out.is_dir():
        plan.problem(key, f"{out}: exists and is not a directory")
        return
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            plan.problem(key, f"{out}: not writable")
            return
        steps = CheckpointDirectory(out / "checkpoints").complete_steps()
        refusal = output_dir_refusal(out, plan.cfg.trainer.resume, plan.cfg.trainer.overwrite)
        if refusal is not None:  # the same rule the run applies: a fresh start into an earlier run is refused
            plan.problem(key, refusal.removeprefix(f"config key '{key}': ")
                         + (f" (checkpoints up to step {steps[-1]})" if steps else ""))
        elif steps and plan.cfg.trainer.resume:
            plan.checks.append(f"output    {out}: continues from checkpoint step {steps[-1]} (trainer.resume=true)")
        elif plan.cfg.trainer.overwrite and existing_run_artifacts(out):
            plan.warnings.append(f"{key} {out} holds an earlier run: trainer.overwrite=true deletes its "
                                 f"{', '.join(existing_run_artifacts(out))} at the start")
        else:
            plan.checks.append(f"output    {out}: exists, writable, no checkpoint yet")
        return
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        plan.problem(key, f"{out}: cannot be created ({parent} is not a writable directory)")
        return
    plan.checks.append(f"output    {out}: will be created")
