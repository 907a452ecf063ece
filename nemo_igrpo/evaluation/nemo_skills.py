"""NeMo-Skills' evaluation output files, written and read, so that numbers can be compared with ``ns`` results.

NeMo-Skills (``ns eval``) writes one file per random seed, ``eval-results/<benchmark>/output-rs<seed>.jsonl``, each
with one line per problem: the input fields (``problem``, ``expected_answer``, ...), the model's text
(``generation``), its token count (``num_generated_tokens``) and, after its math grader, ``predicted_answer`` and the
verdict (``symbolic_correct`` in older releases, ``is_correct`` in newer ones). Its avg@k ("pass@1[avg-of-k]") is the
mean over the k files.

``write_outputs`` lays an evaluation's samples out that way (sample j of every problem in ``output-rs<j>.jsonl``), so
that ``ns summarize_results`` reads them; ``read_outputs`` turns such a directory into per-problem responses that
``igrpo evaluate --from-nemo-skills`` grades with this project's grader, reporting how often the two graders agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nemo_igrpo.data.jsonl import JsonlError, iter_jsonl, write_jsonl

RESULTS_DIR = "eval-results"
_SEED_FILE = re.compile(r"^output-rs(\d+)\.jsonl$")
# NeMo-Skills' verdict field, newest name first.
CORRECT_KEYS = ("is_correct", "symbolic_correct")


def write_outputs(out_dir: str | Path, dataset: str, records: Sequence[dict], rows: dict[str, list[dict]],
                  k: int) -> Path:
    """``out_dir/eval-results/<dataset>/output-rs<j>.jsonl`` for j < k; returns the benchmark directory.

    ``records`` are the problems in dataset order (``id``, ``problem``, ``answer``); ``rows[id]`` their k graded
    samples in sample order (the per-sample rows of ``igrpo evaluate``)."""
    bench = Path(out_dir) / RESULTS_DIR / dataset
    for j in range(k):
        lines = []
        for rec in records:
            s = rows[rec["id"]][j]
            lines.append({"id": rec["id"], "problem": rec["problem"], "expected_answer": rec["answer"],
                          "generation": s["response"], "predicted_answer": s["extracted"],
                          "is_correct": bool(s["correct"]), "symbolic_correct": bool(s["correct"]),
                          "num_generated_tokens": s["num_tokens"], "finish_reason": s["finish_reason"]})
        write_jsonl(bench / f"output-rs{j}.jsonl", lines)
    return bench


@dataclass
class NemoSkillsSamples:
    """One benchmark's NeMo-Skills outputs: problems in file order and their samples, seed order."""

    records: list[dict]  # id, problem, answer
    responses: list[list[str]]
    num_tokens: list[list[int]]
    their_correct: list[list[bool | None]]  # NeMo-Skills' verdict per sample, None when the file has none
    files: list[Path]


def benchmark_dir(root: str | Path, dataset: str) -> Path:
    """The directory holding ``output-rs*.jsonl`` of ``dataset`` under ``root``: ``root/eval-results/<dataset>``,
    ``root/<dataset>``, or ``root`` itself."""
    root = Path(root)
    for cand in (root / RESULTS_DIR / dataset, root / dataset, root):
        if any(_SEED_FILE.match(p.name) for p in cand.glob("output-rs*.jsonl")):
            return cand
    raise FileNotFoundError(f"no NeMo-Skills output-rs*.jsonl files for {dataset!r} in {root / RESULTS_DIR / dataset}, "
                            f"{root / dataset} or {root}")


def read_outputs(root: str | Path, dataset: str) -> NemoSkillsSamples:
    """Read every ``output-rs<seed>.jsonl`` of ``dataset``. The files must list the same problems in the same order
    (as ``ns eval`` writes them); an error names the file and line that does not."""
    bench = benchmark_dir(root, dataset)
    files = sorted((p for p in bench.glob("output-rs*.jsonl") if _SEED_FILE.match(p.name)),
                   key=lambda p: int(_SEED_FILE.match(p.name).group(1)))
    records: list[dict] = []
    responses: list[list[str]] = []
    tokens: list[list[int]] = []
    verdicts: list[list[bool | None]] = []
    for fi, path in enumerate(files):
        lines = list(iter_jsonl(path))
        if fi == 0:
            for i, line in enumerate(lines):
                for key in ("problem", "expected_answer", "generation"):
                    if key not in line:
                        raise JsonlError(f"{path}: record {i + 1} has no key {key!r}")
                records.append({"id": str(line.get("id", f"{dataset}-{i}")), "problem": str(line["problem"]),
                                "answer": str(line["expected_answer"])})
            responses = [[] for _ in records]
            tokens = [[] for _ in records]
            verdicts = [[] for _ in records]
        if len(lines) != len(records):
            raise JsonlError(f"{path}: {len(lines)} problems, but {files[0].name} has {len(records)}")
        for i, (rec, line) in enumerate(zip(records, lines)):
            if str(line.get("problem")) != rec["problem"]:
                raise JsonlError(f"{path}: record {i + 1} is another problem than line {i + 1} of {files[0].name}")
            if "generation" not in line:
                raise JsonlError(f"{path}: record {i + 1} has no key 'generation'")
            responses[i].append(str(line["generation"] or ""))
            tokens[i].append(int(line.get("num_generated_tokens") or 0))
            verdict = next((line[key] for key in CORRECT_KEYS if key in line), None)
            verdicts[i].append(None if verdict is None else bool(verdict))
    return NemoSkillsSamples(records, responses, tokens, verdicts, files)
