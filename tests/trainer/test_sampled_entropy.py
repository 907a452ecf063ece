"""The per-stage entropy estimate: the mean -log p of sampled tokens is the policy's entropy (in expectation)."""

import math

import pytest
import torch

from nemo_igrpo.trainer.rollout import sampled_entropy


def test_token_weighted_mean_by_hand():
    assert sampled_entropy([[-1.0, -2.0], [-3.0]]) == pytest.approx(2.0)
    assert sampled_entropy([[], []]) == 0.0


def test_estimates_the_entropy_of_the_sampling_distribution():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    logp = torch.log_softmax(logits / 0.7, dim=-1)
    exact = float(-(logp.exp() * logp).sum(-1).mean())
    draws = torch.multinomial(logp.exp(), 20000, replacement=True, generator=gen)  # [2, 20000]
    rows = [logp[i, draws[i]].tolist() for i in range(2)]
    # 40000 draws: the standard error of the mean is below 0.01 nats
    assert sampled_entropy(rows) == pytest.approx(exact, abs=0.02)
    assert exact == pytest.approx((float(-(logp[0].exp() * logp[0]).sum()) + math.log(4)) / 2)
