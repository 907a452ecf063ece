"""Math-verify accuracy grading in a pool of worker processes with hard per-item limits and a per-batch budget.

Why a home-made pool: math-verify's own timeouts use ``signal.alarm``, which only works in a process's main thread,
and a pathological answer (``9^{9^{9^9}}``, deep nesting) can spin in C code where no signal handler runs. The only
reliable limit is one the kernel enforces on a process of its own; ``concurrent.futures`` cannot kill a hung worker
and ``multiprocessing.Pool`` loses the task. Here the parent owns one pipe pair per worker, waits with ``poll``,
and replaces any worker that dies or hangs. How workers are started (fork+exec, not fork) and how their CPU-time
limits work is explained in ``_worker.py``.

What happens to one response, cheapest first (all in the parent unless said otherwise):
  1. ``boxed`` extraction (``extract.extract_answer``, bounded work): the last run of boxes or ``<answer>`` tag. No
     answer: 0 without a round trip. ``full`` extraction skips this: the worker hands the whole response to
     math-verify, which finds the final answer itself (LaTeX and plain expressions), as its own test suite does.
  2. The gold is reduced the same way when it is a whole solution (``extract.reduce_gold``).
  3. Obviously pathological answers and golds (``precheck.pathological_reason``: exponent towers of numbers, huge
     factorials, thousands of nested brackets) score 0 without reaching math-verify, counted in ``stats.rejected``.
  4. Two plain integers are compared exactly here (math-verify's verdict for them, without its ~1 ms parse each).
  5. Identical (answer, gold) pairs are graded once; the rest go to the workers. Items that share a gold go to the
     same worker where possible, so that each worker parses a gold once (it caches parsed golds) instead of every
     worker parsing every gold of a GRPO group; up to ``MAX_ITEMS_PER_REQUEST`` of them travel in one request, so
     that one round trip (and one wake-up of this process, which costs the worker about 1.5 ms of CPU on a busy
     virtual machine) serves several items. Each item keeps its own limits inside the request.

Limits, none of which depends on how loaded the machine is (a verdict must not flip because other jobs share the
cores): each item may use ``timeout_s`` CPU seconds (soft, in the worker) and a little more (hard, the kernel kills
the worker); the whole batch may use ``batch_budget_s_per_answer`` CPU seconds per answer sent to the workers (at
least ``batch_budget_min_s``): once it is spent no new item starts, and the items left score 0 and are counted as
``over_budget`` (requests in flight finish: at most about two per-item limits each). A wall-clock limit (``hung_worker_s``) is kept only
as the last guard against a worker that is hung without using CPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from nemo_igrpo.rewards.extract import MAX_ANSWER_CHARS, extract_answer, reduce_gold
from nemo_igrpo.rewards.precheck import pathological_reason

if TYPE_CHECKING:
    from nemo_igrpo.rewards.config import RewardConfig

EXTRACTION_MODES = ("boxed", "full")
# CPU seconds past the soft per-item limit after which the kernel ends the worker (its hard limit, see _worker.py).
HARD_CPU_GRACE_S = 0.5
# Default wall-clock guard against a hung worker: this many per-item limits, and at least this many seconds (so that
# an item that meets its CPU limit on a machine loaded ten times over is never killed by the wall clock).
HUNG_WORKER_TIMEOUTS = 10
HUNG_WORKER_MIN_S = 60.0
# Most CPU seconds an item can use before the kernel ends its worker (the soft limit, the grace, the kernel's 1 s
# rounding); an item whose worker was killed is charged this much against the batch budget.
HARD_CPU_LIMIT_EXTRA_S = HARD_CPU_GRACE_S + 1.0
# Most items of one gold sent in one request (one round trip; a worker's reply wakes this process once for all).
MAX_ITEMS_PER_REQUEST = 8
# Plain integers (no sign but "-", no separators, at most 15 ASCII digits: int() also reads other scripts):
# math-verify's verdict for two of them is exact integer equality, which the parent computes without a round trip.
_PLAIN_INT = re.compile(r"-?[0-9]{1,15}")
# A fresh worker must import math-verify and warm up within this time (generous: the machine may be oversubscribed).
START_TIMEOUT_S = 120.0
# After this many worker start failures in a row, the environment is broken (e.g. math-verify missing): raise.
MAX_START_FAILURES = 3


@dataclass
class GradeResult:
    """The verdict for one response. ``score`` is 1.0 or 0.0; ``error`` explains a 0 that is not a wrong answer.
    ``timed_out``: the item was not graded within a limit (its own CPU limit, the hung-worker guard, or the batch
    budget, in which case ``over_budget`` is set too)."""

    score: float
    extracted: str | None
    timed_out: bool = False
    error: str | None = None
    over_budget: bool = False


@dataclass
class GraderStats:
    """Counters since the grader was created (items are responses, not unique answers)."""

    items: int = 0
    timeouts: int = 0  # all timed-out items, over_budget included
    errors: int = 0
    worker_restarts: int = 0
    rejected: int = 0  # pathological answers or golds scored 0 before math-verify
    over_budget: int = 0  # items left ungraded because the batch budget was spent
    fast_path: int = 0  # pairs of plain integers compared in the parent
    worker_requests: int = 0  # items sent to workers (unique pairs), items sent again included
    worker_cpu_s: float = 0.0  # CPU seconds the workers reported for those requests


class GraderError(RuntimeError):
    """The grading pool cannot work at all (workers fail to start)."""


class _Worker:
    """One worker process and its pipes; ``tasks`` are the unique-pair indices it is grading (one request)."""

    def __init__(self, timeout_s: float, memory_mb: int) -> None:
        env = dict(os.environ)
        # The worker must import this package even when it is used from a source tree that is not installed.
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nemo_igrpo.rewards._worker", repr(timeout_s), str(memory_mb),
             repr(HARD_CPU_GRACE_S)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.tasks: list[int] = []
        self.deadline = 0.0
        self.gold: str | None = None  # the gold of its last request: parsed and cached in the worker

    def send(self, req: dict) -> bool:
        """Write one request; False if the worker is gone."""
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def read_lines(self) -> list[bytes] | None:
        """Complete reply lines available now; None at end of file (the worker died)."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except OSError:
            return None
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return lines

    def kill(self) -> None:
        """Kill the process and reap it (a zombie would hold its pid and pipes)."""
        _kill(self.proc)

    def exit_signal(self) -> int | None:
        """The signal that ended the process (after its reply pipe reached end of file), if any."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        return -code if code is not None and code < 0 else None


class _Queue:
    """Pending request indices grouped by gold, golds in first-seen order. A worker keeps taking requests of the gold
    it has (parsed and cached); a worker without one starts the first gold no other worker has, and only when every
    pending gold is taken does it share one."""

    def __init__(self, golds: Sequence[str]) -> None:
        self.by_gold: dict[str, deque[int]] = {}
        for i, gold in enumerate(golds):
            self.by_gold.setdefault(gold, deque()).append(i)
        self.size = len(golds)

    def pop_for(self, w: _Worker, taken: set[str]) -> int:
        pending = self.by_gold.get(w.gold) if w.gold is not None else None
        if not pending:
            untaken = [g for g in self.by_gold if g not in taken][:1]
            w.gold = untaken[0] if untaken else next(iter(self.by_gold))
            pending = self.by_gold[w.gold]
        task = pending.popleft()
        if not pending:
            del self.by_gold[w.gold]
        self.size -= 1
        return task

    def peek_same(self, w: _Worker) -> int | None:
        """The next pending request of the worker's gold, without taking it."""
        pending = self.by_gold.get(w.gold) if w.gold is not None else None
        return pending[0] if pending else None

    def push_front(self, task: int, gold: str) -> None:
        if gold in self.by_gold:
            self.by_gold[gold].appendleft(task)
        else:
            self.by_gold = {gold: deque([task]), **self.by_gold}
        self.size += 1

    def drain(self) -> list[int]:
        tasks = [t for q in self.by_gold.values() for t in q]
        self.by_gold, self.size = {}, 0
        return tasks


def _kill(proc: subprocess.Popen) -> None:
    try:
        proc.kill()
    except OSError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except (OSError, AttributeError):
            pass


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        _kill(proc)


class _Batch:
    """The state of one ``_run``: requests, verdicts, the queue, retry bookkeeping and the CPU budget."""

    def __init__(self, reqs: list[dict], budget: float) -> None:
        self.reqs = reqs
        self.budget = budget
        self.out: list[dict | None] = [None] * len(reqs)
        self.attempts = [0] * len(reqs)  # times sent as a one-item request
        self.solo = [False] * len(reqs)  # once in a several-item request whose worker died: sent alone from then on
        self.queue = _Queue([r["gold"] for r in reqs])
        self.remaining = len(reqs)

    def finish(self, task: int, verdict: dict) -> None:
        self.out[task] = verdict
        self.remaining -= 1

    def retry_alone(self, tasks: list[int]) -> None:
        for task in reversed(tasks):
            self.solo[task] = True
            self.queue.push_front(task, self.reqs[task]["gold"])

    def leave_over(self) -> None:
        """The batch budget is spent: every request not started scores 0, counted as over budget."""
        for task in self.queue.drain():
            self.finish(task, {"score": 0.0, "timed_out": True, "over_budget": True,
                               "error": f"batch grading budget of {self.budget:.1f} CPU s spent"})


def limits_problem(*, num_workers: int, timeout_s: float, extraction: str, batch_budget_s_per_answer: float,
                   batch_budget_min_s: float, hung_worker_s: float | None) -> tuple[str, str] | None:
    """The first of ``MathGrader``'s arguments that cannot work, as (argument name, why), or None. The grader and
    config validation (``AccuracyReward.check_config``, which names the ``reward.*`` keys) both ask this."""
    if num_workers < 1:
        return "num_workers", f"must be >= 1, got {num_workers}"
    if not timeout_s > 0:
        return "timeout_s", f"must be > 0, got {timeout_s}"
    if extraction not in EXTRACTION_MODES:
        return "extraction", f"must be one of {list(EXTRACTION_MODES)}, got {extraction!r}"
    if batch_budget_s_per_answer < 0:
        return "batch_budget_s_per_answer", f"must be >= 0, got {batch_budget_s_per_answer}"
    if batch_budget_min_s < 0:
        return "batch_budget_min_s", f"must be >= 0, got {batch_budget_min_s}"
    if hung_worker_s is not None and not hung_worker_s > timeout_s:
        return "hung_worker_s", f"must be > the per-item limit timeout_s ({timeout_s}), got {hung_worker_s}"
    return None


class MathGrader:
    """Grades responses against gold answers with math-verify in ``num_workers`` processes.

    ``extraction``: ``"boxed"`` grades the last run of ``\\boxed{}`` (or the last ``<answer>`` tag) and scores a
    response without one 0; ``"full"`` lets math-verify extract the final answer from the whole response. Limits
    (module docstring): ``timeout_s`` CPU seconds per item, ``batch_budget_s_per_answer`` (0: no budget) and
    ``batch_budget_min_s`` CPU seconds per ``grade`` call, ``hung_worker_s`` wall seconds for a worker that does not
    answer (None: the larger of ``HUNG_WORKER_MIN_S`` and ``HUNG_WORKER_TIMEOUTS`` per-item limits). A pathological item scores 0 and counts as a timeout or a rejection; the batch goes on. Use as a
    context manager or call ``close()``; workers are also killed when the grader is garbage-collected or the
    interpreter exits.
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 4096,
                 max_answer_chars: int = MAX_ANSWER_CHARS, extraction: str = "boxed",
                 batch_budget_s_per_answer: float = 0.25, batch_budget_min_s: float = 30.0,
                 hung_worker_s: float | None = None) -> None:
        problem = limits_problem(num_workers=num_workers, timeout_s=timeout_s, extraction=extraction,
                                 batch_budget_s_per_answer=batch_budget_s_per_answer,
                                 batch_budget_min_s=batch_budget_min_s, hung_worker_s=hung_worker_s)
        if problem:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        if hung_worker_s is None:
            hung_worker_s = max(HUNG_WORKER_MIN_S, HUNG_WORKER_TIMEOUTS * timeout_s)
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.max_answer_chars = int(max_answer_chars)
        self.extraction = extraction
        self.batch_budget_s_per_answer = float(batch_budget_s_per_answer)
        self.batch_budget_min_s = float(batch_budget_min_s)
        self.hung_worker_s = float(hung_worker_s)
        self.stats = GraderStats()
        self._spent = 0.0  # CPU seconds the current batch has used
        self._lock = threading.Lock()
        self._closed = False
        self._procs: list[subprocess.Popen] = []  # shared with the finalizer, which must not reference self
        self._workers: list[_Worker] = [self._start() for _ in range(num_workers)]
        self._start_failures = 0
        self._finalizer = weakref.finalize(self, _kill_all, self._procs)

    @classmethod
    def from_config(cls, cfg: "RewardConfig") -> "MathGrader":
        """The grader a ``RewardConfig`` describes (its worker fields and its ``grading`` section)."""
        g = cfg.grading
        return cls(num_workers=cfg.num_workers, timeout_s=cfg.timeout_s, memory_mb=cfg.worker_memory_mb,
                   extraction=g.extraction, batch_budget_s_per_answer=g.batch_budget_s_per_answer,
                   batch_budget_min_s=g.batch_budget_min_s, hung_worker_s=g.hung_worker_s)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _start(self) -> _Worker:
        w = _Worker(self.timeout_s, self.memory_mb)
        self._procs.append(w.proc)
        return w

    def _replace(self, w: _Worker) -> _Worker:
        w.kill()
        if w.proc in self._procs:
            self._procs.remove(w.proc)
        self.stats.worker_restarts += 1
        new = self._start()
        self._workers[self._workers.index(w)] = new
        return new

    def close(self) -> None:
        """Kill all workers. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "MathGrader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def budget_s(self, num_requests: int) -> float:
        """The CPU-second budget of a batch that sends ``num_requests`` requests to the workers."""
        if self.batch_budget_s_per_answer <= 0:
            return math.inf
        return max(self.batch_budget_min_s, self.batch_budget_s_per_answer * num_requests)

    # -- public API --------------------------------------------------------------------------------------------
    def grade(self, responses: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
        """Accuracy of each response against its gold answer, 1.0 or 0.0 (see the module docstring)."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        full = self.extraction == "full"
        reduced: dict[str, tuple[str, str | None]] = {}  # gold as given -> (reduced gold, rejection reason)
        results: list[GradeResult | None] = [None] * len(responses)
        pairs: dict[tuple[str, str], int] = {}
        item_pair: list[int | None] = [None] * len(responses)
        extracted: list[str | None] = [None] * len(responses)
        for i, (response, raw_gold) in enumerate(zip(responses, golds)):
            key = str(raw_gold)
            if key not in reduced:
                gold = reduce_gold(key, self.max_answer_chars)
                reduced[key] = (gold, pathological_reason(gold))
            gold, gold_rejected = reduced[key]
            if not isinstance(response, str):
                results[i] = GradeResult(0.0, None, False, "no final answer found")
                continue
            if full:
                answer, reason = response, None
            else:
                answer = extract_answer(response, self.max_answer_chars)
                extracted[i] = answer
                if answer is None:
                    results[i] = GradeResult(0.0, None, False, "no final answer found")
                    continue
                reason = pathological_reason(answer)
            if gold_rejected is not None or reason is not None:
                what = f"gold answer rejected: {gold_rejected}" if gold_rejected else f"answer rejected: {reason}"
                results[i] = GradeResult(0.0, extracted[i], False, what)
                self.stats.rejected += 1
                continue
            if not full and _PLAIN_INT.fullmatch(answer) and _PLAIN_INT.fullmatch(gold):
                results[i] = GradeResult(float(int(answer) == int(gold)), answer)
                self.stats.fast_path += 1
                continue
            item_pair[i] = pairs.setdefault((answer, gold), len(pairs))
        reqs = [{"op": "grade", "pred": a, "gold": g, **({"full": True} if full else {})} for a, g in pairs]
        verdicts = self._run(reqs)
        for i, idx in enumerate(item_pair):
            if idx is None:
                continue
            v = verdicts[idx]
            answer = v.get("extracted") if full else extracted[i]
            results[i] = GradeResult(v["score"], answer, v["timed_out"], v["error"], v.get("over_budget", False))
            # A parser failure or a dead worker: a 0 that is neither a wrong answer nor a timeout.
            self.stats.errors += v["error"] is not None and not v["timed_out"]
        done: list[GradeResult] = results  # type: ignore[assignment]
        self.stats.items += len(done)
        self.stats.timeouts += sum(r.timed_out for r in done)
        self.stats.over_budget += sum(r.over_budget for r in done)
        return done

    def parseable(self, answers: Sequence[str]) -> list[bool]:
        """Whether each gold answer (reduced like a gold: a whole solution to its final answer) parses with
        math-verify into a math object (not just a string fallback); a pathological answer is not parseable."""
        golds = [reduce_gold(str(a), self.max_answer_chars) for a in answers]
        ok = [pathological_reason(g) is None for g in golds]
        todo = [i for i, good in enumerate(ok) if good]
        verdicts = self._run([{"op": "parseable", "gold": golds[i]} for i in todo])
        for i, v in zip(todo, verdicts):
            ok[i] = v["score"] > 0
        return ok

    # -- scheduling --------------------------------------------------------------------------------------------
    def _run(self, reqs: list[dict]) -> list[dict]:
        """Send the requests to the workers, collect replies, enforce the limits. Returns one verdict per request."""
        with self._lock:
            if self._closed:
                raise GraderError("grader is closed")
            run = _Batch(reqs, self.budget_s(len(reqs)))
            self._spent = 0.0
            while run.remaining:
                now = time.monotonic()
                if run.queue.size and self._spent >= run.budget:
                    run.leave_over()
                    if not run.remaining:
                        break
                for w in list(self._workers):
                    if not w.tasks and run.queue.size and w.ready:
                        self._dispatch(w, run, now)
                waits = [w.deadline - now for w in self._workers if w.tasks]
                waits += [w.started + START_TIMEOUT_S - now for w in self._workers if not w.ready]
                poller = select.poll()
                by_fd = {}
                for w in self._workers:
                    if w.tasks or not w.ready:
                        poller.register(w.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
                        by_fd[w.fd] = w
                timeout_ms = max(0, int(min(waits, default=0) * 1000) + 1)
                for fd, _ in poller.poll(timeout_ms):
                    w = by_fd[fd]
                    lines = w.read_lines()
                    if lines is None:
                        self._worker_died(w, run)
                        continue
                    for line in lines:
                        self._on_reply(w, line, run)
                now = time.monotonic()
                for w in list(self._workers):
                    if w.tasks and now > w.deadline:
                        self._worker_hung(w, run)
                    elif not w.ready and now > w.started + START_TIMEOUT_S:
                        self._start_failed(w)
            return run.out  # type: ignore[return-value]

    def _dispatch(self, w: _Worker, run: "_Batch", now: float) -> None:
        """Give an idle worker its next request: one item, or several of the gold it holds (one round trip, one
        wake-up of this process for all of them). Items once in a request whose worker died go alone."""
        taken = {o.gold for o in self._workers if o is not w and o.gold is not None}
        tasks = [run.queue.pop_for(w, taken)]
        if not run.solo[tasks[0]]:
            # Small enough that the workers stay evenly loaded to the end of the batch.
            size = max(1, min(MAX_ITEMS_PER_REQUEST, run.queue.size // (2 * self.num_workers)))
            while len(tasks) < size and (nxt := run.queue.peek_same(w)) is not None and not run.solo[nxt]:
                tasks.append(run.queue.pop_for(w, taken))
        if len(tasks) == 1:
            run.attempts[tasks[0]] += 1
        w.tasks = tasks
        w.deadline = now + self.hung_worker_s * min(len(tasks), 2)
        self.stats.worker_requests += len(tasks)
        if len(tasks) == 1:
            msg = run.reqs[tasks[0]]
        else:
            # The worker returns the rest unrun once the request has used one per-item limit of CPU (or what is left
            # of the batch budget, if less) or an item timed out: a request in flight when the budget runs out costs
            # at most about two items' limits.
            cap = max(0.0, min(self.timeout_s, run.budget - self._spent))
            msg = {"op": "batch", "reqs": [run.reqs[t] for t in tasks], "cap_s": cap}
        if not w.send(msg):
            self._worker_died(w, run)

    def _on_reply(self, w: _Worker, line: bytes, run: "_Batch") -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            return  # not ours (cannot happen: fd 1 of the worker is stderr); ignore rather than crash
        if msg.get("ready"):
            w.ready = True
            self._start_failures = 0
            return
        if not w.tasks:
            return
        replies = msg["replies"] if "replies" in msg else [msg]
        for task, rep in zip(w.tasks, replies):
            cpu = float(rep.get("cpu", 0.0))
            self._spent += cpu
            self.stats.worker_cpu_s += cpu
            run.finish(task, {"score": float(rep.get("score", 0.0)), "timed_out": bool(rep.get("timed_out")),
                              "error": rep.get("error"), "extracted": rep.get("extracted")})
        for task in reversed(w.tasks[len(replies):]):  # not run: the request's CPU cap was reached
            run.queue.push_front(task, run.reqs[task]["gold"])
        w.tasks = []

    def _worker_died(self, w: _Worker, run: "_Batch") -> None:
        """Replace a dead worker. A worker the kernel ended for CPU time (SIGXCPU) failed its item's hard limit: the
        item is a timeout. After any other death the item is retried once (the death may not be the item's fault).
        Items of a several-item request are all retried alone, since which of them was running is not known."""
        if not w.ready:
            self._start_failed(w)
            return
        tasks, w.tasks = w.tasks, []
        sig = w.exit_signal()
        self._replace(w)
        if len(tasks) > 1:
            run.retry_alone(tasks)
        elif tasks:
            task = tasks[0]
            if sig == signal.SIGXCPU:
                self._spent += self.timeout_s + HARD_CPU_LIMIT_EXTRA_S
                run.finish(task, {"score": 0.0, "timed_out": True,
                                  "error": f"worker killed over {self.timeout_s:g} s of CPU time (hard limit)"})
            elif run.attempts[task] < 2:
                run.retry_alone([task])
            else:
                run.finish(task, {"score": 0.0, "timed_out": False, "error": "worker process died"})

    def _worker_hung(self, w: _Worker, run: "_Batch") -> None:
        """A worker that has not answered within the wall-clock guard is replaced; a single item scores 0, the items
        of a several-item request are retried alone."""
        tasks, w.tasks = w.tasks, []
        self._replace(w)
        if len(tasks) > 1:
            run.retry_alone(tasks)
            return
        self._spent += self.timeout_s
        run.finish(tasks[0], {"score": 0.0, "timed_out": True,
                              "error": f"worker hung: no reply after {self.hung_worker_s:g} s (wall clock)"})

    def _start_failed(self, w: _Worker) -> None:
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES:
            self.close()
            raise GraderError(f"{self._start_failures} grading workers in a row failed to start "
                              f"({sys.executable} -m nemo_igrpo.rewards._worker); is math-verify installed?")
        self._replace(w)


_default: MathGrader | None = None
_default_lock = threading.Lock()


def is_parseable_answer(answer: str, timeout_s: float = 5.0) -> bool:
    """True if a gold answer parses with math-verify into a math object, so that responses can be graded against it.
    Uses a shared single-worker grader (started on first use, closed at exit); pathological input returns False."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = MathGrader(num_workers=1, timeout_s=timeout_s)
        return _default.parseable([answer])[0]
