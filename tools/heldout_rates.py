"""Held-out rates of `igrpo evaluate` output folders, and each later folder's paired difference from the first.

    python tools/heldout_rates.py BASE_EVAL_DIR [EVAL_DIR ...] [--dataset word_test]

Per folder: accuracy (mean over all samples = avg@k), the share of answers with a final ``\\boxed{}`` answer, the
paper's format reward (think block + boxed answer, rewards/format_reward.py), the share cut at the token limit, mean
tokens and pass@k. Differences are paired over problems (the same problems in every folder): mean of the
per-problem differences of the per-problem rates, with a 95% normal interval (1.96 standard errors).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from nemo_igrpo.rewards.extract import extract_answer
from nemo_igrpo.rewards.format_reward import format_reward

RATES = {
    "accuracy": lambda r: float(r["correct"]),
    "boxed": lambda r: float(extract_answer(r["response"]) is not None),
    "format": lambda r: format_reward(r["response"]),
    "cut_at_limit": lambda r: float(r["finish_reason"] == "length"),
    "tokens": lambda r: float(r["num_tokens"]),
}


def load(eval_dir: str, dataset: str) -> dict[str, list[dict]]:
    path = Path(eval_dir) / "samples" / f"{dataset}.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (an `igrpo evaluate --output {eval_dir}` folder with {dataset!r}?)")
    per: dict[str, list[dict]] = defaultdict(list)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                per[row["problem_id"]].append(row)
            except (json.JSONDecodeError, KeyError) as e:
                raise SystemExit(f"{path}:{n}: not an evaluation sample ({e})") from e
    return per


def per_problem(per: dict[str, list[dict]], rate) -> dict[str, float]:
    return {p: sum(rate(r) for r in rows) / len(rows) for p, rows in per.items()}


def summary(per: dict[str, list[dict]]) -> dict[str, float]:
    n = sum(len(rows) for rows in per.values())
    out = {"problems": len(per), "samples": n}
    out.update({name: sum(rate(r) for rows in per.values() for r in rows) / n for name, rate in RATES.items()})
    out["pass@k"] = sum(any(r["correct"] for r in rows) for rows in per.values()) / len(per)
    return out


def paired(base: dict[str, list[dict]], other: dict[str, list[dict]], rate) -> tuple[float, float]:
    if set(base) != set(other):
        raise SystemExit("the folders hold different problems: a paired difference needs the same set")
    a, b = per_problem(base, rate), per_problem(other, rate)
    d = [b[p] - a[p] for p in a]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else float("nan")
    return mean, 1.96 * sd / math.sqrt(len(d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="evaluation folders; the first is the baseline")
    ap.add_argument("--dataset", default="word_test")
    args = ap.parse_args()
    data = {d: load(d, args.dataset) for d in args.dirs}
    print("| model | problems x samples | accuracy % | boxed % | format % | cut at limit % | tokens | pass@k % |")
    print("|---|---|---|---|---|---|---|---|")
    for d, per in data.items():
        s = summary(per)
        print(f"| {d} | {s['problems']} x {s['samples'] // s['problems']} | {100 * s['accuracy']:.1f} | "
              f"{100 * s['boxed']:.1f} | {100 * s['format']:.1f} | {100 * s['cut_at_limit']:.1f} | {s['tokens']:.1f} | "
              f"{100 * s['pass@k']:.1f} |")
    base = args.dirs[0]
    for d in args.dirs[1:]:
        for name in ("accuracy", "boxed", "format"):
            mean, half = paired(data[base], data[d], RATES[name])
            print(f"{d} - {base}: {name} {100 * mean:+.1f} ± {100 * half:.1f} points (95%, paired over problems)")


if __name__ == "__main__":
    main()
