"""k1/k2/k3 KL estimators: hand values, and Monte-Carlo unbiasedness against the exact KL of two categoricals."""

import math

import pytest
import torch

from nemo_igrpo.algorithms.kl import kl_estimate


def test_hand_values():
    # pi(x) = 0.5, pi_ref(x) = 0.25: log(pi/pi_ref) = log 2; r = pi_ref/pi = 0.5.
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    ln2 = math.log(2.0)
    torch.testing.assert_close(kl_estimate(lp, ref, "k1"), torch.tensor([ln2]))
    torch.testing.assert_close(kl_estimate(lp, ref, "k2"), torch.tensor([0.5 * ln2 * ln2]))
    torch.testing.assert_close(kl_estimate(lp, ref, "k3"), torch.tensor([0.5 - math.log(0.5) - 1.0]))


def test_zero_when_policies_agree_and_k3_nonnegative():
    gen = torch.Generator().manual_seed(1)
    lp = torch.randn(4, 7, generator=gen)
    for est in ("k1", "k2", "k3"):
        assert torch.count_nonzero(kl_estimate(lp, lp.clone(), est)) == 0
    assert (kl_estimate(lp, torch.randn(4, 7, generator=gen), "k3") >= 0).all()


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_for_kl_pi_to_ref(estimator):
    # Tokens sampled from pi: the sample mean of k1 and k3 must approach the exact KL(pi || pi_ref).
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    q = torch.tensor([0.4, 0.4, 0.1, 0.1], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 400_000, replacement=True, generator=torch.Generator().manual_seed(2))
    est = kl_estimate(p.log()[x], q.log()[x], estimator).mean().item()
    assert est == pytest.approx(exact, rel=0.03)


def test_k2_is_biased_but_close_for_nearby_policies():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.45, 0.33, 0.22], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    expected_k2 = float((p * 0.5 * (p / q).log() ** 2).sum())
    assert expected_k2 == pytest.approx(exact, rel=0.1) and expected_k2 != pytest.approx(exact, rel=1e-4)


def test_k3_gradient_matches_formula():
    lp = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.5, -1.0], dtype=torch.float64)
    kl_estimate(lp, ref, "k3").sum().backward()
    # d/dlp [exp(ref - lp) - (ref - lp) - 1] = 1 - exp(ref - lp)
    torch.testing.assert_close(lp.grad, 1 - torch.exp(ref - lp.detach()))


def test_unknown_estimator_lists_names():
    with pytest.raises(KeyError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")
