"""Accuracy-grading cost of ``MathGrader`` per answer, against math-verify's own parse + verify of the same answers
in one process, on 1 and 2 workers. Run by hand:

    .venv/bin/python benchmarks/reward_throughput.py --out /tmp/reward_throughput.json

Workloads (each answer distinct unless said so; the grader de-duplicates identical pairs, which would flatter it):

- ``distinct``: 400 answers with 400 different golds in four shapes (fractions, radicals, intervals, decimals);
- ``grpo``: 64 problems x 8 responses, as a GRPO step grades them: full responses (reasoning, then a box), golds
  shared by the 8 responses of a problem, about half integer answers (AIME-style), a quarter of the responses
  repeating another's answer;
- ``towers``: 16 different exponent towers (issue 11: 40 s on 2 workers before they were rejected cheaply).

math-verify's own cost is the loop a user of the library writes: ``verify(parse(gold), parse(answer))`` with the gold
parsed once per problem (in ``grpo``) and math-verify's own time limits, single-threaded in this process, after the
same warm-up the workers get. The pool's cost per answer per worker is ``wall x workers / answers``; its CPU per
answer adds the parent's and the workers' CPU time (read from /proc). Both are measured back to back in one run, so
the ratio, not the absolute time, is what carries over between machines and loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import time

from nemo_igrpo.rewards.extract import extract_answer
from nemo_igrpo.rewards.math_grader import MathGrader

try:  # absent before the pre-check existed; the script also measures that code for the before/after table
    from nemo_igrpo.rewards.precheck import pathological_reason
except ImportError:
    pathological_reason = None

# Answers that are wrapped in $...$ before parsing by the grader; the math-verify baseline gets the same strings.
_WRAP = "${}$"


def distinct_batch(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(responses, golds, answers): ``n`` distinct pairs in common answer shapes, half of them correct."""
    rng = random.Random(seed)
    responses, golds, answers = [], [], []
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
            gold, pred = f"{a}.5", f"\\frac{{{2 * a + 1}}}{{2}}" if rng.random() < 0.5 else f"{a}.25"
        responses.append(f"<think>work {i}</think> The answer is \\boxed{{{pred}}}.")
        golds.append(gold)
        answers.append(pred)
    return responses, golds, answers


def grpo_batch(problems: int, group: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(responses, golds, answers) of one GRPO step: ``group`` responses per problem sharing its gold."""
    rng = random.Random(seed)
    filler = " ".join(f"step {k}: we compute {k} + {k} = {2 * k}." for k in range(40))  # ~1.3k characters
    responses, golds, answers = [], [], []
    for p in range(problems):
        kind = p % 8
        a, b = rng.randint(2, 999), rng.randint(2, 97)
        # (gold, a correct answer written differently, the k-th wrong answer)
        if kind < 4:  # AIME-style integer answers
            gold, right, wrong = str(a), str(a), lambda k: str(a + k)
        elif kind == 4:
            gold, right, wrong = f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", lambda k: f"\\frac{{{a + k}}}{{{b}}}"
        elif kind == 5:
            gold, right, wrong = f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}", lambda k: f"{a + k}\\sqrt{{{b}}}"
        elif kind == 6:
            gold, right, wrong = f"({a}, {a + b})", f"({a},{a + b})", lambda k: f"({a + k},{a + b})"
        else:
            gold, right, wrong = f"{a}\\pi", f"\\pi \\cdot {a}", lambda k: f"{a + k}\\pi"
        previous: list[str] = []
        for g in range(group):
            if previous and rng.random() < 0.25:
                pred = rng.choice(previous)  # the same final answer as another response of the group
            else:
                pred = right if rng.random() < 0.5 else wrong(g + 1)
            previous.append(pred)
            responses.append(f"<think>{filler} (problem {p}, sample {g})</think> So the answer is \\boxed{{{pred}}}.")
            golds.append(gold)
            answers.append(pred)
    return responses, golds, answers


def towers_batch() -> tuple[list[str], list[str], list[str]]:
    answers = [f"{b}^{{{b}^{{{b}^{{{e}}}}}}}" for b in (7, 8, 9, 10) for e in (6, 7, 8, 9)]
    return [f"\\boxed{{{a}}}" for a in answers], ["5"] * len(answers), answers


def _proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def math_verify_cost(golds: list[str], answers: list[str]) -> dict:
    """math-verify's own parse + verify of the same (gold, answer) pairs, golds parsed once each, in this process."""
    from math_verify import parse, verify

    logging.disable(logging.WARNING)
    parsed_golds: dict[str, list] = {}
    w0, c0 = time.perf_counter(), time.process_time()
    for gold, ans in zip(golds, answers):
        if gold not in parsed_golds:
            parsed_golds[gold] = parse(_WRAP.format(gold))
        verify(parsed_golds[gold], parse(_WRAP.format(ans)))
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    logging.disable(logging.NOTSET)
    n = len(answers)
    return {"ms_per_answer": round(1000 * wall / n, 3), "cpu_ms_per_answer": round(1000 * cpu / n, 3)}


def breakdown(batch: tuple[list[str], list[str], list[str]]) -> dict:
    """Where the time per answer goes, each part timed alone in this process (ms per answer): the parent's
    extraction, pre-check and JSON encoding/decoding of one request and reply, and math-verify's parse of the golds
    (once per distinct gold) and of the answers with verify."""
    from math_verify import parse, verify

    responses, golds, answers = batch
    n = len(responses)

    def timed(fn) -> float:
        t0 = time.process_time()
        fn()
        return round(1000 * (time.process_time() - t0) / n, 4)

    out = {"extract": timed(lambda: [extract_answer(r) for r in responses]),
           "precheck": timed(lambda: [pathological_reason(a) for a in answers]) if pathological_reason else None,
           "json": timed(lambda: [json.loads(json.dumps({"op": "grade", "pred": a, "gold": g})) and json.loads(
               json.dumps({"score": 1.0, "timed_out": False, "error": None, "cpu": 0.001})) for a, g in zip(answers, golds)])}
    logging.disable(logging.WARNING)
    parsed: dict[str, list] = {}
    out["parse_gold"] = timed(lambda: [parsed.setdefault(g, parse(_WRAP.format(g))) for g in golds if g not in parsed])
    out["parse_answer_verify"] = timed(lambda: [verify(parsed[g], parse(_WRAP.format(a))) for a, g in zip(answers, golds)])
    logging.disable(logging.NOTSET)
    out["distinct_golds"] = len(parsed)
    return out


def pool_cost(batch: tuple[list[str], list[str], list[str]], workers: int, timeout_s: float) -> dict:
    """Grade one batch on ``workers`` warmed-up workers; cost per answer and counters."""
    responses, golds, _ = batch
    with MathGrader(num_workers=workers, timeout_s=timeout_s) as g:
        g.parseable(["1"] * workers * 2)  # every worker is up and warm
        stats = g.stats
        before = {k: getattr(stats, k, 0) for k in ("worker_requests", "worker_cpu_s", "rejected", "fast_path")}
        pids = [w.proc.pid for w in g._workers]
        wc0 = sum(_proc_cpu_s(p) for p in pids)
        w0, c0 = time.perf_counter(), time.process_time()
        results = g.grade(responses, golds)
        wall, parent_cpu = time.perf_counter() - w0, time.process_time() - c0
        pids_after = [w.proc.pid for w in g._workers]
        workers_cpu = sum(_proc_cpu_s(p) for p in pids_after) - wc0 if pids_after == pids else float("nan")
        after = {k: getattr(stats, k, 0) for k in before}
    n = len(responses)
    return {"workers": workers, "n": n, "seconds": round(wall, 3), "answers_per_s": round(n / wall, 1),
            "ms_per_answer_per_worker": round(1000 * wall * workers / n, 3),
            "cpu_ms_per_answer": round(1000 * (parent_cpu + workers_cpu) / n, 3),
            "parent_cpu_ms_per_answer": round(1000 * parent_cpu / n, 3),
            "worker_requests": after["worker_requests"] - before["worker_requests"],
            "worker_reported_cpu_s": round(after["worker_cpu_s"] - before["worker_cpu_s"], 3),
            "rejected": after["rejected"] - before["rejected"], "fast_path": after["fast_path"] - before["fast_path"],
            "timeouts": sum(r.timed_out for r in results), "mean_accuracy": round(sum(r.score for r in results) / n, 3)}


def main() -> None:
    """Run every workload and print a table; write JSON to --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="answers in the 'distinct' workload")
    ap.add_argument("--problems", type=int, default=64, help="problems in the 'grpo' workload (8 responses each)")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    workloads = {"distinct": distinct_batch(args.n), "grpo": grpo_batch(args.problems, 8), "towers": towers_batch()}
    # Warm math-verify in this process as the workers warm up (a different batch, same shapes).
    warm = distinct_batch(40, seed=99)
    math_verify_cost(warm[1], warm[2])
    rows, parts = [], {}
    for name, batch in workloads.items():
        if name != "towers":
            parts[name] = breakdown(batch)
        base = math_verify_cost(batch[1], batch[2]) if name != "towers" else None
        for workers in (1, 2):
            row = {"workload": name, **pool_cost(batch, workers, args.timeout)}
            if base is not None:
                row["math_verify_ms_per_answer"] = base["ms_per_answer"]
                row["math_verify_cpu_ms_per_answer"] = base["cpu_ms_per_answer"]
                row["ratio_wall"] = round(row["ms_per_answer_per_worker"] / base["ms_per_answer"], 2)
                row["ratio_cpu"] = round(row["cpu_ms_per_answer"] / base["cpu_ms_per_answer"], 2)
            rows.append(row)
    print(f"{'workload':>8} {'W':>2} {'seconds':>8} {'ans/s':>7} {'ms/ans/W':>9} {'mv ms/ans':>9} {'ratio':>6} "
          f"{'cpu ratio':>9} {'sent':>5} {'fast':>5} {'rej':>4} {'timeouts':>8}")
    for r in rows:
        print(f"{r['workload']:>8} {r['workers']:>2} {r['seconds']:>8} {r['answers_per_s']:>7} "
              f"{r['ms_per_answer_per_worker']:>9} {r.get('math_verify_ms_per_answer', '-'):>9} "
              f"{r.get('ratio_wall', '-'):>6} {r.get('ratio_cpu', '-'):>9} {r['worker_requests']:>5} "
              f"{r['fast_path']:>5} {r['rejected']:>4} {r['timeouts']:>8}")
    print("where the time goes (ms per answer, each part alone in one process):")
    for name, part in parts.items():
        print(f"  {name:>8}: " + ", ".join(f"{k} {v}" for k, v in part.items()))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "loadavg_at_end": os.getloadavg(), "timeout_s": args.timeout}
    with open(args.out, "w") as fh:
        json.dump({"meta": meta, "rows": rows, "breakdown": parts}, fh, indent=2)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
