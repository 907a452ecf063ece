"""`igrpo train` (demo size, iGRPO) with every feature of issue 10 switched on: DAPO's dynamic sampling, overlong
filtering and the soft overlong penalty (rollout side), with mini-batches, the reference KL and TIS (training side).
Every logged metric is finite, the features' own metrics are there and consistent, and truncated rollouts really
carry no loss in the update."""

import json
import math
import sys

import pytest

from trainer_cli_helpers import igrpo_train_cmd, run_train

pytestmark = pytest.mark.slow

FEATURES = ("algorithm.dynamic_sampling.enabled=true", "algorithm.dynamic_sampling.max_extra_rounds=2",
            "algorithm.overlong_filter=true", "reward.weights.overlong=0.5", "reward.overlong.buffer_tokens=16",
            "algorithm.num_mini_batches=2", "algorithm.kl_coef=0.05", "algorithm.mismatch.mode=tis")


def read_metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]


def test_igrpo_with_every_feature_on(warm_model, tmp_path):
    out = tmp_path / "run"
    proc = run_train(igrpo_train_cmd(warm_model, out, "trainer.max_steps=2", "trainer.save_every=2", *FEATURES))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        bad = {k: v for k, v in r.items() if not (isinstance(v, (int, float)) and math.isfinite(v))}
        assert not bad, bad
        for key in ("reward/overlong", "overlong/masked_share", "overlong/draft_truncated_share",
                    "accuracy/refinement_gain_vs_draft_mean", "reward/refinement_gain_vs_draft_mean",
                    "dynamic_sampling/filtered_share", "dynamic_sampling/trained_groups", "tokens/discarded",
                    "kl", "mismatch/kl", "mismatch/weight_mean"):
            assert key in r, key
        rounds = r["dynamic_sampling/rounds"]
        assert 1 <= rounds <= 3
        # 2 prompts per round, 2 drafts + 2 refinements per prompt
        assert r["dynamic_sampling/generated_groups"] == 2 * rounds and r["sequences/generated"] == 8 * rounds
        assert 0 <= r["tokens/discarded"] <= r["tokens/generated"]
        assert -1.0 <= r["reward/overlong"] <= 0.0  # the component, before its weight
        assert r["dynamic_sampling/bound_reached"] == float(r["dynamic_sampling/trained_groups"] < 2)
    state = json.loads((out / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    # The checkpointed prompt stream position covers every prompt drawn, extra rounds included.
    drawn = sum(2 * r["dynamic_sampling/rounds"] for r in rows)
    assert state["sampler"]["epoch"] * state["sampler"]["num_items"] + state["sampler"]["position"] == drawn


def test_truncated_rollouts_carry_no_loss(warm_model, tmp_path):
    # Every completion is cut at 4 tokens: with the filter on, nothing is left to train on.
    out = tmp_path / "run"
    proc = run_train(igrpo_train_cmd(warm_model, out, "trainer.max_steps=1", "trainer.save_every=0",
                                     "generation.max_new_tokens=4", "algorithm.overlong_filter=true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = read_metrics(out)
    assert r["response_length/clip_ratio"] == 1.0 and r["overlong/masked_share"] == 1.0
    assert r["num_tokens"] == 0 and r["grad_norm"] == 0.0 and r["loss"] == 0.0


def test_data_parallel_dynamic_sampling_grpo(warm_model, tmp_path):
    """GRPO on two data-parallel ranks: the ranks gather their groups' flags, exchange the chosen groups and train on
    their share. Filtering on the format reward, which the warm start gets right only part of the time, so that some
    groups are kept and some dropped."""
    out = tmp_path / "run"
    cmd = igrpo_train_cmd(warm_model, out, "trainer.max_steps=2", "trainer.save_every=0",
                          "algorithm.refinement.enabled=false", "algorithm.dynamic_sampling.enabled=true",
                          "algorithm.dynamic_sampling.metric=format", "algorithm.dynamic_sampling.max_extra_rounds=1")
    proc = run_train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                      *cmd[2:]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert all(math.isfinite(v) for v in r.values())
        rounds = r["dynamic_sampling/rounds"]
        # 2 prompts per round over 2 ranks, 4 single-shot rollouts each; token counts are the step's totals
        assert r["dynamic_sampling/generated_groups"] == 2 * rounds and r["sequences/stage2"] == 8 * rounds
        assert r["sequences/discarded"] == 4 * (2 * rounds - r["dynamic_sampling/trained_groups"])
