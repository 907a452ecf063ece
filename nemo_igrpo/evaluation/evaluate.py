"""``igrpo evaluate``: single-shot sampling (no drafts) of k answers per problem, math-verify grading, avg@k / maj@k /
pass@k with standard errors, written to resumable per-sample JSONL files, a summary JSON, a markdown table and
NeMo-Skills' ``output-rs<j>.jsonl`` files.

The core is split so that each part can be used and tested alone:

- ``generate_chunk``: prompts -> k completions per problem through any ``GenerationInterface`` (HF on CPU, vLLM on
  GPU);
- ``grade_samples``: responses -> per-sample rows (extracted answer, correct) with the project's reward function;
- ``aggregate_dataset``: rows -> metrics (``evaluation.metrics``).

``evaluate_model`` ties them together with resumption, sharding and the merge; the CLI only builds a generator, a
tokenizer and a grader.

Resumption: the samples of a problem are appended (one write, then fsync) only after they are graded, so the file
holds whole problems, except perhaps a torn last line after a kill. On restart the torn line and any incomplete
problem are dropped and regenerated, complete problems are kept. Every generate() call is seeded from (protocol seed,
dataset, first problem id of the call, sub-batch index), and calls group problems by their position in the dataset
(or shard), never by what is left to do, so a resumed evaluation produces the same samples as an uninterrupted one
(for a generator that is deterministic given its seed, which both backends are on a fixed machine).

Never two models in one directory: the samples' fingerprint (``samples/<set>.protocol.json``) holds the sampling
settings and the model's identity (``identity.model_identity``: path, digests of config and weights); a run with a
different model or settings in an existing directory is refused.

Several GPUs: ``--shard I/N`` evaluates problems ``I, I + N, ...`` of every set into ``samples/<set>.shard-I-of-N
.jsonl`` (one shard per Slurm array task, slurm/evaluate.sbatch); whichever run finds every shard complete merges them
into the summary. A single run is shard 0/1.

Megatron checkpoints are not loaded here: convert them first with ``igrpo convert megatron-to-hf`` and pass the HF
directory. Nothing from megatron is imported by this module.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nemo_igrpo.data.jsonl import write_jsonl
from nemo_igrpo.evaluation import metrics, nemo_skills
from nemo_igrpo.evaluation.identity import model_identity
from nemo_igrpo.evaluation.protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    KNOWN_DATASETS,
    PROMPT_PRESETS,
    EvalProtocol,
    load_records,
    render_prompt,
    resolve_datasets,
)
from nemo_igrpo.seeding import hashed_seed

SAMPLES_DIR = "samples"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
NEMO_SKILLS_DIR = "nemo_skills"  # NeMo-Skills' layout: nemo_skills/eval-results/<set>/output-rs<j>.jsonl
# The per-sample row schema (docs/evaluation.md); extra keys: gold answer and grading timeout flag.
ROW_KEYS = ("dataset", "problem_id", "sample_idx", "response", "extracted", "correct", "num_tokens", "finish_reason")


# --- seeding -----------------------------------------------------------------------------------------------------------


def call_seed(base_seed: int, dataset: str, first_problem_id: str, sub_batch: int) -> int:
    """The seed of one generate() call; 31 bits because some engines take a signed 32-bit seed."""
    return hashed_seed(f"{base_seed}\x00{dataset}\x00{first_problem_id}\x00{sub_batch}") % (2**31 - 1)


# --- generation --------------------------------------------------------------------------------------------------------


@dataclass
class Completion:
    """One generated sample, decoded."""

    response: str
    num_tokens: int
    finish_reason: str


def build_prompt_ids(tokenizer: Any, records: Sequence[dict], protocol: EvalProtocol) -> list[list[int]]:
    """Token ids of each problem's single-shot prompt: ``protocol.prompt`` with the problem in it as the user message
    (after the optional system prompt), rendered with the model's chat template."""
    from nemo_igrpo.data.prompts import encode_messages

    system = [] if protocol.system_prompt is None else [{"role": "system", "content": protocol.system_prompt}]
    return [encode_messages(tokenizer, system + [{"role": "user", "content": render_prompt(protocol.prompt,
                                                                                          r["problem"])}])
            for r in records]


def generate_chunk(
    generator: Any,
    tokenizer: Any,
    dataset: str,
    problem_ids: Sequence[str],
    prompt_ids: Sequence[list[int]],
    k: int,
    protocol: EvalProtocol,
    stop_token_ids: Sequence[int],
) -> list[list[Completion]]:
    """``k`` completions for each of a chunk of problems, in as few generate() calls as ``max_batch_sequences``
    allows (one when it is 0: every request in flight at once). Sequences are laid out problem-major (all k samples of
    the first problem, then the next), so sample ``j`` of a problem always sits at the same place of the same seeded
    call."""
    from nemo_igrpo.backends.generation.interface import SamplingParams

    flat_prompts = [list(p) for p in prompt_ids for _ in range(k)]
    outputs: list[Completion] = []
    step = protocol.max_batch_sequences or max(1, len(flat_prompts))
    for sub, start in enumerate(range(0, len(flat_prompts), step)):
        sampling = SamplingParams(
            temperature=protocol.temperature,
            top_p=protocol.top_p,
            top_k=protocol.top_k,
            max_new_tokens=protocol.max_new_tokens,
            seed=call_seed(protocol.seed, dataset, problem_ids[0], sub),
            stop_token_ids=list(stop_token_ids),
        )
        out = generator.generate(flat_prompts[start : start + step], sampling)
        for ids, reason in zip(out.token_ids, out.finish_reasons):
            outputs.append(Completion(tokenizer.decode(ids, skip_special_tokens=True), len(ids), reason))
    if len(outputs) != len(flat_prompts):
        raise RuntimeError(f"generator returned {len(outputs)} completions for {len(flat_prompts)} prompts")
    return [outputs[i * k : (i + 1) * k] for i in range(len(prompt_ids))]


# --- grading -----------------------------------------------------------------------------------------------------------


def _grade(grader: Any, problems: list[str], responses: list[str], golds: list[str]):
    """Per-response (correct, extracted, timed_out) from the project's accuracy grader.

    ``grader`` is a ``MathGrader`` (has ``grade``) or a ``RewardFunction``. For the latter, its accuracy grader
    (``RewardFunction.grader``, the very ``MathGrader`` that computes the ``accuracy`` component) is asked directly,
    because only it reports which responses timed out (``RewardOutput.timeouts`` is a count); a reward callable
    without one is called and its ``accuracy`` component used."""
    math_grader = grader if hasattr(grader, "grade") else getattr(grader, "grader", None)
    if math_grader is not None and hasattr(math_grader, "grade"):
        results = math_grader.grade(responses, golds)
        return (
            [float(r.score) >= 0.5 for r in results],
            [r.extracted for r in results],
            [bool(r.timed_out) for r in results],
        )
    out = grader(problems, responses, golds)
    if "accuracy" not in out.components:
        raise ValueError("the reward function computes no 'accuracy' component (is its weight 0?); evaluation needs it")
    return [float(a) >= 0.5 for a in out.components["accuracy"]], list(out.extracted), [False] * len(responses)


def grade_samples(
    grader: Any, dataset: str, records: Sequence[dict], completions: Sequence[Sequence[Completion]]
) -> list[list[dict]]:
    """Grade every completion of every problem in one grader call; return per-problem lists of per-sample rows."""
    problems, responses, golds = [], [], []
    for rec, comps in zip(records, completions):
        for c in comps:
            problems.append(rec["problem"])
            responses.append(c.response)
            golds.append(rec["answer"])
    correct, extracted, timed_out = _grade(grader, problems, responses, golds) if responses else ([], [], [])
    rows, i = [], 0
    for rec, comps in zip(records, completions):
        problem_rows = []
        for j, c in enumerate(comps):
            problem_rows.append(
                {
                    "dataset": dataset,
                    "problem_id": rec["id"],
                    "sample_idx": j,
                    "response": c.response,
                    "extracted": extracted[i],
                    "correct": bool(correct[i]),
                    "num_tokens": c.num_tokens,
                    "finish_reason": c.finish_reason,
                    "gold": rec["answer"],
                    "timed_out": bool(timed_out[i]),
                }
            )
            i += 1
        rows.append(problem_rows)
    return rows


# --- aggregation -------------------------------------------------------------------------------------------------------


def aggregate_dataset(rows: Sequence[dict], records: Sequence[dict], k: int) -> dict:
    """Metrics of one dataset from its per-sample rows, in the order of ``records`` (each must have k samples)."""
    by_problem: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], {})[int(r["sample_idx"])] = r
    correct, answers = [], []
    for rec in records:
        samples = by_problem.get(rec["id"], {})
        if sorted(samples) != list(range(k)):
            raise ValueError(f"problem {rec['id']!r} has samples {sorted(samples)}, expected 0..{k - 1}")
        ordered = [samples[j] for j in range(k)]
        correct.append([bool(s["correct"]) for s in ordered])
        answers.append([s["extracted"] for s in ordered])
    summary = metrics.summarize(correct, answers)
    flat = [s for rec in records for s in by_problem[rec["id"]].values()]
    summary["per_problem_accuracy"] = dict(zip((r["id"] for r in records), summary["per_problem_accuracy"]))
    summary["num_samples"] = len(flat)
    summary["mean_tokens"] = sum(s["num_tokens"] for s in flat) / len(flat)
    summary["truncated_fraction"] = sum(s["finish_reason"] == "length" for s in flat) / len(flat)
    summary["no_answer_fraction"] = sum(s["extracted"] in (None, "") for s in flat) / len(flat)
    summary["grading_timeouts"] = sum(bool(s.get("timed_out")) for s in flat)
    return summary


# --- the resumable sample file -----------------------------------------------------------------------------------------


def load_completed(path: Path, k: int, known_ids: set[str], repair: bool = True) -> dict[str, list[dict]]:
    """The complete problems (all k samples) of a sample file. With ``repair`` (the file's own writer), the file is
    rewritten without a torn last line or incomplete problems so that appends continue from a clean state; a merge
    reads other shards' files without touching them. A bad line other than the last is corruption, not a kill, and is
    an error naming the line."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    # A file that ends with a newline splits into [..., b""]; anything else in the last slot is a torn write.
    torn = lines.pop() != b""
    rows: list[dict] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            if lineno == len(lines) and not torn:
                torn = True  # a torn line that happened to end on a newline byte inside the text: treat as a kill
                continue
            raise ValueError(f"{path}:{lineno}: malformed JSON in the sample file (not the last line: not a kill)")
        if row.get("problem_id") not in known_ids:
            raise ValueError(
                f"{path}:{lineno}: problem {row.get('problem_id')!r} is not in this dataset; "
                "is the output directory from another evaluation?"
            )
        rows.append(row)
    by_problem: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], {})[int(r["sample_idx"])] = r
    complete = {pid: [s[j] for j in range(k)] for pid, s in by_problem.items() if sorted(s) == list(range(k))}
    if repair and (torn or len(complete) != len(by_problem) or sum(map(len, complete.values())) != len(rows)):
        write_jsonl(path, [r for pid in by_problem if pid in complete for r in complete[pid]])
    return complete


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Append one problem's rows in a single write and fsync, so a kill loses at most the problem being written."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _check_fingerprint(path: Path, fingerprint: dict, write: bool = True) -> None:
    """Refuse to resume a sample file written by another model or under different sampling settings (the numbers
    would mix two evaluations); write the fingerprint on first use (``write``)."""
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        old.setdefault("extraction", "boxed")  # written before the key existed, when every evaluation graded boxes
        if old != fingerprint:
            diff = sorted(key for key in set(old) | set(fingerprint) if old.get(key) != fingerprint.get(key))
            if "model" in diff:
                was, now = old.get("model") or {}, fingerprint.get("model") or {}
                raise ValueError(
                    f"{path.parent.parent}: holds samples of another model ({was.get('path', 'unknown')}, weights "
                    f"{str(was.get('weights_sha256', '?'))[:12]}), not of {now.get('path')} (weights "
                    f"{str(now.get('weights_sha256', '?'))[:12]}); evaluations are never mixed: use a new --output "
                    "directory"
                )
            raise ValueError(
                f"{path.parent}: existing samples were drawn or graded with different settings ({', '.join(diff)}); "
                "use a new --output directory or delete the old one"
            )
        return
    if not write:
        return
    # A per-process temporary name: the shards of an array may write the same fingerprint at the same moment.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with 0 <= I < N."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i = n = -1
    if not sep or n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard expects INDEX/COUNT with 0 <= INDEX < COUNT (e.g. 3/8), got {text!r}")
    return i, n


def samples_path(output_dir: str | Path, name: str, shard: tuple[int, int]) -> Path:
    i, n = shard
    suffix = "" if n == 1 else f".shard-{i}-of-{n}"
    return Path(output_dir) / SAMPLES_DIR / f"{name}{suffix}.jsonl"


# --- the whole evaluation ----------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _prepare(records: Sequence[Any], protocol: EvalProtocol) -> tuple[list[dict], set[str]]:
    # Plain dicts or data.prompts.PromptRecord objects; ids as strings because they key the sample file.
    records = [_as_record(r) for r in records]
    # Ids of the whole set, before --limit: a run with a smaller limit than the one that wrote the file must not call
    # the extra problems foreign.
    all_ids = {r["id"] for r in records}
    return (records[: protocol.limit] if protocol.limit else records), all_ids


def _fingerprint(protocol: EvalProtocol, name: str, identity: dict | None, shards: int) -> dict:
    return {**protocol.sampling_fingerprint(name), "model": identity, "shards": shards}


def check_output_matches(output_dir: str | Path, datasets: dict[str, Sequence[Any]], protocol: EvalProtocol,
                         identity: dict | None, shards: int) -> None:
    """Before any model is loaded: refuse an output directory that holds another model's samples or other settings."""
    for name in datasets:
        path = Path(output_dir) / SAMPLES_DIR / f"{name}.protocol.json"
        _check_fingerprint(path, _fingerprint(protocol, name, identity, shards), write=False)


def evaluate_shard(
    generator: Any,
    tokenizer: Any,
    name: str,
    records: Sequence[dict],
    protocol: EvalProtocol,
    output_dir: str | Path,
    grader: Any,
    stop_token_ids: Sequence[int] | None = None,
    shard: tuple[int, int] = (0, 1),
    identity: dict | None = None,
) -> dict:
    """Generate and grade what is missing of one dataset's shard (problems ``i, i + n, ...``), resuming from its sample
    file; returns ``{"samples_file", "problems", "resumed_problems"}``. ``generator=None`` only checks what is done."""
    records, all_ids = _prepare(records, protocol)
    records = records[shard[0]::shard[1]]
    k = protocol.k_for(name)
    samples_dir = Path(output_dir) / SAMPLES_DIR
    samples_dir.mkdir(parents=True, exist_ok=True)
    _check_fingerprint(samples_dir / f"{name}.protocol.json", _fingerprint(protocol, name, identity, shard[1]))
    path = samples_path(output_dir, name, shard)
    done = load_completed(path, k, all_ids)
    resumed = sum(r["id"] in done for r in records)
    if generator is not None:
        if stop_token_ids is None:
            stop_token_ids = default_stop_token_ids(tokenizer)
        t0 = time.perf_counter()
        per_call = protocol.problems_per_call or max(1, len(records))
        for start in range(0, len(records), per_call):
            chunk = records[start : start + per_call]
            if all(r["id"] in done for r in chunk):
                continue
            # The whole chunk is regenerated even if some of it is done: its seeds belong to the chunk, so this is
            # what reproduces the uninterrupted run; only the missing problems are written.
            prompts = build_prompt_ids(tokenizer, chunk, protocol)
            completions = generate_chunk(
                generator, tokenizer, name, [r["id"] for r in chunk], prompts, k, protocol, stop_token_ids
            )
            graded = grade_samples(grader, name, chunk, completions)
            for rec, rows in zip(chunk, graded):
                if rec["id"] in done:
                    continue
                append_rows(path, rows)
                done[rec["id"]] = rows
            n_done = sum(r["id"] in done for r in records)
            acc = sum(s["correct"] for r in records if r["id"] in done for s in done[r["id"]]) / max(1, n_done * k)
            _log(f"[{name}{'' if shard[1] == 1 else f' shard {shard[0]}/{shard[1]}'}] {n_done}/{len(records)} "
                 f"problems, running avg@{k} {acc:.3f}, {time.perf_counter() - t0:.0f}s")
    return {"samples_file": str(path), "problems": len(records), "resumed_problems": resumed,
            "complete": all(r["id"] in done for r in records)}


def merge_dataset(name: str, records: Sequence[Any], protocol: EvalProtocol, output_dir: str | Path,
                  shards: int = 1) -> tuple[dict | None, list[int]]:
    """``(metrics, [])`` once every shard's problems have all their samples, else ``(None, incomplete shards)``.
    Reads the shards' files without modifying them (their writers may still be appending)."""
    records, all_ids = _prepare(records, protocol)
    k = protocol.k_for(name)
    done: dict[str, list[dict]] = {}
    missing = []
    for i in range(shards):
        shard_done = load_completed(samples_path(output_dir, name, (i, shards)), k, all_ids, repair=False)
        if any(r["id"] not in shard_done for r in records[i::shards]):
            missing.append(i)
        done.update(shard_done)
    if missing:
        return None, missing
    summary = aggregate_dataset([s for r in records for s in done[r["id"]]], records, k)
    nemo_skills.write_outputs(Path(output_dir) / NEMO_SKILLS_DIR, name, records, done, k)
    return summary, []


def evaluate_dataset(generator: Any, tokenizer: Any, name: str, records: Sequence[dict], protocol: EvalProtocol,
                     output_dir: str | Path, grader: Any, stop_token_ids: Sequence[int] | None = None,
                     identity: dict | None = None) -> dict:
    """Evaluate one whole dataset (shard 0/1) and return its metrics."""
    info = evaluate_shard(generator, tokenizer, name, records, protocol, output_dir, grader, stop_token_ids,
                          (0, 1), identity)
    summary, _ = merge_dataset(name, records, protocol, output_dir, 1)
    return {**summary, "samples_file": info["samples_file"], "resumed_problems": info["resumed_problems"]}


def _as_record(r: Any) -> dict:
    if isinstance(r, dict):
        return {"id": str(r["id"]), "problem": str(r["problem"]), "answer": str(r["answer"])}
    return {"id": str(r.id), "problem": str(r.problem), "answer": str(r.answer)}


def default_stop_token_ids(tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the tokenizer's eos token (chat models end their turn with it)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def evaluate_model(
    generator: Any,
    tokenizer: Any,
    datasets: dict[str, Sequence[dict]],
    protocol: EvalProtocol,
    output_dir: str | Path,
    grader: Any,
    stop_token_ids: Sequence[int] | None = None,
    model_name: str | None = None,
    shard: tuple[int, int] = (0, 1),
    identity: dict | None = None,
) -> dict:
    """Evaluate ``generator`` on this run's shard of every dataset (name -> records with ``id``, ``problem``,
    ``answer``), resumably; when every shard of every dataset is complete, merge them and write ``summary.json``,
    ``summary.md`` and NeMo-Skills' files in ``output_dir``. Returns ``{"model", "identity", "protocol", "datasets":
    {name: metrics}, "complete": bool, "pending": {name: [shards not complete yet]}}`` (metric keys in
    ``evaluation.metrics.summarize``). ``identity`` defaults to ``model_identity(model_name)`` when ``model_name`` is a
    model directory; ``generator=None`` generates nothing (a merge of what is on disk)."""
    protocol.validate()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if identity is None and model_name and (Path(model_name) / "config.json").is_file():
        identity = model_identity(model_name)
    runs = {name: evaluate_shard(generator, tokenizer, name, records, protocol, output_dir, grader, stop_token_ids,
                                 shard, identity)
            for name, records in datasets.items()}
    results, pending = {}, {}
    for name, records in datasets.items():
        merged, missing = merge_dataset(name, records, protocol, output_dir, shard[1])
        if merged is None:
            pending[name] = missing
        else:
            results[name] = {**merged, "samples_file": runs[name]["samples_file"],
                             "resumed_problems": runs[name]["resumed_problems"]}
    summary = {"model": model_name, "identity": identity, "protocol": protocol.as_dict(), "datasets": results,
               "complete": not pending, "pending": pending}
    if not pending:
        tmp = output_dir / (SUMMARY_JSON + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(summary, indent=1), encoding="utf-8")
        os.replace(tmp, output_dir / SUMMARY_JSON)
        tmp = output_dir / (SUMMARY_MD + f".{os.getpid()}.tmp")
        tmp.write_text(summary_markdown(summary), encoding="utf-8")
        os.replace(tmp, output_dir / SUMMARY_MD)
    return summary


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def summary_markdown(summary: dict) -> str:
    """A markdown table of a summary: one row per dataset, accuracies in percent."""
    datasets = summary["datasets"]
    ks = sorted({int(key[5:]) for d in datasets.values() for key in d if key.startswith("pass@")})
    head = ["dataset", "problems", "k", "avg@k ± se", "95% CI", "maj@k", *(f"pass@{k}" for k in ks)]
    head += ["tokens", "truncated"]
    lines = [
        f"# Evaluation of {summary.get('model') or 'model'}",
        "",
        "Accuracies in percent. avg@k: mean pass@1 over k samples; se: standard error across problems; "
        "maj@k: majority vote; pass@k: unbiased estimator (Chen et al. 2021).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, d in datasets.items():
        lo, hi = d["avg@k_ci95"]
        cells = [
            name,
            str(d["num_problems"]),
            str(d["k"]),
            f"{_pct(d['avg@k'])} ± {_pct(d['avg@k_stderr'])}",
            f"[{_pct(lo)}, {_pct(hi)}]",
            _pct(d.get("maj@k")),
            *(_pct(d.get(f"pass@{k}")) for k in ks),
            f"{d.get('mean_tokens', float('nan')):.0f}",
            _pct(d.get("truncated_fraction")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    p = summary.get("protocol") or {}
    if p:
        preset = next((name for name, text in PROMPT_PRESETS.items() if text == p.get("prompt")), "custom")
        lines += [
            "",
            f"Sampling: temperature {p.get('temperature')}, top-p {p.get('top_p')}, "
            f"max new tokens {p.get('max_new_tokens')}, seed {p.get('seed')}; prompt: {preset} "
            f"({json.dumps(p.get('prompt'))}); answers graded with {p.get('extraction', 'boxed')} extraction.",
        ]
    identity = summary.get("identity") or {}
    if identity:
        lines.append(f"Model: {identity.get('path')} (config sha256 {identity.get('config_sha256', '')[:12]}, "
                     f"weights sha256 {identity.get('weights_sha256', '')[:12]}).")
    agreement = {n: d["nemo_skills_agreement"] for n, d in datasets.items() if "nemo_skills_agreement" in d}
    if agreement:
        lines.append("Agreement with NeMo-Skills' own verdicts (share of samples graded alike): "
                     + ", ".join(f"{n} {_pct(a)}%" for n, a in agreement.items()) + ".")
    return "\n".join(lines) + "\n"


# --- CLI ---------------------------------------------------------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``igrpo evaluate``."""
    p = subparsers.add_parser(
        "evaluate",
        help="single-shot avg@k / maj@k / pass@k of a model on math sets (NeMo-Skills protocol, resumable)",
        description=(
            "Sample k answers per problem (no drafts: iGRPO inference is single-shot), grade them with math-verify, "
            "and write per-sample JSONL, summary.json, summary.md and NeMo-Skills' output-rs<j>.jsonl files to "
            "--output. Defaults are the paper's NeMo-Skills protocol. Re-running with the same --output resumes a "
            "killed evaluation; another model in the same --output is refused. --model must be a Hugging Face model "
            "directory; a Megatron checkpoint must first be converted with `igrpo convert megatron-to-hf`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=None, help="Hugging Face model directory (config.json, weights, tokenizer)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory, if not the model directory")
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                   help="hf: transformers (CPU, tests); vllm: a GPU engine that keeps every request in flight")
    p.add_argument(
        "--datasets",
        default="aime24,aime25",
        help=f"comma-separated set names; known: {', '.join(KNOWN_DATASETS)}; others need --data",
    )
    p.add_argument(
        "--data", action="append", default=[], metavar="NAME=PATH", help="JSONL file of a set (repeatable)"
    )
    p.add_argument("--k", type=int, default=0, help="samples per problem; 0: 64 for aime24/aime25, 8 otherwise")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="generation limit (evaluation/protocol.py says where the default comes from); a few hundred "
                        "for tiny demo models")
    p.add_argument("--limit", type=int, default=0, help="only the first N problems of each set; 0: all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--prompt",
        default="nemo-skills",
        help=f"the user message: a preset ({', '.join(PROMPT_PRESETS)}; nemo-skills: instruction, blank line, "
             "problem, as NeMo-Skills' generic/math prompt; boxed: this project's training prompt) or a template "
             "containing {problem}",
    )
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--problems-per-call", type=int, default=0,
                   help="problems per generate() call; 0: the whole set (shard) at once (smaller: finer resumption)")
    p.add_argument("--max-batch-sequences", type=int, default=0,
                   help="most sequences per generate() call; 0: no limit (the hf backend then batches by 64)")
    p.add_argument("--shard", default="0/1", help="INDEX/COUNT: evaluate problems INDEX, INDEX+COUNT, ... of every "
                   "set (one Slurm array task each); the run that finds every shard complete merges them")
    p.add_argument("--merge", action="store_true",
                   help="generate nothing: merge the shards on disk into the summary (an error lists missing shards)")
    p.add_argument("--from-nemo-skills", default=None, metavar="DIR",
                   help="grade NeMo-Skills outputs (DIR/eval-results/<set>/output-rs*.jsonl) instead of sampling a "
                        "model, reporting the agreement with NeMo-Skills' own verdicts")
    p.add_argument("--grader-workers", type=int, default=2, help="math-verify worker processes")
    p.add_argument("--grader-timeout", type=float, default=5.0, help="per-answer grading limit (CPU seconds)")
    p.add_argument("--extraction", choices=("boxed", "full"), default="boxed",
                   help="final-answer extraction: boxed (last run of \\boxed{}, as in training and NeMo-Skills) or "
                        "full (math-verify's own extraction from the whole response); see docs/evaluation.md")
    p.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
        help="model dtype (auto: float32 on the hf backend, bfloat16 on vllm)"
    )
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM only")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model directory")
    p.add_argument("--output", required=True, help="results directory (resumed when it exists)")
    p.set_defaults(func=run)
    return p


def protocol_from_args(args: argparse.Namespace) -> EvalProtocol:
    """An EvalProtocol from ``igrpo evaluate`` flags."""
    return EvalProtocol(
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        system_prompt=args.system_prompt,
        prompt=PROMPT_PRESETS.get(args.prompt, args.prompt),
        seed=args.seed,
        problems_per_call=args.problems_per_call,
        max_batch_sequences=args.max_batch_sequences,
        limit=args.limit,
        extraction=args.extraction,
    )


def parse_data_flags(items: Sequence[str]) -> dict[str, str]:
    """``["name=path", ...]`` -> ``{name: path}``, rejecting malformed items."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--data expects NAME=PATH.jsonl, got {item!r}")
        out[name.strip()] = path.strip()
    return out


def check_hf_model_dir(model: str | Path) -> Path:
    """The model directory, or a clear error when it is missing or looks like a Megatron checkpoint."""
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"--model {path}: not a directory")
    if (path / "config.json").is_file():
        return path
    megatron_markers = ("latest_checkpointed_iteration.txt", "metadata.json", "common.pt", "run_config.yaml")
    if any((path / m).exists() for m in megatron_markers) or any(path.glob("iter_*")):
        raise ValueError(
            f"--model {path} looks like a Megatron checkpoint; convert it first: "
            f"igrpo convert megatron-to-hf --megatron {path} --hf ORIGINAL_HF_DIR --out HF_DIR, "
            "then pass --model HF_DIR"
        )
    raise ValueError(f"--model {path}: no config.json; expected a Hugging Face model directory")


def check_context_length(model_dir: Path, tokenizer: Any, datasets: dict[str, Sequence[dict]],
                         protocol: EvalProtocol) -> None:
    """Refuse a generation limit the model cannot hold: the longest prompt plus ``max_new_tokens`` must fit in the
    model's ``max_position_embeddings`` (an engine would refuse those requests, or the answers would be cut)."""
    try:
        max_pos = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError):
        return
    if not isinstance(max_pos, int):
        return
    longest = 0
    for records in datasets.values():
        prepared, _ = _prepare(records, protocol)
        longest = max([longest, *map(len, build_prompt_ids(tokenizer, prepared, protocol))])
    if longest + protocol.max_new_tokens > max_pos:
        raise ValueError(
            f"--max-new-tokens {protocol.max_new_tokens} plus the longest prompt ({longest} tokens) exceeds the "
            f"model's context, max_position_embeddings={max_pos} in {model_dir / 'config.json'}; use --max-new-tokens "
            f"{max(1, max_pos - longest)} or less"
        )


def build_generator(args: argparse.Namespace, model_dir: Path, tokenizer: Any) -> Any:
    """The generation backend named by ``--backend``, loaded from an HF directory, through the same constructor the
    trainer uses (``backends.generation.build_generator``); no vLLM sleep mode, since nothing trains here."""
    from nemo_igrpo.backends.generation import build_generator as build_backend
    from nemo_igrpo.backends.generation.config import GenerationConfig
    from nemo_igrpo.backends.policy.config import PolicyConfig

    gen_cfg = GenerationConfig(
        backend=args.backend,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        # The HF backend's own batch bound (vLLM schedules by memory and ignores it).
        batch_size=args.max_batch_sequences or 64,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_sleep_mode=False,
    )
    # "auto": float32 on the HF backend (CPU, where bf16 matmuls are slow and change the samples), bf16 on vLLM.
    precision = {"auto": "auto", "float32": "fp32", "bfloat16": "bf16"}[args.dtype]
    return build_backend(gen_cfg, PolicyConfig(model_path=str(model_dir), trust_remote_code=args.trust_remote_code,
                                               precision=precision))


def build_grader(num_workers: int, timeout_s: float, extraction: str = "boxed") -> Any:
    """The project's reward function restricted to its accuracy component (format is a training signal, not an
    evaluation metric), with the given final-answer extraction policy. Use as a context manager: it owns grading
    worker processes."""
    from nemo_igrpo.rewards.config import GradingConfig, RewardConfig
    from nemo_igrpo.rewards.reward_fn import RewardFunction

    return RewardFunction(RewardConfig(weights={"accuracy": 1.0}, num_workers=num_workers, timeout_s=timeout_s,
                                       grading=GradingConfig(extraction=extraction)))


def _report(summary: dict, shard: tuple[int, int]) -> int:
    if summary["complete"]:
        print(summary_markdown(summary))
        return 0
    pending = "; ".join(f"{name}: shards {', '.join(map(str, s))}" for name, s in summary["pending"].items())
    _log(f"shard {shard[0]}/{shard[1]} is done; still running: {pending}. The run that completes the last shard "
         "writes summary.md (or run again with --merge once they are all done)")
    return 0


def validated_inputs(args: argparse.Namespace):
    """Everything ``igrpo evaluate`` reads from the user, checked before a model is loaded: the sampling protocol and
    shard, the model directory (config and safetensors headers), the tokenizer directory and the dataset files (every
    line). Returns ``(protocol, shard, names, datasets, model_dir)`` (the last two None with --from-nemo-skills). Any
    problem is a ``UserError`` naming the flag, file or line."""
    from nemo_igrpo.backends.conversion.hf_io import check_config_json, check_safetensors_files, hf_weight_files
    from nemo_igrpo.errors import UserError, require_local_dir

    try:
        protocol = protocol_from_args(args)
        protocol.validate()
        shard = parse_shard(args.shard)
        names = [n.strip() for n in args.datasets.split(",") if n.strip()]
        if not names:
            raise ValueError(f"--datasets {args.datasets!r}: no dataset named")
        if args.from_nemo_skills:
            return protocol, shard, names, None, None
        if not args.model:
            raise ValueError("--model is required (or --from-nemo-skills DIR)")
        require_local_dir(args.model, "--model")
        model_dir = check_hf_model_dir(args.model)
        if args.tokenizer:
            require_local_dir(args.tokenizer, "--tokenizer")
        paths = resolve_datasets(names, parse_data_flags(args.data))
        datasets = {name: load_records(path) for name, path in paths.items()}
    except (ValueError, OSError) as err:  # the validators above raise these, each naming its flag or file
        if isinstance(err, UserError):
            raise
        # EvalProtocol names its fields; say the flag the user typed (protocol.max_new_tokens -> --max-new-tokens).
        msg = re.sub(r"\bprotocol\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-")
                     if hasattr(args, m.group(1)) else m.group(0), str(err))
        raise UserError(msg) from None
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UserError(f"--output {args.output}: exists and is not a directory")
    check_config_json(model_dir / "config.json")
    check_safetensors_files(hf_weight_files(model_dir))
    return protocol, shard, names, datasets, model_dir


def run(args: argparse.Namespace) -> int:
    """``igrpo evaluate``."""
    protocol, shard, names, datasets, model_dir = validated_inputs(args)
    if args.from_nemo_skills:
        return run_from_nemo_skills(args, names, protocol)
    identity = model_identity(model_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or str(model_dir), trust_remote_code=args.trust_remote_code)
    try:
        check_output_matches(args.output, datasets, protocol, identity, shard[1])
        check_context_length(model_dir, tokenizer, datasets, protocol)
        generator = None if args.merge else build_generator(args, model_dir, tokenizer)
        with build_grader(args.grader_workers, args.grader_timeout, protocol.extraction) as grader:
            summary = evaluate_model(
                generator, tokenizer, datasets, protocol, args.output, grader,
                stop_token_ids=stop_token_ids_for(model_dir, tokenizer), model_name=str(model_dir), shard=shard,
                identity=identity,
            )
    except (RuntimeError, ValueError) as err:  # a missing backend, a context too short, another model's samples
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.merge and not summary["complete"]:
        print(f"error: --merge: not every shard is complete ({summary['pending']})", file=sys.stderr)
        return 2
    return _report(summary, shard)


def run_from_nemo_skills(args: argparse.Namespace, names: Sequence[str], protocol: EvalProtocol) -> int:
    """Grade NeMo-Skills' generations with this project's grader and report both verdicts."""
    output_dir = Path(args.output)
    (output_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    results = {}
    with build_grader(args.grader_workers, args.grader_timeout, protocol.extraction) as grader:
        for name in names:
            ns = nemo_skills.read_outputs(args.from_nemo_skills, name)
            k = len(ns.files)
            completions = [[Completion(text, n, "unknown") for text, n in zip(texts, toks)]
                           for texts, toks in zip(ns.responses, ns.num_tokens)]
            graded = grade_samples(grader, name, ns.records, completions)
            write_jsonl(output_dir / SAMPLES_DIR / f"{name}.jsonl", [row for rows in graded for row in rows])
            summary = aggregate_dataset([row for rows in graded for row in rows], ns.records, k)
            pairs = [(row["correct"], theirs) for rows, verdicts in zip(graded, ns.their_correct)
                     for row, theirs in zip(rows, verdicts) if theirs is not None]
            if pairs:
                summary["nemo_skills_agreement"] = sum(a == b for a, b in pairs) / len(pairs)
                summary["nemo_skills_avg@k"] = metrics.avg_at_k(
                    [[bool(v) for v in verdicts] for verdicts in ns.their_correct]).mean
            summary["nemo_skills_files"] = [str(f) for f in ns.files]
            results[name] = summary
    summary = {"model": f"NeMo-Skills outputs in {args.from_nemo_skills}", "identity": None, "protocol": {},
               "datasets": results, "complete": True, "pending": {}}
    (output_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (output_dir / SUMMARY_MD).write_text(summary_markdown(summary), encoding="utf-8")
    print(summary_markdown(summary))
    return 0


def stop_token_ids_for(model_dir: Path, tokenizer: Any) -> list[int]:
    """The tokenizer's eos plus the model's ``generation_config.json`` eos ids (Qwen2 chat models end a turn with
    <|im_end|> but list <|endoftext|> too; stopping on either is what their generation config asks)."""
    ids = default_stop_token_ids(tokenizer)
    gen_cfg = model_dir / "generation_config.json"
    if gen_cfg.is_file():
        eos = json.loads(gen_cfg.read_text(encoding="utf-8")).get("eos_token_id")
        for e in eos if isinstance(eos, list) else ([eos] if eos is not None else []):
            if int(e) not in ids:
                ids.append(int(e))
    return ids
