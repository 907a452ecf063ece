"""Grading worker process: ``python -m nemo_igrpo.rewards._worker TIMEOUT_S MEMORY_MB HARD_GRACE_S``.

Started by ``math_grader.MathGrader`` with fork+exec (``subprocess``), never with ``fork()`` of the trainer: the
trainer has torch/gloo threads, and a forked copy of a threaded process can deadlock on a lock held by a thread that
does not exist in the child. Exec'ing a fresh interpreter also means the worker imports only math-verify, not the
caller's ``__main__`` (which multiprocessing's spawn/forkserver would re-import, torch and all).

Protocol: one JSON object per line on stdin, one JSON reply per line on the private reply fd (the original stdout;
fd 1 itself is pointed at stderr so that a stray ``print`` in a library cannot corrupt the stream).
  request  {"op": "grade", "pred": str, "gold": str}           -> {"score": 0.0|1.0, "timed_out": bool, "error": str|null,
                                                                   "cpu": seconds}
  request  {"op": "grade", "pred": str, "gold": str, "full": true}: ``pred`` is a whole response and math-verify
           extracts its final answer itself; the reply also has "extracted" (the text it found, or null)
  request  {"op": "parseable", "gold": str}                    -> {"score": 1.0 if parseable else 0.0, ...}
  request  {"op": "batch", "reqs": [request, ...], "cap_s": s} -> {"replies": [reply, ...]}: the requests in order,
           each under its own limits, stopping once they have used ``cap_s`` CPU seconds together or one has timed
           out (the replies then cover a prefix; the parent sends the rest again). One reply line per request line.
The first line written is {"ready": true}, after imports and a warm-up grade, so that the parent's limits never pay
for interpreter start-up.

Time limits count this process's CPU time, not wall-clock time, so that a verdict does not depend on how loaded the
machine is: an answer that needs 0.3 s of CPU gets it whether that takes 0.3 s or 3 s of wall time.
  - soft: ``setitimer(ITIMER_PROF, timeout_s)`` raises an exception (a BaseException, which math-verify's
    ``except Exception`` blocks cannot swallow) once the item has used ``timeout_s`` CPU seconds; the worker survives.
  - hard: before each item, ``RLIMIT_CPU``'s soft limit is moved to ``HARD_GRACE_S`` CPU seconds (rounded up to the
    kernel's 1 s granularity) past the soft limit. The kernel then terminates the process with SIGXCPU even when it is stuck
    in C code (a huge integer power) where no Python signal handler can run; the parent sees the signal and scores the
    item as timed out.
The parent keeps a wall-clock limit only as the last guard against a worker that is hung without using CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import sys
import threading
import time
from collections import OrderedDict


class _Expired(BaseException):
    """Raised by the soft-timeout alarm. BaseException so that ``except Exception`` in math-verify/sympy lets it pass."""


def _on_alarm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise _Expired()


def _arm_hard_cpu_limit(limit_s: float) -> None:
    """Move RLIMIT_CPU's soft limit ``limit_s`` CPU seconds ahead (whole seconds of total process CPU time)."""
    used = time.process_time()
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(math.ceil(used + limit_s))
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def wrap_latex(s: str) -> str:
    """Math-verify's LaTeX extractor needs math delimiters; a bare answer like ``50\\%`` or ``(1, 2]`` is wrapped in
    ``$...$`` (measured: without it, percents, intervals, sets, radicals and letters fail to parse)."""
    if "$" in s.replace("\\$", "") or "\\(" in s or "\\[" in s:
        return s
    return f"${s}$"


class _Grader:
    def __init__(self) -> None:
        from math_verify import parse, verify  # the only heavy import of the worker
        from sympy import Basic, MatrixBase

        self._parse, self._verify = parse, verify
        self._sympy_types = (Basic, MatrixBase)
        # In GRPO a gold answer is graded against every response of its group: parse it once.
        self._gold_cache: OrderedDict[str, list] = OrderedDict()

    def parse(self, s: str) -> list:
        # Timeouts are ours (see module docstring); math-verify's own signal.alarm would cancel our timer.
        return self._parse(wrap_latex(s), parsing_timeout=None)

    def gold(self, gold: str) -> list:
        hit = self._gold_cache.get(gold)
        if hit is None:
            hit = self.parse(gold)
            self._gold_cache[gold] = hit
            if len(self._gold_cache) > 4096:
                self._gold_cache.popitem(last=False)
        return hit

    def parseable(self, gold: str) -> bool:
        parsed = self.gold(gold)
        return bool(parsed) and isinstance(parsed[0], self._sympy_types)

    def grade(self, pred: str, gold: str, full: bool = False) -> tuple[float, str | None]:
        """(score, the answer text math-verify found in ``pred`` when ``full``, else None)."""
        g = self.gold(gold)
        if not g:
            raise ValueError("gold answer does not parse")
        if full:
            # math-verify's own extraction from the whole response: no wrapping, its default extraction targets.
            p = self._parse(pred, parsing_timeout=None)
            found = next((x for x in reversed(p) if isinstance(x, str)), None) if p else None
        else:
            p, found = self.parse(pred), None
        if not p:
            return 0.0, found
        return (1.0 if self._verify(g, p, timeout_seconds=None) else 0.0), found


def _handle(grader: _Grader, req: dict, timeout_s: float, hard_grace_s: float) -> dict:
    start = time.process_time()
    _arm_hard_cpu_limit(timeout_s + hard_grace_s)
    signal.setitimer(signal.ITIMER_PROF, timeout_s)
    found = None
    try:
        if req.get("op") == "parseable":
            score = 1.0 if grader.parseable(req["gold"]) else 0.0
        else:
            score, found = grader.grade(req["pred"], req["gold"], bool(req.get("full")))
        reply = {"score": score, "timed_out": False, "error": None}
    except _Expired:
        reply = {"score": 0.0, "timed_out": True, "error": f"over {timeout_s:g} s of CPU time"}
    except RecursionError:
        reply = {"score": 0.0, "timed_out": False, "error": "recursion limit (deeply nested answer)"}
    except MemoryError:
        reply = {"score": 0.0, "timed_out": False, "error": "memory limit"}
    except Exception as err:  # noqa: BLE001 - any parser failure is a wrong answer, never a dead worker
        reply = {"score": 0.0, "timed_out": False, "error": f"{type(err).__name__}: {str(err)[:200]}"}
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    reply["cpu"] = time.process_time() - start
    if req.get("full"):
        reply["extracted"] = found
    return reply


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """End this worker once its parent is gone. Stdin's end of file is not enough: a process the parent forked later
    (a generation engine, a launcher's helper) can inherit the write end of this worker's pipe and keep it open after
    the parent was killed (SIGKILL, OOM), which left workers running for good."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    """Serve grading requests until stdin closes or the parent process is gone."""
    timeout_s = float(argv[0]) if argv else 5.0
    memory_mb = int(argv[1]) if len(argv) > 1 else 0
    hard_grace_s = float(argv[2]) if len(argv) > 2 else 0.5
    # Ctrl-C goes to the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPROF, _on_alarm)
    _exit_with_parent()
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(reply_fd, "w", buffering=1)
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # The hard CPU limit ends the process with SIGXCPU, whose default action also writes a core file: not wanted.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    logging.disable(logging.WARNING)  # math-verify logs every parse failure of model garbage
    grader = _Grader()
    _handle(grader, {"op": "grade", "pred": "\\frac{1}{2}", "gold": "0.5"}, max(timeout_s, 30.0), hard_grace_s)
    out.write('{"ready": true}\n')
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
        except ValueError:
            out.write(json.dumps({"score": 0.0, "timed_out": False, "error": "bad request"}) + "\n")
            continue
        if req.get("op") == "batch":
            replies, used = [], 0.0
            for item in req["reqs"]:
                replies.append(_handle(grader, item, timeout_s, hard_grace_s))
                used += replies[-1]["cpu"]
                if used >= float(req.get("cap_s", math.inf)) or replies[-1]["timed_out"]:
                    break
            out.write(json.dumps({"replies": replies}) + "\n")
        else:
            out.write(json.dumps(_handle(grader, req, timeout_s, hard_grace_s)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
