"""`igrpo demo` starts both training runs at once and reports each process's own wall and CPU seconds; a failed run
is reported by name after the other has finished (so that it can be resumed)."""

import argparse
import sys

import pytest

from nemo_igrpo.demo import run as demo_run

# A run that spends about 0.4 s of CPU, and one that only waits: what wait4 reports must tell them apart.
BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
IDLE = "import time, os\nassert os.environ['OMP_NUM_THREADS'] == '1'\ntime.sleep(0.4)\n"


def _fake_commands(monkeypatch, scripts):
    monkeypatch.setattr(demo_run, "_train_cmd", lambda method, *a: [sys.executable, "-c", scripts[method]])


def test_both_runs_at_once_with_their_own_cpu_seconds(monkeypatch, tmp_path):
    _fake_commands(monkeypatch, {"grpo": BUSY, "igrpo": IDLE})
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the demo pins one thread per run whatever the caller set
    runs = demo_run._train_all(argparse.Namespace(), tmp_path / "sft", tmp_path)
    assert set(runs) == {"grpo", "igrpo"}
    assert runs["grpo"]["cpu_s"] >= 0.35  # its busy loop (plus interpreter start-up)
    assert runs["igrpo"]["cpu_s"] < runs["grpo"]["cpu_s"] - 0.2  # sleeping costs no CPU
    assert all(r["wall_s"] >= 0.4 for r in runs.values())
    assert (tmp_path / "train_grpo.log").is_file() and (tmp_path / "train_igrpo.log").is_file()


def test_a_failed_run_is_named_after_both_finished(monkeypatch, tmp_path):
    marker = tmp_path / "igrpo_finished"
    _fake_commands(monkeypatch, {"grpo": "import sys\nprint('boom')\nsys.exit(3)\n",
                                 "igrpo": f"import time\ntime.sleep(1.0)\nopen({str(marker)!r}, 'w').close()\n"})
    with pytest.raises(SystemExit, match="training failed: grpo"):
        demo_run._train_all(argparse.Namespace(), tmp_path / "sft", tmp_path)
    assert marker.is_file()  # the other run was not cut short
    assert "boom" in (tmp_path / "train_grpo.log").read_text()
