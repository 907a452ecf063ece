"""What the demo's report and the multi-seed summary compute from evaluation samples and training logs.

Pure Python over plain rows (no torch), so every number in docs/demo.md and docs/results.md can be recomputed from the
files a run leaves behind: ``eval/<model>/sampled/samples/demo_test.jsonl`` and ``<run>/metrics.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

from nemo_igrpo.demo.teacher import DIRECT_REASONING
from nemo_igrpo.evaluation.metrics import MeanWithError, mean_with_error

# iGRPO's per-step view of Stage 1 against Stage 2 (trainer/rollout.py): the drafts' mean accuracy (the single-shot
# policy), the selected draft's accuracy, and the refinements' accuracy (what the update trains on).
DRAFT_MEAN, DRAFT_BEST, REFINED = "accuracy/draft_mean", "accuracy/draft_best", "accuracy/train"


def read_jsonl_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def per_problem_accuracy(samples: Iterable[dict]) -> dict[str, float]:
    """problem id -> fraction of its samples graded correct (rows of an evaluation sample file)."""
    hits: dict[str, list[float]] = {}
    for row in samples:
        hits.setdefault(str(row["problem_id"]), []).append(float(bool(row["correct"])))
    return {pid: sum(v) / len(v) for pid, v in hits.items()}


def paired_gain(baseline: dict[str, float], model: dict[str, float]) -> MeanWithError:
    """Mean over problems of (model - baseline) per-problem accuracy, with its standard error and normal 95% CI.

    Pairing by problem removes the spread of problem difficulty that two independent intervals would carry, so a gain
    is judged against the sampling noise alone. Both must cover the same problems."""
    if set(baseline) != set(model):
        raise ValueError(f"paired_gain: the two evaluations cover different problems "
                         f"({len(set(baseline) ^ set(model))} differ)")
    return mean_with_error([model[p] - baseline[p] for p in sorted(baseline)], lo=-1.0, hi=1.0)


def direct_share(samples: Iterable[dict]) -> float:
    """Fraction of responses that answer without working (the teacher's direct style, ``teacher.DIRECT_REASONING``)."""
    rows = [r for r in samples]
    return sum(DIRECT_REASONING in str(r.get("response", "")) for r in rows) / len(rows) if rows else float("nan")


def window_mean(rows: Sequence[dict], key: str, first: int, last: int) -> float | None:
    """Mean of ``key`` over logged steps ``first..last`` (inclusive); None when no step in the window logged it."""
    vals = [float(r[key]) for r in rows if first <= int(r.get("step", 0)) <= last and r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def refinement_windows(rows: Sequence[dict], window: int) -> dict[str, dict[str, float | None]]:
    """The drafts' mean and best accuracy and the refinements' accuracy, averaged over the first and the last
    ``window`` training steps of an iGRPO run (empty for a run without drafts)."""
    steps = [int(r["step"]) for r in rows if r.get(DRAFT_MEAN) is not None]
    if not steps:
        return {}
    spans = {"first": (min(steps), min(steps) + window - 1), "last": (max(steps) - window + 1, max(steps))}
    return {name: {key: window_mean(rows, key, lo, hi) for key in (DRAFT_MEAN, DRAFT_BEST, REFINED)}
            for name, (lo, hi) in spans.items()}

