"""Math-verify accuracy grading in a pool of worker processes with a hard per-item time limit.

Why a home-made pool: math-verify's own timeouts use ``signal.alarm``, which only works in a process's main thread,
and a pathological answer (``9^{9^{9^9}}``, deep nesting) can spin in C code where no signal handler runs. The only
reliable limit is to kill the process; ``concurrent.futures`` cannot kill a hung worker and ``multiprocessing.Pool``
loses the task. Here the parent owns one pipe pair per worker, waits with ``poll`` until the earliest deadline, and
kills and replaces any worker that misses it. How workers are started (fork+exec, not fork) is explained in
``_worker.py``.

Each response's final answer is extracted in the parent (``extract.extract_answer``, bounded work); a response
without one scores 0 without a round trip. Identical (answer, gold) pairs in one batch are graded once: a GRPO group
often repeats the same answer.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from nemo_igrpo.rewards.extract import MAX_ANSWER_CHARS, extract_answer

# The parent kills a worker this long after the soft limit the worker enforces itself, to cover time spent in C code.
KILL_GRACE_S = 0.5
# A fresh worker must import math-verify and warm up within this time (generous: the machine may be oversubscribed).
START_TIMEOUT_S = 120.0
# After this many worker start failures in a row, the environment is broken (e.g. math-verify missing): raise.
MAX_START_FAILURES = 3


@dataclass
class GradeResult:
    """The verdict for one response. ``score`` is 1.0 or 0.0; ``error`` explains a 0 that is not a wrong answer."""

    score: float
    extracted: str | None
    timed_out: bool = False
    error: str | None = None


@dataclass
class GraderStats:
    """Counters since the grader was created (items are responses, not unique answers)."""

    items: int = 0
    timeouts: int = 0
    errors: int = 0
    worker_restarts: int = 0


class GraderError(RuntimeError):
    """The grading pool cannot work at all (workers fail to start)."""


class _Worker:
    """One worker process and its pipes; ``task`` is the unique-pair index it is grading, if any."""

    def __init__(self, timeout_s: float, memory_mb: int) -> None:
        env = dict(os.environ)
        # The worker must import this package even when it is used from a source tree that is not installed.
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nemo_igrpo.rewards._worker", repr(timeout_s), str(memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.task: int | None = None
        self.deadline = 0.0

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


class MathGrader:
    """Grades responses against gold answers with math-verify in ``num_workers`` processes.

    Every item gets at most ``timeout_s`` seconds (plus a short kill grace); a pathological item scores 0 and counts
    as a timeout, its worker is killed and replaced, and the batch goes on. Use as a context manager or call
    ``close()``; workers are also killed when the grader is garbage-collected or the interpreter exits.
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 4096,
                 max_answer_chars: int = MAX_ANSWER_CHARS) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.max_answer_chars = int(max_answer_chars)
        self.stats = GraderStats()
        self._lock = threading.Lock()
        self._closed = False
        self._procs: list[subprocess.Popen] = []  # shared with the finalizer, which must not reference self
        self._workers: list[_Worker] = [self._start() for _ in range(num_workers)]
        self._start_failures = 0
        self._finalizer = weakref.finalize(self, _kill_all, self._procs)

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

    # -- public API --------------------------------------------------------------------------------------------
    def grade(self, responses: Sequence[str], golds: Sequence[str]) -> list[GradeResult]:
        """Accuracy of each response (its last ``\\boxed{}``/``<answer>``) against its gold answer, 1.0 or 0.0."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        extracted = [extract_answer(r, self.max_answer_chars) if isinstance(r, str) else None for r in responses]
        pairs: dict[tuple[str, str], int] = {}
        item_pair: list[int | None] = []
        for ans, gold in zip(extracted, golds):
            if ans is None:
                item_pair.append(None)
            else:
                item_pair.append(pairs.setdefault((ans, str(gold)), len(pairs)))
        reqs = [{"op": "grade", "pred": a, "gold": g} for a, g in pairs]
        verdicts = self._run(reqs)
        results = []
        for ans, idx in zip(extracted, item_pair):
            if idx is None:
                results.append(GradeResult(0.0, None, False, "no final answer found"))
            else:
                v = verdicts[idx]
                results.append(GradeResult(v["score"], ans, v["timed_out"], v["error"]))
        self.stats.items += len(results)
        self.stats.timeouts += sum(r.timed_out for r in results)
        self.stats.errors += sum(r.error is not None and r.extracted is not None and not r.timed_out
                                 for r in results)
        return results

    def parseable(self, answers: Sequence[str]) -> list[bool]:
        """Whether each gold answer parses with math-verify into a math object (not just a string fallback)."""
        verdicts = self._run([{"op": "parseable", "gold": str(a)} for a in answers])
        return [v["score"] > 0 for v in verdicts]

    # -- scheduling --------------------------------------------------------------------------------------------
    def _run(self, reqs: list[dict]) -> list[dict]:
        """Send each request to an idle worker, collect replies, enforce deadlines. Returns one verdict per request."""
        with self._lock:
            if self._closed:
                raise GraderError("grader is closed")
            out: list[dict | None] = [None] * len(reqs)
            attempts = [0] * len(reqs)
            queue = deque(range(len(reqs)))
            remaining = len(reqs)
            while remaining:
                now = time.monotonic()
                for w in list(self._workers):
                    if w.task is None and queue and w.ready:
                        task = queue.popleft()
                        attempts[task] += 1
                        w.task, w.deadline = task, now + self.timeout_s + KILL_GRACE_S
                        if not w.send(reqs[task]):
                            remaining -= self._worker_died(w, reqs, out, attempts, queue)
                waits = [w.deadline - now for w in self._workers if w.task is not None]
                waits += [w.started + START_TIMEOUT_S - now for w in self._workers if not w.ready]
                poller = select.poll()
                by_fd = {}
                for w in self._workers:
                    if w.task is not None or not w.ready:
                        poller.register(w.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
                        by_fd[w.fd] = w
                timeout_ms = max(0, int(min(waits, default=0) * 1000) + 1)
                for fd, _ in poller.poll(timeout_ms):
                    w = by_fd[fd]
                    lines = w.read_lines()
                    if lines is None:
                        remaining -= self._worker_died(w, reqs, out, attempts, queue)
                        continue
                    for line in lines:
                        remaining -= self._on_reply(w, line, out)
                now = time.monotonic()
                for w in list(self._workers):
                    if w.task is not None and now > w.deadline:
                        out[w.task] = {"score": 0.0, "timed_out": True, "error": f"killed after {self.timeout_s}s"}
                        remaining -= 1
                        self._replace(w)
                    elif not w.ready and now > w.started + START_TIMEOUT_S:
                        self._start_failed(w)
            return out  # type: ignore[return-value]

    def _on_reply(self, w: _Worker, line: bytes, out: list) -> int:
        try:
            msg = json.loads(line)
        except ValueError:
            return 0  # not ours (cannot happen: fd 1 of the worker is stderr); ignore rather than crash
        if msg.get("ready"):
            w.ready = True
            self._start_failures = 0
            return 0
        if w.task is None:
            return 0
        out[w.task] = {"score": float(msg.get("score", 0.0)), "timed_out": bool(msg.get("timed_out")),
                       "error": msg.get("error")}
        w.task = None
        return 1

    def _worker_died(self, w: _Worker, reqs: list, out: list, attempts: list, queue: deque) -> int:
        """Replace a dead worker. Its task is retried once (the death may not be the item's fault); returns 1 if
        that task is now finished with a failure."""
        done = 0
        if not w.ready:
            self._start_failed(w)
            return 0
        task = w.task
        self._replace(w)
        if task is not None:
            if attempts[task] < 2:
                queue.appendleft(task)
            else:
                out[task] = {"score": 0.0, "timed_out": False, "error": "worker process died"}
                done = 1
        return done

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
