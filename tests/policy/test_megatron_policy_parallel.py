"""MegatronPolicy across layouts (2 processes): DP=2, TP=2 and PP=2 each equal the single-process HF + AdamW
reference after one step; a TP=1 checkpoint loads at TP=2 with the same log-probs and the same next step; at TP=2 and
PP=2 each rank reads only its own shard of the HF checkpoint."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _launch import run_worker  # noqa: E402
from common import (assert_rank_read_only_its_shard, assert_same_weights, hf_logprobs, load, metrics,  # noqa: E402
                    prepare_work, reference_step, tiny_hf_model)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("policy_parallel"))
    prepare_work(work)
    run_worker(["parallel", work], world_size=2)
    return work


@pytest.fixture(scope="module")
def reference(work):
    return reference_step(work)


@pytest.mark.parametrize("layout", ["dp2", "tp2", "pp2"])
def test_one_step_equals_single_process_reference(work, reference, layout):
    want, loss, norm, lr = reference
    m = metrics(work, layout)["step1"]
    assert m["skipped"] == 0.0
    assert m["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    # TP-duplicated norm weights and PP stages counted exactly once.
    assert m["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert m["lr"] == pytest.approx(lr, rel=1e-9)
    assert m["num_tokens"] == float(load(work, "batch1")["loss_mask"].sum())
    assert_same_weights(load(work, f"{layout}_A1"), want)
    ids = load(work, "batch1")["input_ids"]
    rows = slice(0, 4) if layout == "dp2" else slice(None)  # a DP rank scores its own rows
    torch.testing.assert_close(load(work, f"{layout}_logprobs")["lp0"], hf_logprobs(tiny_hf_model(), ids)[rows],
                               atol=1e-5, rtol=0)


def test_tp2_entropy_matches_pp2(work):
    torch.testing.assert_close(load(work, "tp2_logprobs")["ent0"], load(work, "pp2_logprobs")["ent0"],
                               atol=1e-5, rtol=0)


def test_tp1_checkpoint_loads_at_tp2(work):
    # Saved at TP=1 (DP=2) after step 1, loaded at TP=2: same log-probs (rows 0-3 are DP rank 0's), and the
    # resharded Adam state and schedule give the same step 2.
    lp = load(work, "tp2_logprobs")["lp1_resumed"]
    torch.testing.assert_close(lp[:4], load(work, "dp2_logprobs1")["lp1"], atol=1e-5, rtol=0)
    m, ref = metrics(work, "tp2")["resumed_step2"], metrics(work, "dp2")["step2"]
    assert m["lr"] == ref["lr"]
    assert m["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert_same_weights(load(work, "tp2_C2"), load(work, "dp2_A2"))


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_each_rank_reads_only_its_shard(work, layout):
    """Memory-mapped loading: each rank read exactly the bytes of the parameters it holds (TP slices, its PP stage's
    layers, replicated norms whole), less than the whole model, and got the weights of the full-state-dict load."""
    total = sum(v.numel() * 4 for v in tiny_hf_model().state_dict().values())
    assert_rank_read_only_its_shard(metrics(work, layout)["load"], total, sharded=True)
