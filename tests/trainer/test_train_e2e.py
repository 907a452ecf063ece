"""The whole actor loop as a user runs it (`igrpo train` in a subprocess): finite rewards, a reloadable checkpoint,
SIGKILL + resume reproducing the uninterrupted run, SIGTERM saving and exiting, refusing a different config."""

import json
import signal
import subprocess
import time

import pytest
import torch

from trainer_cli_helpers import igrpo_train_cmd, run_train, train_env

pytestmark = pytest.mark.slow

TIMING_PREFIXES = ("time/",)


def read_metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def comparable(row):
    return {k: v for k, v in row.items() if not k.startswith(TIMING_PREFIXES)}


@pytest.fixture(scope="module")
def reference_run(warm_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = run_train(igrpo_train_cmd(warm_model, out, "trainer.max_steps=4", "trainer.save_every=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_rewards_finite_and_checkpoint_reloads(reference_run, warm_model):
    rows = read_metrics(reference_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for key in ("reward/mean", "reward/draft_best", "entropy", "loss", "grad_norm", "tokens/stage1",
                    "tokens/stage2", "refit/logprob_mismatch"):
            assert r[key] is not None, key
        # the generator samples from exactly the policy's weights: log-probs agree to float32 precision
        assert r["refit/logprob_mismatch"] < 1e-4
        assert r["sequences/stage1"] == 4 and r["sequences/stage2"] == 4
    # rewards were not all zero somewhere, so some step had a real gradient
    assert any(r["grad_norm"] > 0 for r in rows)
    ckpts = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000004"]
    state = json.loads((reference_run / "checkpoints" / "step_000004" / "trainer_state.json").read_text())
    assert state["step"] == 4
    # the final HF export loads in transformers and differs from the warm start (training moved the weights)
    from safetensors.torch import load_file

    trained = load_file(reference_run / "hf" / "model.safetensors")
    start = load_file(warm_model / "model.safetensors")
    assert set(trained) == set(start)
    assert any(not torch.equal(trained[k], start[k]) for k in trained)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(reference_run / "hf")


def test_sigkill_then_resume_reproduces_the_run(reference_run, warm_model, tmp_path):
    out = tmp_path / "run"
    cmd = igrpo_train_cmd(warm_model, out, "trainer.max_steps=4", "trainer.save_every=2")
    env = train_env()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = out / "checkpoints" / "step_000002" / "trainer_state.json"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), "no checkpoint at step 2"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_train(cmd + ["trainer.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    got, want = read_metrics(out), read_metrics(reference_run)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(got, want):
        a, b = comparable(a), comparable(b)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)


def test_sigterm_saves_and_exits_cleanly(warm_model, tmp_path):
    out = tmp_path / "run"
    cmd = igrpo_train_cmd(warm_model, out, "trainer.max_steps=50", "trainer.save_every=0")
    env = train_env()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 600
    while (not metrics.exists() or not metrics.read_text().strip()) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == [f"step_{steps[-1]:06d}"] and steps[-1] < 50
    assert "SIGTERM" in err


def test_resume_into_a_different_config_is_refused(reference_run, warm_model, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    cmd = igrpo_train_cmd(warm_model, out, "trainer.max_steps=5", "trainer.resume=true", "algorithm.clip_eps=0.3")
    proc = run_train(cmd)
    assert proc.returncode == 2
    assert "algorithm.clip_eps" in proc.stderr and "force_resume" in proc.stderr
