"""MegatronPolicy with the GRPO-family training features (TP=1, one process): several optimizer updates per rollout
batch against HF Llama + torch AdamW doing the same updates, one update equal to the single-update path bit for bit,
the frozen KL reference policy (initial weights, also after a checkpoint resume), importance weights and the KL term
reaching the loss, and the loss's entropy declaration.

Megatron runs in a subprocess (``policy_worker.py features``); the pytest process only builds references and compares.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _launch import run_worker  # noqa: E402
from common import (assert_same_weights, hf_logprobs, load, make_loss, metrics, prepare_work,  # noqa: E402
                    reference_updates, tiny_hf_model)
from policy_worker import MULTI_SEED  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("policy_features"))
    prepare_work(work)
    run_worker(["features", work], world_size=1)
    return work


def test_one_mini_batch_one_epoch_is_the_single_update_path_bit_for_bit(work):
    m = metrics(work, "features")
    assert m["single_updates"] == m["single_train"]
    got, want = load(work, "features_single_updates"), load(work, "features_single_train")
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_two_mini_batches_two_epochs_equal_four_reference_updates(work):
    from nemo_igrpo.seeding import hashed_seed
    from nemo_igrpo.trainer.updates import mini_batch_rows

    batch = dict(load(work, "batch1"))
    batch["old_logprobs"] = load(work, "features_reference")["lp_old"]  # on-policy: taken before the first update
    rows = [r for epoch in range(2) for r in mini_batch_rows(8, 2, hashed_seed(f"{MULTI_SEED}/epoch{epoch}"))]
    assert [len(r) for r in rows] == [4, 4, 4, 4]
    weights, losses, norms, lrs = reference_updates(work, [(batch, r, None) for r in rows])
    m = metrics(work, "features")
    assert m["multi_num_updates"] == 4  # every mini-batch was an optimizer update, each one a schedule step
    assert m["multi"]["lr"] == pytest.approx(lrs[-1], rel=1e-9)
    assert m["multi"]["loss"] == pytest.approx(sum(losses) / 4, rel=1e-5, abs=1e-6)
    assert m["multi"]["grad_norm"] == pytest.approx(sum(norms) / 4, rel=1e-5)
    # The old log-probs stayed fixed, so after the first update the ratio left 1 and the clip range acted.
    assert m["multi"]["clipfrac"] > 0 and m["multi"]["ratio/max"] > 1.2
    assert_same_weights(load(work, "features_multi"), weights)


def test_kl_step_with_importance_weights_equals_reference(work):
    t = load(work, "features_reference")
    plain = load(work, "batch1")
    kl = dict(plain, ref_logprobs=t["ref1"], is_weights=t["is_weights"])
    weights, losses, norms, _ = reference_updates(work, [(plain, slice(None), None),
                                                         (kl, slice(None), make_loss(kl_coef=0.1))])
    m = metrics(work, "features")["kl_step2"]
    assert m["loss"] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    assert m["grad_norm"] == pytest.approx(norms[1], rel=1e-5)
    assert m["kl"] > 0 and metrics(work, "features")["kl_step1"]["grad_norm"] > 0
    assert_same_weights(load(work, "features_kl_step"), weights)
    # The KL term and the weights made a difference: without them the second update lands elsewhere.
    other, _, _, _ = reference_updates(work, [(plain, slice(None), None), (plain, slice(None), None)])
    assert max((other[k] - weights[k]).abs().max().item() for k in weights) > 1e-4


def test_reference_policy_is_the_initial_weights_also_after_resume(work):
    t = load(work, "features_reference")
    fresh = t["lp_fresh"]  # a fresh policy built from the initial weights
    torch.testing.assert_close(fresh, hf_logprobs(tiny_hf_model(), load(work, "batch1")["input_ids"]),
                               atol=1e-5, rtol=0)
    for key in ("ref0", "ref1", "ref_resumed", "lp_after_swap"):
        assert torch.equal(t[key], fresh), key
    # Training moved the policy; swapping the reference in and out left it where training put it, and the resumed
    # policy is the trained one while its reference is the initial one.
    assert not torch.allclose(t["lp2"], fresh, atol=1e-4)
    assert torch.equal(t["lp_resumed"], t["lp2"])
    assert "initial weights" in metrics(work, "features")["keep_after_load"]
    # A resume whose model_path holds other weights would silently change the reference: refused.
    assert "KL reference" in metrics(work, "features")["other_reference"]


def test_entropy_reaches_only_a_loss_that_declares_it(work):
    m = metrics(work, "features")
    assert "entropy" not in m["single_train"]  # the registered losses do not ask for it
    assert m["entropy_loss"]["entropy"] == pytest.approx(m["entropy_expected"], rel=1e-5)
