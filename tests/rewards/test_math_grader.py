import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from nemo_igrpo.rewards.math_grader import HARD_CPU_LIMIT_EXTRA_S, MathGrader, is_parseable_answer

TIMEOUT_S = 1.0

# (gold, final answer as the model writes it inside \boxed{}, expected verdict)
VERDICTS = [
    # integers, negatives, decimals vs fractions
    ("5", "5", 1), ("5", "6", 0), ("-3", "-3", 1), ("-3", "3", 0), ("10", "10.0", 1), ("10", "9.99", 0),
    ("0.25", "\\frac{1}{4}", 1), ("0.1", "\\frac{1}{10}", 1), ("0.3", "\\frac13", 0),
    ("-\\frac{1}{2}", "-0.5", 1), ("-\\frac{1}{2}", "0.5", 0),
    # fractions, latex vs plain
    ("\\frac{1}{2}", "0.5", 1), ("\\frac{1}{2}", "1/2", 1), ("\\frac12", "\\dfrac{1}{2}", 1),
    ("\\dfrac{1}{2}", "\\frac{2}{4}", 1), ("\\frac{1}{2}", "\\frac{1}{3}", 0), ("\\frac{3}{4}", "3/4", 1),
    ("\\dfrac{7}{3}", "2\\frac{1}{3}", 1), ("3.5", "3\\frac{1}{2}", 1),
    # radicals
    ("2\\sqrt{2}", "\\sqrt{8}", 1), ("3\\sqrt{2}", "\\sqrt{18}", 1), ("\\sqrt{2}", "1.414", 0),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", 1), ("\\frac{\\sqrt{3}}{2}", "0.866", 0),
    # pi expressions
    ("2\\pi", "2 \\pi", 1), ("\\frac{\\pi}{2}", "\\pi/2", 1), ("\\pi", "3", 0), ("2\\pi", "6.28", 0),
    ("\\pi r^2", "r^2\\pi", 1),
    # sets, tuples, intervals
    ("\\{1,2,3\\}", "\\{3,2,1\\}", 1), ("\\{1,2\\}", "\\{1,2,3\\}", 0), ("(1,2)", "(2,1)", 0),
    ("(1, 2]", "(1,2]", 1), ("(1, 2]", "[1,2]", 0), ("(1,2]", "(1,2)", 0), ("(-\\infty, 3)", "(-\\infty,3)", 1),
    # percent
    ("50\\%", "50", 1), ("50\\%", "50\\%", 1), ("50\\%", "40\\%", 0),
    # units
    ("5", "5 \\text{ cm}", 1), ("5 \\text{ cm}", "5", 1), ("5 \\text{ dollars}", "\\$5", 1), ("30^\\circ", "30", 1),
    # thousands separators
    ("1,000", "1000", 1), ("1000", "1,000", 1), ("1,000,000", "1000000", 1), ("12345", "12,345", 1),
    ("1,000", "1", 0), ("1,000", "10,000", 0),
    # equations / assignments
    ("$x = 5$", "5", 1), ("5", "x=5", 1), ("5", "x=6", 0), ("y = 2x+3", "2x+3", 1), ("x=5", "x=4", 0),
    # multiple choice letters
    ("C", "C", 1), ("C", "(C)", 1), ("C", "\\text{C}", 1), ("C", "\\text{(C)}", 1), ("D", "\\textbf{(D)}", 1),
    ("C", "D", 0), ("C", "A", 0),
    # expressions
    ("x^2+2x+1", "(x+1)^2", 1), ("10^{3}", "1000", 1), ("\\infty", "\\infty", 1),
]


@pytest.fixture(scope="module")
def grader():
    # Generous limit: verdicts must not flip to timeouts when the shared CPU is oversubscribed.
    with MathGrader(num_workers=2, timeout_s=20.0) as g:
        yield g


@pytest.fixture(scope="module")
def fast_grader():
    with MathGrader(num_workers=2, timeout_s=TIMEOUT_S) as g:
        yield g


def test_verdict_table(grader):
    assert len(VERDICTS) >= 40
    results = grader.grade([f"<think>...</think> \\boxed{{{a}}}" for _, a, _ in VERDICTS],
                           [g for g, _, _ in VERDICTS])
    wrong = [(g, a, want, r) for (g, a, want), r in zip(VERDICTS, results) if r.score != want]
    assert not wrong, wrong
    assert not any(r.timed_out for r in results)
    assert {r.score for r in results} == {0.0, 1.0}


def test_answer_tag_and_missing_answer(grader):
    r = grader.grade(["<answer>\\frac{1}{2}</answer>", "I think it is 5", "<answer>The answer is $7$.</answer>"],
                     ["0.5", "5", "7"])
    assert [x.score for x in r] == [1.0, 0.0, 1.0]
    assert r[1].extracted is None and r[1].error


PATHOLOGICAL = [
    "9^{9^{9^{9}}}",
    "9^9^9^9",
    "{" * 3000 + "1" + "}" * 3000,                         # deep nesting
    "\\frac{" * 400 + "1" + "}{2}" * 400,
    "(" * 2000 + "1" + ")" * 2000,
    "1" * 9000,                                            # a 9,000-digit number (beyond Python's int-str limit)
    "x^{x^{x^{x^{x^{x}}}}} + " * 300,
]
# Slow for math-verify, but nothing the cheap pre-check can tell from a real answer: each costs its CPU limit.
SLOW = [f"({10**8 + k})!" for k in range(4)]


def test_pathological_answers_are_bounded(fast_grader):
    """Each bad item costs at most about one per-item limit (or nothing, when the pre-check rejects it), scores 0,
    and the pool keeps working afterwards."""
    responses = [f"\\boxed{{{p}}}" for p in PATHOLOGICAL]
    responses += ["\\boxed{" + "7" * 20_000 + "}", "a" * 1_000_000 + "\\boxed{" + "x+" * 4000 + "1}"]
    golds = ["5"] * len(responses)
    rejected, cpu = fast_grader.stats.rejected, fast_grader.stats.worker_cpu_s
    results = fast_grader.grade(responses, golds)
    assert all(r.score == 0.0 for r in results)
    # The towers, the nesting and the huge number never reach math-verify.
    assert all("rejected" in r.error for r in results[:6]), [r.error for r in results]
    assert fast_grader.stats.rejected - rejected == 6
    # Whatever reached the workers cost at most its CPU limit each.
    sent = len(responses) - (fast_grader.stats.rejected - rejected)
    assert fast_grader.stats.worker_cpu_s - cpu <= sent * (TIMEOUT_S + HARD_CPU_LIMIT_EXTRA_S)
    ok = fast_grader.grade(["\\boxed{2}", "\\boxed{\\frac{1}{2}}"], ["2", "0.5"])
    assert [r.score for r in ok] == [1.0, 1.0]


def test_timeouts_are_counted(fast_grader):
    grader = fast_grader
    before = grader.stats.timeouts
    r = grader.grade([f"\\boxed{{{SLOW[0]}}}", f"\\boxed{{{SLOW[0]}}}", "\\boxed{3}"], ["5", "5", "3"])
    assert [x.timed_out for x in r] == [True, True, False]  # duplicates are graded once, counted per response
    assert "CPU time" in r[0].error
    assert grader.stats.timeouts - before == 2


def test_killed_worker_is_replaced(grader):
    restarts = grader.stats.worker_restarts
    os.kill(grader._workers[0].proc.pid, signal.SIGKILL)
    r = grader.grade([f"\\boxed{{{i}/7}}" for i in range(10)], [f"\\frac{{{i}}}{{7}}" for i in range(10)])
    assert all(x.score == 1.0 for x in r)
    assert grader.stats.worker_restarts > restarts


def test_hung_worker_is_killed_at_the_wall_clock_guard():
    """A worker that hangs without using CPU (simulated by SIGSTOP) is killed by the parent's wall-clock guard."""
    with MathGrader(num_workers=1, timeout_s=1.0, hung_worker_s=2.0) as g:
        assert g.grade(["\\boxed{1/2}"], ["0.5"])[0].score == 1.0  # wait until the worker is up
        os.kill(g._workers[0].proc.pid, signal.SIGSTOP)
        t0 = time.perf_counter()
        r = g.grade(["\\boxed{1/2}"], ["0.5"])[0]
        assert r.timed_out and r.score == 0.0 and "hung" in r.error
        assert time.perf_counter() - t0 < 2.0 + 1.0
        assert g.stats.worker_restarts == 1
        assert g.grade(["\\boxed{1/2}"], ["0.5"])[0].score == 1.0


def test_worker_ended_for_cpu_time_scores_a_timeout_without_retry():
    """When the kernel ends a worker for CPU time (SIGXCPU: the hard limit, for items stuck in C code where the soft
    limit cannot fire), the item is a timeout and is not retried on a fresh worker."""
    with MathGrader(num_workers=1, timeout_s=20.0, hung_worker_s=60.0) as g:
        g.parseable(["1"])
        pid = g._workers[0].proc.pid
        killer = threading.Timer(0.5, os.kill, (pid, signal.SIGXCPU))
        killer.start()
        try:
            r = g.grade([f"\\boxed{{{SLOW[1]}}}"], ["5"])[0]
        finally:
            killer.cancel()
        assert r.timed_out and r.score == 0.0 and "hard limit" in r.error
        assert g.stats.worker_requests == 2  # the parseable probe and this item: no retry
        assert g.grade(["\\boxed{1/2}"], ["0.5"])[0].score == 1.0


def test_hard_cpu_limit_ends_a_process_stuck_in_c_code():
    """The kernel-enforced limit the worker arms before each item ends a loop that runs in C (where no Python signal
    handler can run) after about the armed CPU time, with SIGXCPU."""
    code = ("from nemo_igrpo.rewards._worker import _arm_hard_cpu_limit; import resource; "
            "resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); _arm_hard_cpu_limit(1.0); sum(range(10**11))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGXCPU, proc.stderr.decode()[-500:]


def test_close_kills_workers():
    g = MathGrader(num_workers=1, timeout_s=1.0)
    proc = g._workers[0].proc
    g.close()
    assert proc.poll() is not None


@pytest.mark.parametrize("answer, ok", [
    ("5", True), ("\\frac{1}{2}", True), ("$x = 5$", True), ("(1, 2]", True), ("50\\%", True), ("1,000", True),
    ("C", True), ("", False), ("\\frac{" * 400 + "1" + "}{2}" * 400, False),
])
def test_is_parseable_answer(answer, ok):
    assert is_parseable_answer(answer) is ok


def test_integer_fast_path_agrees_with_math_verify(grader):
    """Two plain integers are compared in the parent; the verdict must be math-verify's own for the same pair."""
    pairs = [("7", "007"), ("0", "-0"), ("10", "010"), ("123456789012345", "123456789012345"),
             ("123456789012345", "123456789012346"), ("5", "-5"), ("100", "1000"), ("12", "21"), ("3", "\u0663")]
    before = grader.stats.fast_path
    fast = grader.grade([f"\\boxed{{{a}}}" for _, a in pairs], [g for g, _ in pairs])
    assert grader.stats.fast_path - before == len(pairs) - 1  # not the Arabic-Indic digit: math-verify decides it
    reference = grader._run([{"op": "grade", "pred": a, "gold": g} for g, a in pairs])
    assert [r.score for r in fast] == [v["score"] for v in reference]
    assert [r.score for r in fast][:5] == [1.0, 1.0, 1.0, 1.0, 0.0]


def _expanded(n, rotate, wrong_at=None):
    """(x+1)^n written out, terms rotated by ``rotate`` (distinct strings); with ``wrong_at`` one coefficient is off
    by one (a wrong answer)."""
    from math import comb
    terms = [f"{comb(n, k) + (k == wrong_at)}x^{{{k}}}" if k else "1" for k in range(n, -1, -1)]
    return " + ".join(terms[rotate:] + terms[:rotate])


# One gold, distinct answers that each take math-verify ~0.1-0.2 s of CPU (symbolic expansion), right and wrong.
SAME_GOLD = [pair for r in range(8) for pair in ((_expanded(9, r), 1.0), (_expanded(9, r, wrong_at=r + 1), 0.0))]


def test_items_of_a_dead_several_item_request_are_retried_alone():
    """Items of one gold go to a worker several at a time; if that worker dies, which item was running is unknown,
    so every item of the request is graded again alone, and every verdict is still right."""
    with MathGrader(num_workers=1, timeout_s=20.0) as g:
        g.parseable(["1"])
        killer = threading.Timer(0.4, lambda: os.kill(g._workers[0].proc.pid, signal.SIGKILL))
        killer.start()
        try:
            r = g.grade([f"\\boxed{{{a}}}" for a, _ in SAME_GOLD], ["(x+1)^{9}"] * len(SAME_GOLD))
        finally:
            killer.cancel()
        assert [x.score for x in r] == [want for _, want in SAME_GOLD], [(x.score, x.error) for x in r]
        assert g.stats.worker_restarts == 1
        assert len({a for a, _ in SAME_GOLD}) == len(SAME_GOLD)
        assert g.stats.worker_requests > len(SAME_GOLD) + 1  # some items were sent twice


def test_several_item_request_stops_at_its_cpu_cap():
    """The worker answers a several-item request for a prefix once the prefix has used ``cap_s`` CPU seconds."""
    proc = subprocess.Popen([sys.executable, "-m", "nemo_igrpo.rewards._worker", "5.0", "0", "0.5"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert json.loads(proc.stdout.readline()) == {"ready": True}
        reqs = [{"op": "grade", "pred": a, "gold": "(x+1)^{9}"} for a, _ in SAME_GOLD[:4]]
        for cap, n in ((0.0, 1), (1e9, 4)):
            proc.stdin.write((json.dumps({"op": "batch", "reqs": reqs, "cap_s": cap}) + "\n").encode())
            proc.stdin.flush()
            replies = json.loads(proc.stdout.readline())["replies"]
            assert [r["score"] for r in replies] == [want for _, want in SAME_GOLD[:n]]
    finally:
        proc.kill()
        proc.wait()


def test_unrun_items_of_a_capped_request_are_sent_again():
    with MathGrader(num_workers=1, timeout_s=20.0) as g:
        g.parseable(["1"])
        g.timeout_s = 1e-9  # the request cap (not the workers' own limit): every request returns after one item
        r = g.grade([f"\\boxed{{{a}}}" for a, _ in SAME_GOLD], ["(x+1)^{9}"] * len(SAME_GOLD))
        assert [x.score for x in r] == [want for _, want in SAME_GOLD], [(x.score, x.error) for x in r]
        assert g.stats.worker_requests > 2 * len(SAME_GOLD)
