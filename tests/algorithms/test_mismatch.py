"""Training-vs-generation mismatch correction against float64 loops written from the sources' equations:

- TIS (Yao et al. 2025): token weight ``min(pi_old / pi_gen, C)``.
- MIS token level (IcePop, Ling Team 2025): ``M(k) = k`` if ``k in [low, high]`` else 0, ``k = pi_old / pi_gen``.
- MIS sequence level (Liu et al. 2025, Seq-MIS): ``rho = prod_t k_t`` per sequence, ``rho`` on every token if
  ``rho in [low, high]`` else 0.

and the whole GRPO objective with the weight on each token's clipped term (IcePop's J with the KL penalty outside the
weight), reduced with 1/|o_i| over all response tokens (masked tokens included) and the mean over sequences.
"""

import math
from pathlib import Path

import pytest
import torch

from nemo_igrpo.algorithms.config import AlgorithmConfig, MismatchCorrectionConfig
from nemo_igrpo.algorithms.losses import make_policy_loss
from nemo_igrpo.algorithms.mismatch import mismatch_weights
from nemo_igrpo.config import ConfigError, load_config


def _ref_weights(old, gen, mask, cfg):
    """float64 scalar loops, one token (or one sequence) at a time."""
    s, l = mask.shape
    w = [[0.0] * l for _ in range(s)]
    for i in range(s):
        toks = [t for t in range(l) if mask[i, t] > 0]
        if cfg.mode == "mis" and cfg.mis_level == "sequence":
            rho = math.exp(sum(float(old[i, t]) - float(gen[i, t]) for t in toks))
            for t in toks:
                w[i][t] = rho if cfg.mis_low <= rho <= cfg.mis_high else 0.0
            continue
        for t in toks:
            k = math.exp(float(old[i, t]) - float(gen[i, t]))
            if cfg.mode == "tis":
                w[i][t] = min(k, cfg.tis_cap)
            else:
                w[i][t] = k if cfg.mis_low <= k <= cfg.mis_high else 0.0
    return torch.tensor(w, dtype=torch.float64)


def _ref_mismatch_kl(old, gen, mask):
    """KL(pi_gen || pi_old) from samples of pi_gen, Schulman's k3 with r = pi_old / pi_gen: mean of r - 1 - log r."""
    vals = [math.exp(float(old[i, t] - gen[i, t])) - 1 - float(old[i, t] - gen[i, t])
            for i in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[i, t] > 0]
    return sum(vals) / len(vals)


def _batch(seed=0, s=6, l=12, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(s, l, generator=g, dtype=torch.float64) * 3
    gen = old + spread * torch.randn(s, l, generator=g, dtype=torch.float64)
    mask = torch.zeros(s, l, dtype=torch.float64)
    for i in range(s):
        start = int(torch.randint(1, 4, (1,), generator=g))
        mask[i, start:start + int(torch.randint(1, l - 4, (1,), generator=g))] = 1
    mask[3] = 0  # a sequence without response tokens
    # Padding positions hold whatever a real batch holds there.
    gen = torch.where(mask > 0, gen, torch.full_like(gen, -math.inf))
    return old.float(), gen.float(), mask.float()


CASES = {
    "tis": MismatchCorrectionConfig(mode="tis", tis_cap=1.2),
    "mis_token": MismatchCorrectionConfig(mode="mis", mis_level="token", mis_low=0.7, mis_high=1.4),
    "mis_sequence": MismatchCorrectionConfig(mode="mis", mis_level="sequence", mis_low=0.85, mis_high=1.4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_weights_match_the_sources_equations(case):
    cfg = CASES[case]
    old, gen, mask = _batch(seed=list(CASES).index(case), spread=0.4 if case != "mis_sequence" else 0.25)
    out = mismatch_weights(old, gen, mask, cfg)
    want = _ref_weights(old, gen, mask, cfg)
    torch.testing.assert_close(out.weights.double(), want, rtol=1e-6, atol=1e-7)
    valid = mask > 0
    kept = want[valid] > 0
    # The case exercises both sides of its rule.
    if case == "tis":
        assert 0 < (want[valid] == cfg.tis_cap).sum() < valid.sum()
        assert out.metrics["mismatch/truncated_fraction"] == pytest.approx(
            float((want[valid] == cfg.tis_cap).double().mean()))
    else:
        assert 0 < kept.sum() < valid.sum()
        assert out.metrics["mismatch/masked_fraction"] == pytest.approx(float((~kept).double().mean()))
    if case == "mis_sequence":
        rows = [i for i in range(mask.shape[0]) if mask[i].sum() > 0]
        dropped = [i for i in rows if want[i][mask[i] > 0].max() == 0]
        assert out.metrics["mismatch/masked_sequences"] == pytest.approx(len(dropped) / len(rows))
        assert 0 < len(dropped) < len(rows)
    assert out.metrics["mismatch/weight_mean"] == pytest.approx(float(want[valid].mean()), rel=1e-6)
    assert out.metrics["mismatch/kl"] == pytest.approx(_ref_mismatch_kl(old, gen, mask), rel=1e-6)
    assert torch.isfinite(out.weights).all() and (out.weights[~valid] == 0).all()


def test_off_returns_no_weights_but_the_mismatch_kl():
    old, gen, mask = _batch(seed=4)
    out = mismatch_weights(old, gen, mask, MismatchCorrectionConfig())
    assert out.weights is None
    assert set(out.metrics) == {"mismatch/kl"}
    assert out.metrics["mismatch/kl"] == pytest.approx(_ref_mismatch_kl(old, gen, mask), rel=1e-6)
    same = mismatch_weights(old, old, mask, MismatchCorrectionConfig(mode="tis"))
    assert same.metrics["mismatch/kl"] == 0.0 and torch.equal(same.weights, mask)


def test_hand_computed_weights():
    # Token ratios 3, 1, 0.25 (log-space in, so exact): TIS cap 2 -> 2, 1, 0.25; MIS [0.5, 2] -> 0, 1, 0;
    # sequence ratio 0.75 -> 0.75 on every token with [0.5, 2], all 0 with [0.8, 2].
    old = torch.log(torch.tensor([[1.0, 3.0, 1.0, 0.25]]))
    gen = torch.zeros(1, 4)
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    tis = mismatch_weights(old, gen, mask, MismatchCorrectionConfig(mode="tis", tis_cap=2.0)).weights
    mis = mismatch_weights(old, gen, mask, MismatchCorrectionConfig(mode="mis")).weights
    seq = mismatch_weights(old, gen, mask, MismatchCorrectionConfig(mode="mis", mis_level="sequence")).weights
    drop = mismatch_weights(old, gen, mask, MismatchCorrectionConfig(mode="mis", mis_level="sequence",
                                                                     mis_low=0.8)).weights
    torch.testing.assert_close(tis, torch.tensor([[0.0, 2.0, 1.0, 0.25]]))
    torch.testing.assert_close(mis, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(seq, torch.tensor([[0.0, 0.75, 0.75, 0.75]]))
    assert torch.equal(drop, torch.zeros(1, 4))


def test_sequence_ratio_far_outside_the_range_does_not_overflow():
    old = torch.zeros(2, 400)
    gen = torch.full((2, 400), -3.0)  # log rho = 1200 on row 0
    gen[1] = 3.0  # log rho = -1200 on row 1
    out = mismatch_weights(old, gen, torch.ones(2, 400), MismatchCorrectionConfig(mode="mis", mis_level="sequence"))
    assert torch.equal(out.weights, torch.zeros(2, 400))
    assert out.metrics["mismatch/masked_sequences"] == 1.0


def _ref_weighted_grpo_loss(lp, old, adv, mask, w, ref, eps, beta):
    """IcePop's J (negated) with GRPO's k3 KL: per sequence 1/|o_i| sum_t [w_t * -min(r A, clip(r) A) + beta * k3]."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(mask.shape[0]):
        toks = [t for t in range(mask.shape[1]) if mask[i, t] > 0]
        if not toks:
            continue
        seq = 0.0
        for t in toks:
            r = torch.exp(lp[i, t] - old[i, t])
            a = float(adv[i])
            pg = -torch.minimum(r * a, torch.clamp(r, 1 - eps, 1 + eps) * a)
            d = ref[i, t] - lp[i, t]
            seq = seq + float(w[i, t]) * pg + beta * (torch.exp(d) - d - 1)
        total = total + seq / len(toks)
    return total / mask.shape[0]


@pytest.mark.parametrize("case", list(CASES))
def test_loss_with_weights_and_kl_matches_reference(case):
    old, gen, mask = _batch(seed=20 + list(CASES).index(case), spread=0.3 if case != "mis_sequence" else 0.2)
    weights = mismatch_weights(old, gen, mask, CASES[case]).weights
    g = torch.Generator().manual_seed(5)
    lp = (old.double() + 0.3 * torch.randn(old.shape, generator=g, dtype=torch.float64))
    ref = old.double() + 0.2 * torch.randn(old.shape, generator=g, dtype=torch.float64)
    adv = torch.randn(old.shape[0], generator=g, dtype=torch.float64)
    fn = make_policy_loss(AlgorithmConfig(policy_loss="grpo", clip_eps=0.2, kl_coef=0.05), max_response_tokens=12)
    leaf = lp.clone().requires_grad_(True)
    loss, metrics = fn(leaf, old.double(), adv, mask.double(), ref_logprobs=ref, is_weights=weights)
    loss.backward()
    ref_leaf = lp.clone().requires_grad_(True)
    want = _ref_weighted_grpo_loss(ref_leaf, old.double(), adv, mask, _ref_weights(old, gen, mask, CASES[case]),
                                   ref, 0.2, 0.05)
    want.backward()
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(leaf.grad, ref_leaf.grad * (mask > 0), rtol=1e-4, atol=1e-6)
    # Masked tokens carry no policy gradient but keep the KL's; weight 1 everywhere is the plain loss.
    ones, _ = fn(lp, old.double(), adv, mask.double(), ref_logprobs=ref, is_weights=mask.double())
    plain, _ = fn(lp, old.double(), adv, mask.double(), ref_logprobs=ref)
    assert ones.item() == plain.item()


@pytest.mark.parametrize("key, value", [("generation.top_p=0.95", "generation.top_p"),
                                        ("generation.top_k=20", "generation.top_k")])
@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_truncated_sampling_is_refused_with_the_correction(key, value, mode):
    with pytest.raises(ConfigError, match=value):
        load_config(None, [f"algorithm.mismatch.mode={mode}", key])
    load_config(None, ["algorithm.mismatch.mode=none", key])  # off: top-p/top-k are the user's business


@pytest.mark.parametrize("override, key", [
    ("algorithm.mismatch.mode=is", "algorithm.mismatch.mode"),
    ("algorithm.mismatch.mis_level=group", "algorithm.mismatch.mis_level"),
    ("algorithm.mismatch.tis_cap=0", "algorithm.mismatch.tis_cap"),
    ("algorithm.mismatch.mis_low=1.0", "algorithm.mismatch.mis_low"),
    ("algorithm.mismatch.mis_high=0.9", "algorithm.mismatch.mis_high"),
])
def test_bad_options_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


CONF = Path(__file__).resolve().parents[2] / "conf"
PAPER_RECIPES = [CONF / f"{stem}_{variant}.yaml" for stem in ("orn7b_acereason", "r1distill7b_math", "nemotronh8b_math")
                 for variant in ("igrpo", "grpo")]


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: p.name)
def test_each_paper_recipe_writes_out_the_switch_off(path, monkeypatch):
    for var in ("MODEL_DIR", "DATA_DIR", "RESULTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert "\n  mismatch:\n" in path.read_text()  # the option is written out (and commented) in the recipe
    assert load_config(path).algorithm.mismatch.mode == "none"  # off, as in the paper


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_every_recipe_accepts_the_switch(path, mode, monkeypatch):
    for var in ("MODEL_DIR", "DATA_DIR", "RESULTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(path, [f"algorithm.mismatch.mode={mode}"])
    assert cfg.generation.top_p == 1.0 and cfg.generation.top_k <= 0
