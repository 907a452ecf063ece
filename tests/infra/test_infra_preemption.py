"""Stop signals: SIGUSR1 (Slurm's time-limit warning) saves after the step and exits 0; SIGTERM and SIGINT save as soon
as the policy can, abandon a single process's rollouts at once, and past trainer.preemption_grace_s say which steps are
lost and exit 0; a second Ctrl-C stops at once. The handler is tested with real signals sent to this process, the
trainer with `igrpo train` in a subprocess, as a user (or Slurm) signals it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nemo_igrpo.trainer.stop_signals import StepAbandoned, StopSignals

REPO = Path(__file__).resolve().parents[2]


def _send(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs between bytecodes of the main thread


def test_usr1_asks_for_a_save_after_the_step(caplog):
    with StopSignals(grace_s=0) as stop:
        stop.step_started(7)
        _send(signal.SIGUSR1)
        assert stop.requested and not stop.urgent and stop.reason == "SIGUSR1"
    assert "finishing step 7, then saving a checkpoint" in caplog.text
    assert signal.getsignal(signal.SIGUSR1) is not stop._handle  # restored


def test_term_between_steps_saves_at_once_and_a_repeated_term_is_harmless(caplog):
    with StopSignals(grace_s=0) as stop:
        stop.step_started(3)
        stop.step_finished()
        _send(signal.SIGTERM)
        _send(signal.SIGTERM)  # Slurm signals the tasks, and the batch shell forwards it once more
        assert stop.requested and stop.urgent
    assert caplog.text.count("SIGTERM between steps: saving at once") == 1


def test_term_mid_step_past_the_grace_period_says_what_is_lost_and_exits_0(caplog):
    exits: list[int] = []
    with StopSignals(grace_s=0.2, exit_process=exits.append) as stop:
        stop.saved(20)
        stop.step_started(24)
        _send(signal.SIGTERM)
        assert "it is saved when the step ends if that happens within trainer.preemption_grace_s=0.2s; otherwise " \
               "steps 21-24 would be lost and the run resumes from the checkpoint of step 20" in caplog.text
        time.sleep(0.6)
    assert exits == [0]
    assert "step 24 did not finish within trainer.preemption_grace_s=0.2s: steps 21-24 are lost" in caplog.text


def test_a_step_that_ends_in_time_cancels_the_watchdog():
    exits: list[int] = []
    with StopSignals(grace_s=0.3, exit_process=exits.append) as stop:
        stop.step_started(1)
        _send(signal.SIGTERM)
    time.sleep(0.5)
    assert exits == []


def _rollouts(stop: StopSignals, sent: threading.Event) -> None:
    """Stands for the trainer's rollout phase: busy in Python until the signal lands."""
    os.kill(os.getpid(), signal.SIGINT)
    sent.set()
    deadline = time.time() + 5
    while time.time() < deadline:
        pass
    raise AssertionError("the signal did not abandon the step")


def test_ctrl_c_in_a_single_process_abandons_the_rollouts_and_a_second_one_stops(caplog):
    sent = threading.Event()
    with StopSignals(grace_s=0, abandonable=(_rollouts.__code__,)) as stop:
        stop.step_started(5)
        with pytest.raises(StepAbandoned):
            _rollouts(stop, sent)
        assert "SIGINT during the rollouts of step 5: abandoning the step" in caplog.text
        with pytest.raises(KeyboardInterrupt):
            _send(signal.SIGINT)


def test_outside_the_abandonable_code_the_step_runs_on(caplog):
    with StopSignals(grace_s=0, abandonable=(_rollouts.__code__,)) as stop:
        stop.step_started(2)
        _send(signal.SIGINT)  # e.g. during the optimizer update: the policy may be half-updated, so no abandoning
        assert stop.urgent
    assert "SIGINT during step 2: it is saved when the step ends" in caplog.text


# --- the trainer, as a user runs it --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-init Llama with the demo tokenizer (rewards are mostly 0; the stop path does not care)."""
    import torch
    from transformers import LlamaForCausalLM

    from nemo_igrpo.backends.tiny_model import demo_model_config
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    d = tmp_path_factory.mktemp("tiny") / "model"
    tok = build_demo_tokenizer(d)
    cfg = demo_model_config(len(tok), hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=128, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


def _train_cmd(model: Path, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "nemo_igrpo.cli", "train", "--config", str(REPO / "conf" / "demo_igrpo.yaml"),
            f"policy.model_path={model}", f"trainer.output_dir={out}", "data.prompts_per_step=2",
            "algorithm.group_size=4", "algorithm.refinement.num_drafts=2", "generation.max_new_tokens=24",
            "algorithm.refinement.max_draft_tokens=24", "policy.micro_batch_size=4", "trainer.validate_every=0",
            "trainer.progress_bar=false", "trainer.tensorboard=false", "reward.num_workers=1", *overrides]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _signal_after_first_step(cmd: list[str], out: Path, sig: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 600
    while not _steps(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    return proc, err


def _saved_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*"))


@pytest.mark.slow
def test_usr1_saves_the_step_exits_0_and_the_requeued_run_continues(tiny_model, tmp_path):
    out = tmp_path / "run"
    cmd = _train_cmd(tiny_model, out, "trainer.max_steps=30", "trainer.save_every=0")
    proc, err = _signal_after_first_step(cmd, out, signal.SIGUSR1)
    assert proc.returncode == 0, err[-3000:]
    steps = _steps(out)
    assert _saved_steps(out) == [steps[-1]] and steps[-1] < 30
    assert "SIGUSR1 (time limit near)" in err and f"checkpoint of step {steps[-1]} saved" in err
    assert not (out / "hf").exists()  # stopped, not finished
    # the requeued job (same command, resume on, as slurm/train.sbatch runs it) continues where it stopped
    resumed = subprocess.run(cmd[:-2] + [f"trainer.max_steps={steps[-1] + 2}", "trainer.save_every=0",
                                         "trainer.resume=true"], capture_output=True, text=True, env=_env(),
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _steps(out) == list(range(1, steps[-1] + 3))


@pytest.mark.slow
def test_ctrl_c_saves_the_last_finished_step_and_exits_0(tiny_model, tmp_path):
    out = tmp_path / "run"
    proc, err = _signal_after_first_step(_train_cmd(tiny_model, out, "trainer.max_steps=30", "trainer.save_every=0"),
                                         out, signal.SIGINT)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    saved = _saved_steps(out)
    # Either the rollouts were abandoned (the last logged step is saved) or the step in flight ended and was saved.
    assert saved == [_steps(out)[-1]]
    assert "SIGINT" in err and f"checkpoint of step {saved[0]} saved" in err
