"""Accuracy-grading throughput (answers/second) of ``MathGrader`` on 1 vs 2 workers, with and without pathological
answers in the batch. Run by hand:

    .venv/bin/python benchmarks/reward_throughput.py --n 400 --out /tmp/reward_throughput.json

Answers are distinct (the grader deduplicates identical pairs, which would flatter the numbers); each worker is
warmed up before timing. Grading is CPU-bound: the ceiling is about cores x (1 / per-item cost).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

from nemo_igrpo.rewards.math_grader import MathGrader

PATHOLOGICAL = ["9^{9^{9^{9}}}", "{" * 3000 + "1" + "}" * 3000, "\\frac{" * 400 + "1" + "}{2}" * 400]


def make_batch(n: int, n_bad: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` distinct (response, gold) pairs in the usual answer shapes, ``n_bad`` of them replaced by bad answers."""
    rng = random.Random(seed)
    responses, golds = [], []
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(2, 99)
        kind = i % 4
        if kind == 0:
            gold, pred = f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}" if rng.random() < 0.5 else f"{a + 1}/{b}"
        elif kind == 1:
            gold, pred = f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"
        elif kind == 2:
            gold, pred = f"({a}, {a + b}]", f"({a},{a + b}]"
        else:
            gold, pred = f"{a * 1000:,}", str(a * 1000 + rng.randint(0, 1))
        responses.append(f"<think>work {i}</think> The answer is \\boxed{{{pred}}}.")
        golds.append(gold)
    for j in range(n_bad):
        k = (j * n) // max(n_bad, 1)
        responses[k] = f"\\boxed{{{PATHOLOGICAL[j % len(PATHOLOGICAL)]}}}"
    return responses, golds


def measure(workers: int, n: int, n_bad: int, timeout_s: float) -> dict:
    """Grade one batch and return its throughput and counters."""
    responses, golds = make_batch(n, n_bad)
    with MathGrader(num_workers=workers, timeout_s=timeout_s) as g:
        g.parseable(["1"] * workers * 2)  # wait until every worker is up
        t0 = time.perf_counter()
        results = g.grade(responses, golds)
        dt = time.perf_counter() - t0
        return {"workers": workers, "n": n, "pathological": n_bad, "timeout_s": timeout_s, "seconds": round(dt, 3),
                "answers_per_s": round(n / dt, 1), "ms_per_answer_per_worker": round(1000 * dt * workers / n, 2),
                "timeouts": sum(r.timed_out for r in results), "restarts": g.stats.worker_restarts,
                "mean_accuracy": round(sum(r.score for r in results) / n, 3)}


def main() -> None:
    """Run the grid and print a table; write JSON to --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--bad", type=int, default=4, help="pathological answers in the 'with' runs")
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = [measure(w, args.n, bad, args.timeout) for bad in (0, args.bad) for w in (1, 2)]
    print(f"{'workers':>7} {'patho':>5} {'seconds':>8} {'ans/s':>7} {'ms/ans/worker':>13} {'timeouts':>8}")
    for r in rows:
        print(f"{r['workers']:>7} {r['pathological']:>5} {r['seconds']:>8} {r['answers_per_s']:>7} "
              f"{r['ms_per_answer_per_worker']:>13} {r['timeouts']:>8}")
    meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "loadavg_at_end": os.getloadavg()}
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
