"""Grading limits: cheap rejection of pathological answers, the per-batch budget, CPU-time (not wall-time) per-item
limits that machine load cannot turn into a different verdict, and the pool's cost per answer relative to
math-verify's own parse + verify on the same inputs."""

import logging
import os
import subprocess
import sys
import time
from math import comb

import pytest

from nemo_igrpo.rewards._worker import wrap_latex
from nemo_igrpo.rewards.math_grader import HARD_CPU_LIMIT_EXTRA_S, MathGrader
from nemo_igrpo.rewards.precheck import pathological_reason

# -- cheap rejection ---------------------------------------------------------------------------------------------------

REJECTED = [
    "9^{9^{9^{9}}}", "9^9^9^9", "10^{10^{10}}", "2^{3^{30}}", "x^{9^{9^{9}}}", "2^{-10^{10}}",
    "\\left(\\frac{1}{2}\\right)^{10^{10}}", "1000000!", "9^" * 500 + "9",
    "{" * 200 + "1" + "}" * 200, "\\frac{" * 150 + "1" + "}{2}" * 150, "1" * 5000,
]
# Real answers, some large: none may be rejected.
KEPT = [
    "5", "2^{2023}", "10^{100}", "2^{2^{2^{2}}}", "x^{x^{x}}", "2023!", "e^{i\\pi}", "1.5 \\times 10^{6}",
    "\\frac{1}{2}", "(1, 2]", "10^{10^{6}}", "3^{100} - 1", "(1 + x)^{2023}", "\\left(\\frac{1}{2}\\right)^{10}",
    "0^{0}", "1^{10^{100}}", "\\sqrt[3]{2}", "\\{(1, 2), (3, 4)\\}", "1" * 4000,
]


@pytest.mark.parametrize("answer", REJECTED)
def test_pathological_answers_are_rejected(answer):
    assert pathological_reason(answer) is not None


@pytest.mark.parametrize("answer", KEPT)
def test_real_answers_are_kept(answer):
    assert pathological_reason(answer) is None


def test_exponent_towers_cost_no_worker_time():
    """Issue: 16 different exponent towers took 40 s on 2 workers. They are now rejected in the parent."""
    towers = [f"\\boxed{{{b}^{{{b}^{{{b}^{{{e}}}}}}}}}" for b in (7, 8, 9, 10) for e in (6, 7, 8, 9)]
    assert len(set(towers)) == 16
    with MathGrader(num_workers=2, timeout_s=5.0) as g:
        results = g.grade(towers, ["5"] * 16)
        assert g.stats.worker_requests == 0 and g.stats.rejected == 16
    assert all(r.score == 0.0 and "rejected" in r.error for r in results)


# -- per-batch budget --------------------------------------------------------------------------------------------------

def test_batch_budget_bounds_a_batch_of_slow_answers():
    """16 slow answers (each would use its whole 1 s CPU limit) against a 3 CPU-second budget: the batch stops
    starting items once the budget is spent; what is left scores 0, counted as over-budget timeouts."""
    slow = [f"\\boxed{{({10**8 + k})!}}" for k in range(16)]
    responses = slow + ["\\boxed{\\frac{1}{2}}"]
    golds = ["5"] * 16 + ["0.5"]
    with MathGrader(num_workers=2, timeout_s=1.0, batch_budget_s_per_answer=0.01, batch_budget_min_s=3.0) as g:
        assert g.budget_s(17) == 3.0
        results = g.grade(responses, golds)
        stats = g.stats
        # The pool still works, and the next batch gets a fresh budget.
        assert g.grade(["\\boxed{1/3}"], ["\\frac{1}{3}"])[0].score == 1.0
    over = [r for r in results if r.over_budget]
    assert len(over) >= 10, [(r.timed_out, r.error) for r in results]
    assert all(r.score == 0.0 and r.timed_out and "budget" in r.error for r in over)
    assert stats.over_budget == len(over)
    assert stats.timeouts == sum(r.timed_out for r in results)
    # CPU spent: at most the budget plus what the requests in flight when it ran out could use (a request stops
    # after an item that timed out, or after one per-item limit of CPU, so at most two items' limits each).
    assert stats.worker_cpu_s <= 3.0 + 2 * (2 * 1.0 + HARD_CPU_LIMIT_EXTRA_S)
    # The one correct answer is graded (1) or was left over (0); which depends on the order the workers took them.
    assert results[-1].score == (0.0 if results[-1].over_budget else 1.0)


def test_no_budget_when_disabled():
    with MathGrader(num_workers=1, batch_budget_s_per_answer=0.0) as g:
        assert g.budget_s(10_000) == float("inf")


# -- verdicts independent of machine load --------------------------------------------------------------------------------

def _expanded(n: int, var: str) -> str:
    return " + ".join(f"{comb(n, k)}{var}^{{{k}}}" if k else "1" for k in range(n, -1, -1))


# Correct answers that each need about 0.1-0.2 s of CPU in math-verify (symbolic expansion).
SLOW_CORRECT = [(f"({v}+1)^{{{n}}}", _expanded(n, v)) for n, v in ((9, "x"), (10, "y"), (11, "z"), (12, "t"))]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity to create the load")
def test_verdict_does_not_flip_under_load():
    """Eight busy loops share the grading worker's CPU, so each answer takes several times its CPU time in wall
    time: longer than the per-item limit. With a wall-clock limit these correct answers would score 0; the limit
    counts CPU time, so they score 1."""
    cpu = min(os.sched_getaffinity(0))
    timeout_s = 0.6
    busy = []
    with MathGrader(num_workers=1, timeout_s=timeout_s, hung_worker_s=120.0) as g:
        g.parseable(["1"])  # the worker is up
        os.sched_setaffinity(g._workers[0].proc.pid, {cpu})
        try:
            for _ in range(8):
                p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                os.sched_setaffinity(p.pid, {cpu})
                busy.append(p)
            t0 = time.perf_counter()
            results = g.grade([f"\\boxed{{{pred}}}" for _, pred in SLOW_CORRECT], [gold for gold, _ in SLOW_CORRECT])
            wall = time.perf_counter() - t0
            cpu_used = g.stats.worker_cpu_s
        finally:
            for p in busy:
                p.kill()
                p.wait()
    assert [r.score for r in results] == [1.0] * len(SLOW_CORRECT), [(r.timed_out, r.error) for r in results]
    # The load was real: the items took longer in wall time than the per-item limit, though not in CPU time.
    assert wall / len(SLOW_CORRECT) > timeout_s, (wall, cpu_used)
    assert cpu_used / len(SLOW_CORRECT) < timeout_s


# -- cost per answer relative to math-verify --------------------------------------------------------------------------------

def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used, read from /proc (independent of what it reports)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pairs(offset: int, n: int) -> list[tuple[str, str]]:
    """Distinct (gold, answer) pairs in common answer shapes that go through math-verify (no integer fast path)."""
    out = []
    for i in range(offset, offset + n):
        kind = i % 4
        if kind == 0:
            out.append((f"\\frac{{{i + 1}}}{{{i + 13}}}", f"{i + 1}/{i + 13}"))
        elif kind == 1:
            out.append((f"{i + 2}\\sqrt{{{i + 3}}}", f"\\sqrt{{{(i + 2) ** 2 * (i + 3)}}}"))
        elif kind == 2:
            out.append((f"({i}, {i + 5}]", f"({i},{i + 5}]"))
        else:
            out.append((f"{i}.5", f"\\frac{{{2 * i + 1}}}{{2}}"))
    return out


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads worker CPU time from /proc")
def test_cost_per_answer_is_within_2x_of_math_verify():
    """CPU per answer of the whole pool (parent + worker: extraction, JSON, pipes, limits, parsing, verifying)
    against math-verify's own parse + verify of the same kind of answers in this process. A ratio of CPU times
    measured in one run, so that machine load does not decide it."""
    from math_verify import parse, verify

    logging.disable(logging.WARNING)
    n = 60
    warm, mine, theirs = _pairs(0, 20), _pairs(1000, n), _pairs(2000, n)
    try:
        for gold, pred in warm:  # warm up this process's parser as the worker warms up its own
            verify(parse(wrap_latex(gold)), parse(wrap_latex(pred)))
        t0 = time.process_time()
        verdicts = [verify(parse(wrap_latex(gold)), parse(wrap_latex(pred))) for gold, pred in theirs]
        math_verify_cpu = time.process_time() - t0
    finally:
        logging.disable(logging.NOTSET)
    assert all(verdicts)
    with MathGrader(num_workers=1, timeout_s=20.0) as g:
        g.grade([f"\\boxed{{{p}}}" for _, p in warm], [gd for gd, _ in warm])
        pid = g._workers[0].proc.pid
        w0, p0 = _proc_cpu_s(pid), time.process_time()
        results = g.grade([f"<think>work</think> So \\boxed{{{p}}}." for _, p in mine], [gd for gd, _ in mine])
        pool_cpu = (time.process_time() - p0) + (_proc_cpu_s(pid) - w0)
    assert all(r.score == 1.0 for r in results)
    ratio = pool_cpu / math_verify_cpu
    print(f"pool / math-verify CPU per answer: {ratio:.2f}")
    assert ratio < 2.0, (pool_cpu, math_verify_cpu)
