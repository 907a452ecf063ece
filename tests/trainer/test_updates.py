"""Several optimizer updates per rollout batch, on a recording stand-in for the policy: which rows each update gets,
how many updates there are, and how their metrics combine. (The numerics of the updates themselves are checked
against HF + AdamW in tests/policy/test_policy_features.py.)"""

import math

import pytest
import torch

from nemo_igrpo.algorithms.config import AlgorithmConfig
from nemo_igrpo.backends.policy.interface import PolicyInterface
from nemo_igrpo.batch import TrainBatch
from nemo_igrpo.trainer.updates import combine_update_metrics, run_updates, updates_per_step


class RecordingPolicy(PolicyInterface):
    """Records the batches ``train`` receives; returns metrics that identify the call."""

    def __init__(self):
        self.batches = []

    def train(self, batch, loss_fn):
        self.batches.append(batch)
        n = len(self.batches)
        return {"loss": float(n), "num_tokens": float(batch.loss_mask.sum()), "lr": 0.1 * n, "skipped": 0.0}

    def get_logprobs(self, input_ids, return_entropy=False):
        raise AssertionError("not used")

    def keep_reference(self, offload=False):
        raise AssertionError("not used")

    def get_reference_logprobs(self, input_ids):
        raise AssertionError("not used")

    def export_hf_weights(self):
        raise AssertionError("not used")

    def save_checkpoint(self, path):
        raise AssertionError("not used")

    def load_checkpoint(self, path):
        raise AssertionError("not used")


def _batch(rows=8, width=5):
    ids = torch.arange(rows * width).view(rows, width)
    mask = torch.zeros(rows, width)
    mask[:, 2:] = 1.0
    return TrainBatch(input_ids=ids, loss_mask=mask, advantages=torch.arange(rows, dtype=torch.float32),
                      old_logprobs=-torch.rand(rows, width), is_weights=torch.rand(rows, width))


def test_one_mini_batch_one_epoch_passes_the_batch_itself_once():
    policy, batch = RecordingPolicy(), _batch()
    out = run_updates(policy, batch, loss_fn=None, num_mini_batches=1, num_epochs=1, seed=0)
    assert len(policy.batches) == 1 and policy.batches[0] is batch
    assert out == {"loss": 1.0, "num_tokens": 24.0, "lr": 0.1, "skipped": 0.0}


def test_each_epoch_passes_every_row_once_in_mini_batches():
    policy, batch = RecordingPolicy(), _batch()
    run_updates(policy, batch, loss_fn=None, num_mini_batches=3, num_epochs=2, seed=5)
    assert len(policy.batches) == 6  # one optimizer update per mini-batch per epoch
    epochs = [policy.batches[:3], policy.batches[3:]]
    orders = []
    for parts in epochs:
        assert sorted(len(p.advantages) for p in parts) == [2, 3, 3]
        rows = torch.cat([p.advantages for p in parts]).long()
        assert sorted(rows.tolist()) == list(range(8))
        orders.append(rows.tolist())
        for p in parts:  # every field of a row travels with it; the old log-probs are the batch's, fixed
            torch.testing.assert_close(p.old_logprobs, batch.old_logprobs[p.advantages.long()], rtol=0, atol=0)
            torch.testing.assert_close(p.is_weights, batch.is_weights[p.advantages.long()], rtol=0, atol=0)
            assert torch.equal(p.input_ids, batch.input_ids[p.advantages.long()])
    assert orders[0] != orders[1]  # reshuffled each epoch

    again = RecordingPolicy()
    run_updates(again, batch, loss_fn=None, num_mini_batches=3, num_epochs=2, seed=5)
    assert [p.advantages.tolist() for p in again.batches] == [p.advantages.tolist() for p in policy.batches]
    other = RecordingPolicy()
    run_updates(other, batch, loss_fn=None, num_mini_batches=3, num_epochs=2, seed=6)
    assert [p.advantages.tolist() for p in other.batches] != [p.advantages.tolist() for p in policy.batches]


def test_epochs_without_mini_batches_repeat_the_whole_batch():
    policy, batch = RecordingPolicy(), _batch()
    run_updates(policy, batch, loss_fn=None, num_mini_batches=1, num_epochs=3, seed=0)
    assert len(policy.batches) == 3 and all(b is batch for b in policy.batches)


def test_more_mini_batches_than_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="num_mini_batches: 9 exceeds the 8 rollouts"):
        run_updates(RecordingPolicy(), _batch(), loss_fn=None, num_mini_batches=9, num_epochs=1, seed=0)


def test_combined_metrics():
    results = [
        {"loss": 1.0, "grad_norm": 2.0, "num_tokens": 10.0, "clipfrac": 0.0, "ratio/max": 1.0, "ratio/min": 1.0,
         "lr": 0.5, "skipped": 0.0},
        {"loss": 3.0, "grad_norm": math.inf, "num_tokens": 30.0, "clipfrac": 0.4, "ratio/max": 1.5, "ratio/min": 0.7,
         "lr": 0.4, "skipped": 1.0},
        {"loss": 2.0, "grad_norm": 4.0, "num_tokens": 0.0, "clipfrac": 0.0, "ratio/max": 0.0, "ratio/min": 0.0,
         "lr": 0.3, "skipped": 0.0},
        {"loss": 2.0, "grad_norm": 1.0, "num_tokens": 40.0, "clipfrac": 0.1, "ratio/max": 1.2, "ratio/min": 0.9,
         "lr": 0.2, "skipped": 0.0},
    ]
    out = combine_update_metrics(results, num_epochs=2)
    assert out["loss"] == 2.0
    assert out["grad_norm"] == math.inf  # a skipped update's non-finite norm is not hidden
    assert out["num_tokens"] == 40.0  # (10 + 30 + 0 + 40) / 2 epochs: the step's tokens
    assert out["clipfrac"] == pytest.approx((0.4 * 30 + 0.1 * 40) / 80)
    assert out["ratio/max"] == 1.5 and out["ratio/min"] == 0.7  # the empty update's neutral 0 is ignored
    assert out["lr"] == 0.2 and out["skipped"] == 1.0


def test_updates_per_step_counts_mini_batches_times_epochs():
    assert updates_per_step(AlgorithmConfig()) == 1
    assert updates_per_step(AlgorithmConfig(num_mini_batches=4, num_update_epochs=2)) == 8


def test_dry_run_shows_the_updates_the_reference_and_the_correction():
    from nemo_igrpo.config import load_config
    from nemo_igrpo.trainer.plan import build_plan, describe_plan

    cfg = load_config("conf/demo_grpo.yaml", ["algorithm.num_mini_batches=4", "algorithm.num_update_epochs=2",
                                              "algorithm.kl_coef=0.02", "policy.reference_offload=true",
                                              "algorithm.mismatch.mode=mis", "trainer.max_steps=10"])
    plan = build_plan(cfg, world_size=2, inspect=False)
    out = describe_plan(plan)
    assert "updates per step          8 = 4 mini-batch(es)" in out
    assert "about 16 per DP rank (64 per step / 4)" in out  # 16 prompts x 8 rollouts / DP 2
    assert "10 steps x 8 = 80 optimizer updates" in out
    assert "kl_coef 0.02 (k3)" in out and "CPU memory" in out
    assert "MIS at token level, ratios outside [0.5, 2.0] dropped" in out
    assert not plan.problems

    too_many = build_plan(load_config("conf/demo_grpo.yaml", ["algorithm.num_mini_batches=65"]), 2, inspect=False)
    assert "algorithm.num_mini_batches: 65 exceeds the 64 rollouts" in describe_plan(too_many)
    assert [p.where for p in too_many.problems] == ["algorithm.num_mini_batches"]
