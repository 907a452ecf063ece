"""Grading workers end with the process that started them, also when it is killed and another process still holds
the write end of their request pipe (as a generation engine or launcher helper forked after the grader does)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

OWNER = textwrap.dedent("""
    import json, subprocess, sys, time
    from nemo_igrpo.rewards.math_grader import MathGrader

    grader = MathGrader(num_workers=1, timeout_s=5.0)
    # A fraction goes to the worker (plain integers are compared in the parent); then it idles, waiting for a request.
    assert [r.score for r in grader.grade(["\\\\boxed{\\\\frac{1}{2}}"], ["0.5"])] == [1.0]
    worker = grader._procs[0]
    # A later child inherits the worker's stdin pipe, so killing this process does not close it.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                              pass_fds=[worker.stdin.fileno()])
    print(json.dumps({"worker": worker.pid, "holder": holder.pid}), flush=True)
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_workers_exit_when_their_parent_is_killed():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pids = json.loads(owner.stdout.readline())
    try:
        assert _alive(pids["worker"])
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        deadline = time.monotonic() + 20
        while _alive(pids["worker"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pids["worker"]), "the grading worker outlived its killed parent"
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
