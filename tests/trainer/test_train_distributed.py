"""The actor loop under torchrun with 2 gloo processes: tensor parallel (rollouts broadcast from the model-parallel
source rank, refit gathered across TP) and data parallel (prompts sharded, metrics averaged over ranks)."""

import json
import sys

import pytest

from trainer_cli_helpers import igrpo_train_cmd, run_train

pytestmark = pytest.mark.slow


def torchrun(cmd: list[str], nproc: int) -> list[str]:
    # cmd = [python, -m, nemo_igrpo.cli, ...]: run the same module under torchrun.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", *cmd[2:]]


def metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single_process_run(warm_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tp1") / "run"
    proc = run_train(igrpo_train_cmd(warm_model, out, "trainer.max_steps=2", "trainer.save_every=0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_tensor_parallel_run_matches_single_process(single_process_run, warm_model, tmp_path):
    out = tmp_path / "run"
    cmd = igrpo_train_cmd(warm_model, out, "trainer.max_steps=2", "trainer.save_every=0",
                          "policy.tensor_model_parallel_size=2")
    proc = run_train(torchrun(cmd, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = metrics(out)[0], metrics(single_process_run)[0]
    # Step 1 samples from the same HF weights with the same seeds: identical rollouts, so identical rewards; the
    # TP=2 policy's log-probs and loss equal TP=1's to float tolerance.
    for key in ("reward/mean", "reward/draft_best", "tokens/generated", "advantage/abs_mean"):
        assert got[key] == want[key], key
    for key in ("loss", "entropy", "grad_norm"):
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    assert metrics(out)[1]["refit/logprob_mismatch"] < 1e-4  # the refit after a TP=2 update is exact
    assert (out / "hf" / "model.safetensors").is_file()


def test_data_parallel_run(warm_model, tmp_path):
    out = tmp_path / "run"
    cmd = igrpo_train_cmd(warm_model, out, "trainer.max_steps=2", "trainer.save_every=2")
    proc = run_train(torchrun(cmd, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    # each rank generated for 1 of the 2 prompts; the logged counts are the step's totals over both ranks
    assert rows[0]["sequences/stage1"] == 4 and rows[0]["sequences/stage2"] == 4
    assert all(r["refit/logprob_mismatch"] < 1e-4 for r in rows)
    assert (out / "checkpoints" / "step_000002" / "trainer_state.json").is_file()


# KL to the reference kept in CPU memory, 2 x 2 updates per step, sequence-level MIS; GRPO, whose warm-start rollouts
# carry a learning signal (see test_train_features_e2e.py).
FEATURES = ("algorithm.refinement.enabled=false", "algorithm.kl_coef=0.05", "policy.reference_offload=true",
            "algorithm.num_mini_batches=2", "algorithm.num_update_epochs=2", "algorithm.mismatch.mode=mis",
            "algorithm.mismatch.mis_level=sequence", "policy.optimizer.lr=1e-4", "trainer.max_steps=2",
            "trainer.save_every=0")


def test_tensor_parallel_run_with_training_features_matches_single_process(warm_model, tmp_path):
    # Both ranks of the TP group must train on the same mini-batch rows and exchange their own shards with the
    # reference's: any disagreement hangs the run or changes its numbers.
    single, tp2 = tmp_path / "tp1", tmp_path / "tp2"
    proc = run_train(igrpo_train_cmd(warm_model, single, *FEATURES))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_train(torchrun(igrpo_train_cmd(warm_model, tp2, *FEATURES, "policy.tensor_model_parallel_size=2"), 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = metrics(tp2), metrics(single)
    assert [r["step"] for r in got] == [1, 2]
    assert got[0]["advantage/abs_mean"] == want[0]["advantage/abs_mean"] > 0  # same rollouts, a real gradient
    for key in ("loss", "kl", "grad_norm", "clipfrac", "approx_kl", "lr"):
        assert got[0][key] == pytest.approx(want[0][key], rel=1e-4, abs=1e-6), key
    assert got[1]["kl"] > 0 and got[1]["refit/logprob_mismatch"] < 1e-4
