"""``igrpo prepare-data``: turn a public math dataset into the project's prompt JSONL.

Each output line is ``{"id", "problem", "answer", "source"}``, the format ``data.train_file`` and friends read. One
field mapping per dataset, because every source names its fields differently (MATH keeps the answer inside the
solution, GSM8K after ``####``, NeMo-Skills' evaluation sets use ``expected_answer``). Every record is checked before
it is written: a problem with no text or an answer the grader cannot parse would only ever score 0 and dilute the
group statistics, so it is dropped and counted by reason.

The input is a local file (``.jsonl``, ``.json``, ``.parquet`` when pyarrow is installed), because clusters often have
no internet on compute nodes; ``--from-hub`` reads a Hugging Face dataset id instead, through the optional
``datasets`` package.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from nemo_igrpo.data.jsonl import write_jsonl

TRAIN, EVAL = "train", "eval"


class PrepareError(ValueError):
    """A problem with the input or output as a whole (the message names the file, and the line where there is one)."""


class Drop(Exception):
    """A record that is skipped, with the reason it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _text(value: Any) -> str:
    """Answers are compared as text by the grader; JSON numbers (AIME's 204) become their decimal string."""
    if value is None:
        return ""
    if isinstance(value, bool):  # a bool is an int in Python, never a math answer
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _first(rec: dict[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        if key in rec and _text(rec[key]):
            return _text(rec[key])
    return ""


def _solution_answer(solution: str) -> str | None:
    """The final answer of a whole solution: its last run of ``\\boxed{}`` (several boxes in a row are one
    multi-part answer), None without a well-formed box. The grader's own extractor (``rewards.extract``)."""
    from nemo_igrpo.rewards.extract import extract_answer

    return extract_answer(solution)


def _reduce_gold(answer: str) -> str:
    """A gold answer as the grader compares it: an answer field that holds a whole solution is reduced to its final
    answer exactly as the grader reduces it (``rewards.extract.reduce_gold``), so that what is written is graded."""
    from nemo_igrpo.rewards.extract import reduce_gold

    return reduce_gold(answer)


_GSM8K_NUMBER = re.compile(r"^-?[\d,]*\.?\d+$")


def _map_problem_answer(problem_keys: tuple[str, ...], answer_keys: tuple[str, ...]) -> Callable[[dict], tuple[str, str]]:
    def mapper(rec: dict[str, Any]) -> tuple[str, str]:
        return _first(rec, problem_keys), _first(rec, answer_keys)

    return mapper


def _map_math(rec: dict[str, Any]) -> tuple[str, str]:
    problem = _first(rec, ("problem",))
    solution = _text(rec.get("solution"))
    answer = _solution_answer(solution) if solution else None
    if not answer:
        # Some MATH mirrors carry the answer separately; the solution's \boxed{} is the reference when both exist.
        answer = _first(rec, ("answer",))
    if not answer:
        raise Drop("no_boxed_answer", "the solution has no \\boxed{} answer")
    return problem, answer


def _map_gsm8k(rec: dict[str, Any]) -> tuple[str, str]:
    problem = _first(rec, ("question", "problem"))
    raw = _text(rec.get("answer"))
    if "####" not in raw:
        raise Drop("missing_answer", "the answer has no '#### <number>' line")
    answer = raw.rsplit("####", 1)[1].strip()
    if _GSM8K_NUMBER.match(answer):
        answer = answer.replace(",", "")  # "1,234" is one number, not a tuple, for the grader
    return problem, answer


@dataclass(frozen=True)
class DatasetSpec:
    role: str  # TRAIN or EVAL: guards against writing an evaluation set where training data goes
    mapper: Callable[[dict[str, Any]], tuple[str, str]]
    hub_hint: str  # a Hugging Face id for --from-hub, shown in --help (not fetched unless asked)


# NeMo-Skills' evaluation files name the gold answer "expected_answer"; other mirrors use "answer".
_NEMO_SKILLS = _map_problem_answer(("problem", "question"), ("expected_answer", "answer"))

DATASETS: dict[str, DatasetSpec] = {
    "math": DatasetSpec(TRAIN, _map_math, "DigitalLearningGmbH/MATH-lighteval"),
    "acereason": DatasetSpec(TRAIN, _map_problem_answer(("problem",), ("answer",)), "nvidia/AceReason-Math"),
    "openr1": DatasetSpec(TRAIN, _map_problem_answer(("problem",), ("answer",)), "open-r1/OpenR1-Math-220k"),
    "gsm8k": DatasetSpec(TRAIN, _map_gsm8k, "openai/gsm8k (--hub-config main)"),
    "aime24": DatasetSpec(EVAL, _NEMO_SKILLS, "HuggingFaceH4/aime_2024"),
    "aime25": DatasetSpec(EVAL, _NEMO_SKILLS, "math-ai/aime25"),
    "math500": DatasetSpec(EVAL, _NEMO_SKILLS, "HuggingFaceH4/MATH-500"),
    "amc": DatasetSpec(EVAL, _NEMO_SKILLS, "AI-MO/aimo-validation-amc"),
    "minerva": DatasetSpec(EVAL, _NEMO_SKILLS, "math-ai/minervamath"),
}
EVAL_NAMES = tuple(name for name, spec in DATASETS.items() if spec.role == EVAL) + ("aime",)
_ID_KEYS = ("id", "unique_id", "problem_id", "idx")


# --- reading -------------------------------------------------------------------------------------------------------

# (location for messages, record or the Drop that replaced it)
Item = tuple[str, "dict[str, Any] | Drop"]


def _read_jsonl(path: Path) -> Iterator[Item]:
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                yield where, Drop("malformed_json", f"{err.msg} at column {err.colno}")
                continue
            yield where, obj if isinstance(obj, dict) else Drop("not_an_object", f"got {type(obj).__name__}")


def _read_json(path: Path) -> Iterator[Item]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PrepareError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if isinstance(data, dict):
        # {"data": [...]} and {"<id>": {...}, ...} are the two common layouts besides a bare list.
        if isinstance(data.get("data"), list):
            data = data["data"]
        else:
            data = [dict(v, id=v.get("id", k)) if isinstance(v, dict) else v for k, v in data.items()]
    if not isinstance(data, list):
        raise PrepareError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for idx, obj in enumerate(data):
        where = f"{path}: record {idx + 1}"
        yield where, obj if isinstance(obj, dict) else Drop("not_an_object", f"got {type(obj).__name__}")


def _read_parquet(path: Path) -> Iterator[Item]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PrepareError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow), or convert the file to "
                           f".jsonl first") from None
    for idx, obj in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}: row {idx + 1}", obj


def _read_hub(name: str, split: str, config: str | None) -> Iterator[Item]:
    try:
        import datasets
    except ImportError:
        raise PrepareError("--from-hub needs the Hugging Face `datasets` package (pip install datasets); without "
                           "internet on this machine, download the file elsewhere and pass it with --input") from None
    ds = datasets.load_dataset(name, config, split=split)
    for idx, obj in enumerate(ds):
        yield f"{name}[{split}] row {idx + 1}", dict(obj)


def read_records(source: str, from_hub: bool = False, split: str = "train", hub_config: str | None = None
                 ) -> Iterator[Item]:
    if from_hub:
        return _read_hub(source, split, hub_config)
    path = Path(source)
    if not path.is_file():
        raise PrepareError(f"{path}: input file not found")
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
    if suffix not in readers:
        raise PrepareError(f"{path}: unknown input format {suffix!r}; expected one of {sorted(readers)}")
    return readers[suffix](path)


# --- converting ----------------------------------------------------------------------------------------------------

@dataclass
class Report:
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # "file:line: reason (detail)", in input order

    def drop(self, where: str, drop: Drop) -> None:
        self.dropped[drop.reason] += 1
        self.examples.append(f"{where}: {drop.reason}" + (f" ({drop.detail})" if drop.detail else ""))

    def summary(self) -> str:
        total = self.kept + sum(self.dropped.values())
        parts = [f"kept {self.kept} of {total}"]
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items())))
        return "; ".join(parts)


def convert(dataset: str, items: Iterator[Item], report: Report,
            parseable: Callable[[list[str]], list[bool]], chunk: int = 2048) -> list[dict[str, Any]]:
    """Map, check and de-duplicate records; every skipped record is counted in ``report`` with its location.

    The grader check runs in batches (``parseable`` takes a list of answers) because it goes through math-verify
    worker processes; de-duplication comes after it, so that a duplicate with a good answer replaces a bad first copy.
    """
    spec = DATASETS[dataset]
    candidates: list[tuple[str, dict[str, Any], str, str, str]] = []  # (where, record, id, problem, answer)
    for index, (where, rec) in enumerate(items):
        try:
            if isinstance(rec, Drop):
                raise rec
            problem, answer = spec.mapper(rec)
            answer = _reduce_gold(answer)
            if not problem:
                raise Drop("empty_problem")
            if not answer:
                raise Drop("missing_answer")
        except Drop as drop:
            report.drop(where, drop)
            continue
        candidates.append((where, rec, _first(rec, _ID_KEYS) or f"{dataset}-{index}", problem, answer))
    ok: list[bool] = []
    for start in range(0, len(candidates), chunk):
        ok.extend(parseable([c[4] for c in candidates[start:start + chunk]]))
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for (where, _rec, rid, problem, answer), good in zip(candidates, ok):
        if not good:
            report.drop(where, Drop("unparseable_answer", f"answer {answer[:60]!r}"))
        elif problem in seen:
            # The same problem twice would be sampled twice as often; keep the first.
            report.drop(where, Drop("duplicate_problem"))
        else:
            seen.add(problem)
            out.append({"id": rid, "problem": problem, "answer": answer, "source": dataset})
    report.kept = len(out)
    return out


# --- writing -------------------------------------------------------------------------------------------------------

def _existing_sources(path: Path, limit: int = 50) -> set[str]:
    sources: set[str] = set()
    try:
        with path.open("r", encoding="utf-8") as f:
            for _, line in zip(range(limit), f):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict) and isinstance(obj.get("source"), str):
                    sources.add(obj["source"])
    except (OSError, UnicodeDecodeError):
        pass
    return sources


def check_output(dataset: str, output: Path, force: bool) -> list[str]:
    """Guards against mixing evaluation and training data. Returns warnings; raises for what would destroy or
    contaminate data (unless ``force``)."""
    role = DATASETS[dataset].role
    name = output.name.lower()
    warnings = []
    if output.exists():
        eval_sources = _existing_sources(output) & set(EVAL_NAMES)
        if role == TRAIN and eval_sources and not force:
            raise PrepareError(f"{output}: holds the evaluation set {sorted(eval_sources)}; refusing to overwrite it "
                               f"with the training set {dataset!r} (pass --force if that is really meant)")
    if role == TRAIN and any(e in name for e in EVAL_NAMES):
        warnings.append(f"the output name {output.name!r} looks like an EVALUATION set, but {dataset!r} is TRAINING "
                        f"data: check that no recipe trains on, or evaluates with, the wrong file")
    if role == EVAL and "train" in name:
        if not force:
            raise PrepareError(f"{output}: {dataset!r} is an evaluation set and the output name says 'train'; training "
                               f"on it would contaminate the evaluation (pass --force if that is really meant)")
        warnings.append(f"writing the evaluation set {dataset!r} to {output.name!r} (--force)")
    return warnings


def _grade_parseable(answers: list[str]) -> list[bool]:
    """The grader's own test, so that what is kept here is exactly what the reward can grade: math-verify in worker
    processes with a time limit (``is_parseable_answer`` runs the same check one answer at a time on one worker;
    a batch over a few workers makes a 200k-record dataset minutes, not tens of minutes)."""
    from nemo_igrpo.rewards.math_grader import MathGrader

    with MathGrader(num_workers=max(1, min(4, (os.cpu_count() or 2) - 1))) as grader:
        return grader.parseable(answers)


def draw_subset(records: list[dict[str, Any]], limit: int, seed: int) -> list[dict[str, Any]]:
    """``limit`` records drawn uniformly at random with ``seed`` (the same subset on every machine and Python), in
    their input order; all of them when ``limit`` is 0 or not smaller than their number."""
    if not limit or limit >= len(records):
        return records
    keep = sorted(random.Random(f"prepare-data-{seed}").sample(range(len(records)), limit))
    return [records[i] for i in keep]


def prepare(dataset: str, source: str, output: str | Path, *, from_hub: bool = False, split: str = "train",
            hub_config: str | None = None, force: bool = False, strict: bool = False, limit: int = 0, seed: int = 0,
            parseable: Callable[[list[str]], list[bool]] | None = None, log: Callable[[str], None] = print) -> Report:
    """Convert ``source`` into ``output``; returns the counts. Raises ``PrepareError`` on a bad input or output, on
    zero kept records, and (``strict``) on any dropped record. ``limit`` > 0 keeps a random subset of that many usable
    records, drawn with ``seed`` (e.g. the paper's 9.4k-problem subset size of AceReason-Math)."""
    if dataset not in DATASETS:
        raise PrepareError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    output = Path(output)
    for warning in check_output(dataset, output, force):
        log(f"WARNING: {warning}")
    report = Report()
    records = convert(dataset, read_records(source, from_hub, split, hub_config), report,
                      parseable or _grade_parseable)
    for example in report.examples[:10]:
        log(f"dropped {example}")
    if len(report.examples) > 10:
        log(f"... and {len(report.examples) - 10} more dropped records")
    if strict and report.dropped:
        raise PrepareError(f"--strict: {report.examples[0]} (and {len(report.examples) - 1} more); nothing written")
    if not records:
        raise PrepareError(f"{source}: no usable {dataset!r} records ({report.summary()}); nothing written")
    if limit < 0:
        raise PrepareError(f"--limit must be >= 0 (0: all records), got {limit}")
    if limit > len(records):
        log(f"WARNING: --limit {limit} exceeds the {len(records)} usable records: all of them are written")
    subset = draw_subset(records, limit, seed)
    write_jsonl(output, subset)
    drawn = f"; a random {len(subset)} of them (--limit {limit} --seed {seed})" if len(subset) < len(records) else ""
    log(f"{dataset}: {report.summary()}{drawn} -> {output}")
    return report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    hints = "; ".join(f"{name}: {spec.hub_hint}" for name, spec in DATASETS.items())
    p = subparsers.add_parser(
        "prepare-data", help="convert a math dataset file into the project's prompt JSONL",
        description=__doc__.splitlines()[0] + f" Hub ids usable with --from-hub (check them first): {hints}.")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS),
                   help="source format: " + ", ".join(f"{n} ({s.role})" for n, s in DATASETS.items()))
    p.add_argument("--input", required=True,
                   help="local .jsonl/.json/.parquet file; with --from-hub, a Hugging Face dataset id")
    p.add_argument("--from-hub", action="store_true", help="read --input with datasets.load_dataset (optional package)")
    p.add_argument("--split", default="train", help="hub split (--from-hub only; default: train)")
    p.add_argument("--hub-config", default=None, help="hub dataset config name, e.g. 'main' for gsm8k")
    p.add_argument("--output", required=True, help="output JSONL (written atomically)")
    p.add_argument("--strict", action="store_true", help="fail (write nothing) if any record would be dropped")
    p.add_argument("--limit", type=int, default=0,
                   help="keep a random subset of this many usable records, in input order (0: all); e.g. 9400 for "
                        "the size of the paper's AceReason-Math subset")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit draw (the same subset everywhere)")
    p.add_argument("--force", action="store_true",
                   help="allow writing an evaluation set to a 'train' path or replacing an evaluation file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        prepare(args.dataset, args.input, args.output, from_hub=args.from_hub, split=args.split,
                hub_config=args.hub_config, force=args.force, strict=args.strict, limit=args.limit, seed=args.seed,
                log=lambda msg: print(msg, file=sys.stderr))
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
