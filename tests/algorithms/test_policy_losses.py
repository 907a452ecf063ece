"""Policy losses against hand-computed numbers and an independent float64 loop written from the papers' equations.

The reference below is deliberately scalar and loop-based (one token at a time), so it shares no code path with the
vectorised implementation; its gradient comes from autograd through those scalar operations.
"""

import math

import pytest
import torch

from nemo_igrpo.algorithms.config import AlgorithmConfig
from nemo_igrpo.algorithms.losses import make_policy_loss
from nemo_igrpo.batch import LossNormalizer
from nemo_igrpo.algorithms.registry import POLICY_LOSSES

NAMES = ["grpo", "dapo", "gspo", "dr_grpo"]
MAX_TOKENS = 12


# ---------------------------------------------------------------- reference (float64, scalar loops) -----------------


def _ref_surrogate(ratio, adv, lo, hi, c):
    """-min(r A, clip(r) A), then (A < 0) min(., -c A): PPO eq. 7 and the dual clip of Ye et al. 2020."""
    clipped = torch.clamp(ratio, 1 - lo, 1 + hi)
    loss = torch.maximum(-adv * ratio, -adv * clipped)
    if c is not None and adv < 0:
        loss = torch.minimum(loss, torch.tensor(-c * adv, dtype=torch.float64))
    return loss


def _ref_kl(lp, ref, est):
    d = lp - ref
    return {"k1": d, "k2": 0.5 * d * d, "k3": torch.exp(-d) + d - 1}[est]


def _ref_loss(name, lp, old, adv, mask, ref, opts, num_seq=None, num_tok=None):
    lo, hi, c = opts["lo"], opts["hi"], opts["c"]
    beta, est = opts["kl_coef"], opts["est"]
    s_count, l_count = mask.shape
    num_seq = s_count if num_seq is None else num_seq
    num_tok = float(mask.sum()) if num_tok is None else num_tok
    seq_terms, token_terms = [], []
    for i in range(s_count):
        toks = [t for t in range(l_count) if mask[i, t] > 0]
        if not toks:
            seq_terms.append(torch.zeros((), dtype=torch.float64))
            continue
        a = float(adv[i])
        if name == "gspo":
            s_ratio = torch.exp(sum(lp[i, t] - old[i, t] for t in toks) / len(toks))
            seq_pg = _ref_surrogate(s_ratio, a, lo, hi, c)
        terms = []
        for t in toks:
            pg = seq_pg if name == "gspo" else _ref_surrogate(torch.exp(lp[i, t] - old[i, t]), a, lo, hi, c)
            kl = _ref_kl(lp[i, t], ref[i, t], est) if beta > 0 else 0.0
            terms.append(pg + beta * kl)
        token_terms.extend(terms)
        denom = MAX_TOKENS if name == "dr_grpo" else len(toks)
        seq_terms.append(sum(terms) / denom)
    if name == "dapo":
        return sum(token_terms) / num_tok if token_terms else torch.zeros((), dtype=torch.float64)
    return sum(seq_terms) / num_seq


# ---------------------------------------------------------------- helpers --------------------------------------------


def _cfg(name, opts):
    return AlgorithmConfig(policy_loss=name, clip_eps=0.2, clip_low=opts["lo"], clip_high=opts["hi"],
                           dual_clip_c=opts["c"], kl_coef=opts["kl_coef"], kl_estimator=opts["est"])


OPTIONS = {
    "plain": dict(lo=0.2, hi=0.2, c=None, kl_coef=0.0, est="k3"),
    "asym_dual": dict(lo=0.2, hi=0.28, c=2.0, kl_coef=0.0, est="k3"),
    "kl_k3": dict(lo=0.2, hi=0.2, c=None, kl_coef=0.05, est="k3"),
    "kl_k1_dual": dict(lo=0.1, hi=0.3, c=3.0, kl_coef=0.1, est="k1"),
    "kl_k2": dict(lo=0.2, hi=0.2, c=None, kl_coef=0.2, est="k2"),
}


def _batch(seed=0, s=6, l=10, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(s, l, generator=gen, dtype=torch.float64) * 3
    lp = old + scale * torch.randn(s, l, generator=gen, dtype=torch.float64)
    ref = old + 0.2 * torch.randn(s, l, generator=gen, dtype=torch.float64)
    adv = torch.randn(s, generator=gen, dtype=torch.float64)
    mask = torch.zeros(s, l, dtype=torch.float64)
    starts = torch.randint(1, 4, (s,), generator=gen)
    lengths = torch.randint(1, l - 3, (s,), generator=gen)
    for i in range(s):
        mask[i, starts[i]: starts[i] + lengths[i]] = 1
    mask[2] = 0  # a sequence with no response token at all
    # Off-mask positions hold what a real batch may hold there: -inf (padding) or NaN garbage.
    lp = torch.where(mask > 0, lp, torch.full_like(lp, -math.inf))
    lp[0, -1] = math.nan
    return lp, old, adv, mask, ref


def _run(fn, lp, old, adv, mask, ref, **kw):
    leaf = lp.clone().requires_grad_(True)
    loss, metrics = fn(leaf, old, adv, mask, ref_logprobs=ref, **kw)
    loss.backward()
    return loss.detach(), leaf.grad, metrics


# ---------------------------------------------------------------- tests ----------------------------------------------


@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("name", NAMES)
def test_loss_and_gradient_match_reference(name, opt):
    opts = OPTIONS[opt]
    lp, old, adv, mask, ref = _batch(seed=NAMES.index(name) + 10 * list(OPTIONS).index(opt))
    fn = make_policy_loss(_cfg(name, opts), max_response_tokens=MAX_TOKENS)
    loss, grad, _ = _run(fn, lp, old, adv, mask, ref)

    ref_leaf = torch.where(mask > 0, lp, old).clone().requires_grad_(True)  # reference never reads padding
    want = _ref_loss(name, ref_leaf, old, adv, mask, ref, opts)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, ref_leaf.grad * (mask > 0), rtol=1e-4, atol=1e-6)
    assert grad.abs().sum() > 0


def test_hand_computed_values():
    # seq 0: A = +1, ratios 1.5 and 0.5; seq 1: A = -1, ratio 2. clip 0.2.
    lp = torch.log(torch.tensor([[1.5, 0.5], [2.0, 1.0]]))
    old = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    # token losses: -min(1.5, 1.2) = -1.2, -min(0.5, 0.8) = -0.5, max(2, 1.2) = 2
    expected = {
        "grpo": ((-1.2 - 0.5) / 2 + 2.0) / 2,
        "dapo": (-1.2 - 0.5 + 2.0) / 3,
        "dr_grpo": ((-1.2 - 0.5) / 4 + 2.0 / 4) / 2,
        # sequence ratio of seq 0: exp(mean(log 1.5, log 0.5)) = sqrt(0.75), inside the clip range.
        "gspo": (-math.sqrt(0.75) + 2.0) / 2,
    }
    for name, want in expected.items():
        fn = make_policy_loss(AlgorithmConfig(policy_loss=name, clip_eps=0.2), max_response_tokens=4)
        loss, metrics = fn(lp, old, adv, mask)
        assert loss.item() == pytest.approx(want, abs=1e-6), name
    fn = make_policy_loss(AlgorithmConfig(policy_loss="grpo", clip_eps=0.2), max_response_tokens=4)
    _, metrics = fn(lp, old, adv, mask)
    assert metrics["clipfrac"].item() == pytest.approx(1 / 3)  # only the 1.5 token (A > 0 above 1 + eps)
    assert metrics["ratio/max"].item() == pytest.approx(2.0)
    assert metrics["ratio/min"].item() == pytest.approx(0.5)
    assert metrics["ratio/mean"].item() == pytest.approx(4.0 / 3)
    assert metrics["pg_loss"].item() == pytest.approx((-1.2 - 0.5 + 2.0) / 3)
    assert metrics["num_tokens"].item() == 3


@pytest.mark.parametrize("c, want_loss, want_grad", [(None, 5.0, 5.0), (3.0, 3.0, 0.0), (6.0, 5.0, 5.0)])
def test_dual_clip(c, want_loss, want_grad):
    # A = -1, ratio 5: PPO clip leaves -A r = 5 (gradient d/dlogp = -A r = 5); dual clip bounds it by -c A = c.
    lp = torch.tensor([[math.log(5.0)]], requires_grad=True)
    fn = make_policy_loss(AlgorithmConfig(policy_loss="dapo", dual_clip_c=c), max_response_tokens=4)
    loss, metrics = fn(lp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    assert lp.grad.item() == pytest.approx(want_grad, rel=1e-6)
    assert metrics["clipfrac"].item() == (1.0 if want_grad == 0 else 0.0)


def test_dual_clip_leaves_positive_advantages_alone():
    lp = torch.tensor([[math.log(5.0)]])
    fn = make_policy_loss(AlgorithmConfig(policy_loss="dapo", dual_clip_c=3.0), max_response_tokens=4)
    loss, _ = fn(lp, torch.zeros(1, 1), torch.tensor([2.0]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(-2.0 * 1.2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("splits", [[3, 3], [1, 2, 3], [4, 2]])
def test_micro_batches_with_normalizer_sum_to_full_batch(name, splits):
    opts = OPTIONS["kl_k3"]
    lp, old, adv, mask, ref = _batch(seed=7, scale=0.4)
    fn = make_policy_loss(_cfg(name, opts), max_response_tokens=MAX_TOKENS)
    full_loss, full_grad, _ = _run(fn, lp, old, adv, mask, ref)

    norm = LossNormalizer(num_sequences=float(lp.shape[0]), num_tokens=float(mask.sum()))
    leaf = lp.clone().requires_grad_(True)
    total, start = 0.0, 0
    for n in splits:
        rows = slice(start, start + n)
        loss, _ = fn(leaf[rows], old[rows], adv[rows], mask[rows], ref_logprobs=ref[rows], normalizer=norm)
        loss.backward()
        total += loss.item()
        start += n
    assert total == pytest.approx(full_loss.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(leaf.grad, full_grad, rtol=1e-5, atol=1e-7)


def test_micro_batch_without_normalizer_differs_for_token_mean():
    # Guard that the normalizer is really used: per-micro-batch means do not add up for dapo.
    lp, old, adv, mask, ref = _batch(seed=3)
    fn = make_policy_loss(AlgorithmConfig(policy_loss="dapo"), max_response_tokens=MAX_TOKENS)
    full, _ = fn(lp, old, adv, mask)
    parts = sum(fn(lp[r], old[r], adv[r], mask[r])[0].item() for r in (slice(0, 3), slice(3, 6)))
    assert parts != pytest.approx(full.item(), rel=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_batch_is_finite_zero(name):
    lp = torch.full((2, 4), -math.inf)
    lp[1, 2] = math.nan
    lp.requires_grad_(True)
    cfg = AlgorithmConfig(policy_loss=name, kl_coef=0.1, dual_clip_c=3.0)
    fn = make_policy_loss(cfg, max_response_tokens=MAX_TOKENS)
    loss, metrics = fn(lp, torch.zeros(2, 4), torch.tensor([1.0, -1.0]), torch.zeros(2, 4),
                       ref_logprobs=torch.zeros(2, 4), entropy=torch.full((2, 4), math.nan))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(lp.grad) == 0 and torch.isfinite(lp.grad).all()
    for key, value in metrics.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        assert not value.requires_grad
    assert metrics["num_tokens"].item() == 0


def test_metrics_against_reference():
    lp, old, adv, mask, ref = _batch(seed=5, scale=0.4)
    entropy = torch.rand(lp.shape, dtype=torch.float64)
    opts = dict(OPTIONS["kl_k3"], hi=0.28)
    fn = make_policy_loss(_cfg("grpo", opts), max_response_tokens=MAX_TOKENS)
    _, metrics = fn(lp, old, adv, mask, ref_logprobs=ref, entropy=entropy)
    toks = [(i, t) for i in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[i, t] > 0]
    n = len(toks)
    ratios = [math.exp(lp[i, t] - old[i, t]) for i, t in toks]
    clipped = [(r > 1.28 and adv[i] > 0) or (r < 0.8 and adv[i] < 0) for r, (i, t) in zip(ratios, toks)]
    want = {
        "num_tokens": n,
        "ratio/mean": sum(ratios) / n,
        "ratio/max": max(ratios),
        "ratio/min": min(ratios),
        "clipfrac": sum(clipped) / n,
        "approx_kl": sum(r - 1 - math.log(r) for r in ratios) / n,
        "kl": sum(math.exp(ref[i, t] - lp[i, t]) - (ref[i, t] - lp[i, t]) - 1 for i, t in toks) / n,
        "entropy": sum(entropy[i, t] for i, t in toks) / n,
        "pg_loss": sum(max(-adv[i] * r, -adv[i] * min(max(r, 0.8), 1.28)) for r, (i, t) in zip(ratios, toks)) / n,
    }
    assert 0 < want["clipfrac"] < 1
    assert set(metrics) == set(want)
    for key, value in want.items():
        assert metrics[key].item() == pytest.approx(float(value), rel=1e-5, abs=1e-6), key


def test_kl_needs_reference_and_zero_coef_ignores_it():
    lp, old, adv, mask, ref = _batch(seed=4)
    with_kl = make_policy_loss(AlgorithmConfig(kl_coef=0.1), max_response_tokens=MAX_TOKENS)
    with pytest.raises(ValueError, match="ref_logprobs"):
        with_kl(lp, old, adv, mask)
    no_kl = make_policy_loss(AlgorithmConfig(kl_coef=0.0), max_response_tokens=MAX_TOKENS)
    a, m_a = no_kl(lp, old, adv, mask, ref_logprobs=ref)
    b, _ = no_kl(lp, old, adv, mask)
    assert a.item() == b.item() and "kl" not in m_a
    c, m_c = with_kl(lp, old, adv, mask, ref_logprobs=ref)
    assert c.item() > a.item() and m_c["kl"].item() > 0


def test_dr_grpo_constant_comes_from_config_or_generation_limit():
    lp, old, adv, mask, _ = _batch(seed=6)
    from_gen = make_policy_loss(AlgorithmConfig(policy_loss="dr_grpo"), max_response_tokens=10)
    from_cfg = make_policy_loss(AlgorithmConfig(policy_loss="dr_grpo", dr_grpo_max_tokens=20), max_response_tokens=10)
    a, _ = from_gen(lp, old, adv, mask)
    b, _ = from_cfg(lp, old, adv, mask)
    assert a.item() == pytest.approx(2 * b.item())


def test_asymmetric_clip_falls_back_to_clip_eps():
    # ratio 1.25 with A > 0: inside clip_high = 0.28, clipped by the symmetric 0.2.
    lp, old, adv, mask = torch.tensor([[math.log(1.25)]]), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1)
    sym = make_policy_loss(AlgorithmConfig(policy_loss="dapo", clip_eps=0.2), max_response_tokens=4)
    asym = make_policy_loss(AlgorithmConfig(policy_loss="dapo", clip_eps=0.2, clip_high=0.28), max_response_tokens=4)
    assert sym(lp, old, adv, mask)[0].item() == pytest.approx(-1.2)
    assert asym(lp, old, adv, mask)[0].item() == pytest.approx(-1.25)


def test_bad_shapes_and_unknown_names():
    fn = make_policy_loss(AlgorithmConfig(), max_response_tokens=4)
    with pytest.raises(ValueError, match="advantages"):
        fn(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 1), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        fn(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 4))
    with pytest.raises(KeyError, match="dapo, dr_grpo, grpo, gspo"):
        make_policy_loss(AlgorithmConfig(policy_loss="ppo"), max_response_tokens=4)
    with pytest.raises(KeyError, match="k1, k2, k3"):
        make_policy_loss(AlgorithmConfig(kl_coef=0.1, kl_estimator="k9"), max_response_tokens=4)
    assert POLICY_LOSSES.names() == ["dapo", "dr_grpo", "grpo", "gspo"]


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_loss_satisfies_the_policy_loss_contract(name):
    from nemo_igrpo.backends.policy.interface import LossFn

    fn = make_policy_loss(AlgorithmConfig(policy_loss=name), max_response_tokens=MAX_TOKENS)
    assert isinstance(fn, LossFn)
    # None of them reads the current policy's entropy (no entropy bonus), so the backend must not compute it.
    assert fn.needs_entropy is False
    assert fn.needs_reference is False
    assert make_policy_loss(AlgorithmConfig(policy_loss=name, kl_coef=0.1), max_response_tokens=4).needs_reference
    # The backend calls it with keyword arguments after the four positional tensors.
    lp, old, adv, mask, ref = _batch(seed=8)
    norm = LossNormalizer(num_sequences=6.0, num_tokens=float(mask.sum()))
    a, _ = fn(lp, old, adv, mask, normalizer=norm, ref_logprobs=ref, entropy=None, is_weights=None)
    b, _ = fn(lp, old, adv, mask)
    assert a.item() == pytest.approx(b.item())


def test_a_callable_without_the_entropy_declaration_is_not_a_loss():
    from nemo_igrpo.backends.policy.interface import LossFn

    assert not isinstance(lambda **kw: None, LossFn)
