"""The trainer's own order on vLLM's CPU build, in fresh processes: process groups first, then the engine through
vLLM's external launcher, which reads RANK/LOCAL_RANK/WORLD_SIZE. A lone process (no torchrun) has none of them;
the generator provides them for the engine's construction only, so they (and no port) reach no child process. At
exit the engine shuts down after megatron's groups and before the default group; the process exits cleanly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vllm_common import build_model_dir  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher_worker.py")
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _run(procs, timeout=300):
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out))
    for rc, out in outs:
        assert rc == 0, out[-4000:]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(str(tmp_path_factory.mktemp("launcher_model")))


def test_lone_process_engine_and_shutdown_order(model_dir, tmp_path):
    out = tmp_path / "lone.json"
    _run([subprocess.Popen([sys.executable, WORKER, model_dir, str(out)], env=_env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)])
    got = json.loads(out.read_text())
    assert got["executor"] == "external_launcher"
    assert got["env_before"] == got["env_after"] == {"RANK": None, "LOCAL_RANK": None, "WORLD_SIZE": None}
    assert got["child_env"] == {"RANK": None, "LOCAL_RANK": None, "WORLD_SIZE": None, "MASTER_PORT": None}
    assert len(got["tokens"]) == 5
    assert "max_model_len=64" in got["too_long"] and "generation.max_model_len" in got["too_long"]
    # Megatron's groups first, then the engine (which tears down its groups and the default one it runs on).
    assert got["order"] == ["destroy_model_parallel", "close(dist initialised=True)",
                            "closed(dist initialised=False)"]


def test_two_launched_ranks_each_run_an_engine_and_exit_cleanly(model_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, WORKER, model_dir, str(tmp_path / f"rank{r}.json")],
                              env=_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port)),
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    _run(procs)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [g["rank"] for g in got] == [0, 1]
    assert got[0]["tokens"] == got[1]["tokens"]  # same weights, same prompt, greedy: the same completion
    for r, g in enumerate(got):
        assert g["env_after"] == {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"}  # the launcher's own
        assert g["order"][0] == "destroy_model_parallel"
