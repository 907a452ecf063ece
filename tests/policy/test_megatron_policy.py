"""MegatronPolicy at TP=1 against hand-written references: one step equals HF Llama + torch AdamW, gradient
accumulation, checkpoint resume, the non-finite skip, and the LR schedule.

Megatron runs in a subprocess (``policy_worker.py``); the pytest process only builds references and compares.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _launch import run_worker  # noqa: E402
from common import (assert_same_weights, hf_logprobs, load, metrics, optimizer_kwargs, prepare_work,  # noqa: E402
                    reference_step, tiny_hf_model)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("policy_tp1"))
    prepare_work(work)
    run_worker(["tp1", work], world_size=1)
    return work


def test_one_step_equals_hf_adamw_reference(work):
    want, loss, norm, lr = reference_step(work)
    assert norm > optimizer_kwargs()["clip_grad"]  # the clip is active in this comparison
    m = metrics(work, "tp1")["step1"]
    assert m["skipped"] == 0.0
    assert m["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert m["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert m["lr"] == pytest.approx(lr, rel=1e-9)
    assert m["num_tokens"] == float(load(work, "batch1")["loss_mask"].sum())
    assert_same_weights(load(work, "tp1_A1"), want)
    # The log-probs the policy serves are HF's, at the sampling temperature.
    ids = load(work, "batch1")["input_ids"]
    torch.testing.assert_close(load(work, "tp1_logprobs")["lp0"], hf_logprobs(tiny_hf_model(), ids),
                               atol=1e-5, rtol=0)


def test_gradient_accumulation_matches_one_micro_batch(work):
    m = metrics(work, "tp1")
    for key in ("loss", "grad_norm", "clipfrac", "ratio/max", "ratio/min", "approx_kl", "num_tokens"):
        assert m["accum"][key] == pytest.approx(m["step1"][key], rel=1e-5, abs=1e-7), key
    assert_same_weights(load(work, "tp1_B1"), load(work, "tp1_A1"))


def test_activation_recompute_and_checkpoint_without_optimizer_state(work):
    m = metrics(work, "tp1")
    assert m["recompute"]["loss"] == pytest.approx(m["step1"]["loss"], rel=1e-6)
    assert_same_weights(load(work, "tp1_E1"), load(work, "tp1_A1"))


def test_non_finite_loss_skips_the_update(work):
    m = metrics(work, "tp1")
    assert m["nan"]["skipped"] == 1.0 and m["nan_num_updates"] == 0
    assert_same_weights(load(work, "tp1_D0"), tiny_hf_model().state_dict(), atol=0.0)
    # Nothing leaked from the skipped step: the next good step is the first step of a fresh run.
    assert m["after_nan"]["lr"] == m["step1"]["lr"] and m["after_nan"]["skipped"] == 0.0
    assert_same_weights(load(work, "tp1_D1"), load(work, "tp1_A1"))


def test_resume_restores_optimizer_and_schedule(work):
    m = metrics(work, "tp1")
    assert m["resumed_num_updates"] == 1
    assert m["draws_after_load"] == m["draws_after_save"]  # torch, numpy and Python RNG states
    torch.testing.assert_close(load(work, "tp1_resumed_logprobs")["lp1"], load(work, "tp1_logprobs")["lp1"],
                               atol=0, rtol=0)
    assert m["resumed_step2"]["lr"] == m["step2"]["lr"] < m["step1"]["lr"]
    assert m["resumed_step2"]["loss"] == pytest.approx(m["step2"]["loss"], rel=1e-6)
    # Adam's moments came back: a fresh optimizer state would move the weights differently by ~lr.
    assert_same_weights(load(work, "tp1_C2"), load(work, "tp1_A2"))


def test_lr_schedule_warmup_then_cosine_to_min_ratio():
    from nemo_igrpo.backends.policy.config import OptimizerConfig
    from nemo_igrpo.backends.policy.megatron_policy import make_lr_scheduler

    class FakeOptimizer:
        def __init__(self):
            self.param_groups = [{"params": []}]

    opt = FakeOptimizer()
    sched = make_lr_scheduler(opt, OptimizerConfig(lr=1.0, min_lr_ratio=0.1, warmup_ratio=0.2), total_steps=10)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(1)
    # Warmup over 2 updates (0.2 * 10): 1/2, 2/2 of lr; cosine over the remaining 8 down to 0.1 at update 10; floor.
    want = [0.5, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(1, 9)] + [0.1, 0.1]
    assert lrs == pytest.approx(want, abs=1e-12)
    assert lrs[2] == pytest.approx(0.965746, abs=1e-6) and lrs[5] == pytest.approx(0.55, abs=1e-12)
    # No warmup: the first update already uses the decayed value at step 1 (no update is wasted at lr 0).
    opt2 = FakeOptimizer()
    make_lr_scheduler(opt2, OptimizerConfig(lr=2.0, min_lr_ratio=0.5, warmup_ratio=0.0), total_steps=4)
    assert opt2.param_groups[0]["lr"] == pytest.approx(1.0 + 0.5 * (1 + math.cos(math.pi / 4)))
