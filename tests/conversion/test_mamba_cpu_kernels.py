"""The pure-PyTorch Mamba kernels against step-by-step loops over time written here from the Mamba-2 recurrence
(float64), on lengths that are not multiples of the chunk size, with groups, initial states and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nemo_igrpo.backends import mamba_cpu_kernels as K

G = torch.Generator().manual_seed(0)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=G) * scale


def naive_conv(x, weight, bias, activation, history=None):
    """out[b, d, t] = act(bias[d] + sum_k w[d, k] x[b, d, t - width + 1 + k]), inputs before t = 0 from history."""
    x, weight = x.double(), weight.double()
    b, d, length = x.shape
    width = weight.shape[1]
    hist = torch.zeros(b, d, width - 1, dtype=torch.float64) if history is None else history.double()
    seq = torch.cat([hist, x], dim=-1)
    out = torch.zeros(b, d, length, dtype=torch.float64)
    for t in range(length):
        for k in range(width):
            out[:, :, t] += weight[:, k] * seq[:, :, t + k]
    if bias is not None:
        out += bias.double()[None, :, None]
    return F.silu(out) if activation == "silu" else out


def naive_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, softplus=True, init=None, dt_limit=None):
    """s_t = exp(dt_t A) s_{t-1} + dt_t x_t B_t^T ; y_t = s_t C_t + D x_t ; y_t *= silu(z_t), one step at a time."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if softplus:
        dt = F.softplus(dt)
    if dt_limit is not None:
        dt = dt.clamp(*dt_limit)
    state = torch.zeros(b, h, p, n, dtype=torch.float64) if init is None else init.double()
    ys = []
    for t in range(length):
        heads, outs = [], []
        for head in range(h):
            grp = head // (h // g)
            decay = torch.exp(dt[:, t, head] * A[head])[:, None, None]
            s_new = decay * state[:, head] + dt[:, t, head, None, None] * x[:, t, head, :, None] * B[:, t, grp, None, :]
            heads.append(s_new)
            outs.append((s_new @ C[:, t, grp].unsqueeze(-1))[..., 0])
        state = torch.stack(heads, dim=1)
        ys.append(torch.stack(outs, dim=1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        Dd = D.double()
        y = y + x * (Dd[:, None] if Dd.dim() == 1 else Dd)
    if z is not None:
        y = y * F.silu(z.double())
    return y, state


def naive_gated_norm(x, w, z, eps, group):
    x = x.double() * F.silu(z.double())
    out = torch.empty_like(x)
    for start in range(0, x.shape[-1], group):
        part = x[..., start:start + group]
        out[..., start:start + group] = part / torch.sqrt(part.pow(2).mean(-1, keepdim=True) + eps)
    return out * w.double()


@pytest.mark.parametrize("length", [1, 5, 13])
def test_causal_conv1d_matches_loop(length):
    x, w, bias = randn(2, 6, length), randn(6, 4), randn(6)
    history = randn(2, 6, 3)
    torch.testing.assert_close(K.causal_conv1d_fn(x, w, bias, activation="silu").double(),
                               naive_conv(x, w, bias, "silu"), atol=1e-5, rtol=1e-5)
    out, final = K.causal_conv1d_fn(x, w, None, initial_states=history, return_final_states=True)
    torch.testing.assert_close(out.double(), naive_conv(x, w, None, None, history), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, torch.cat([history, x], dim=-1)[..., -3:])


@pytest.mark.parametrize("length,chunk", [(13, 4), (8, 8), (3, 16), (21, 8)])
def test_chunk_scan_matches_recurrence(length, chunk):
    b, h, p, g, n = 2, 4, 3, 2, 5
    x, dt, B, C = randn(b, length, h, p), randn(b, length, h), randn(b, length, g, n), randn(b, length, g, n)
    A, D, z, dt_bias = -torch.rand(h, generator=G) * 2 - 0.1, randn(h), randn(b, length, h, p), randn(h, scale=0.5)
    init = randn(b, h, p, n)
    y, final = K.mamba_chunk_scan_combined(x, dt, A, B, C, chunk, D=D, z=z, dt_bias=dt_bias, initial_states=init,
                                           dt_softplus=True, return_final_states=True)
    want_y, want_state = naive_scan(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, init=init)
    torch.testing.assert_close(y.double(), want_y, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(final.double(), want_state, atol=2e-5, rtol=2e-5)
    # dt_limit clamps the step size (HF passes (time_step_min, inf)); D per channel; no gate, no initial state.
    D2 = randn(h, p)
    y2 = K.mamba_chunk_scan_combined(x, dt, A, B, C, chunk, D=D2, dt_bias=dt_bias, dt_softplus=True,
                                     dt_limit=(0.5, 2.0))
    torch.testing.assert_close(y2.double(), naive_scan(x, dt, A, B, C, D=D2, dt_bias=dt_bias, dt_limit=(0.5, 2.0))[0],
                               atol=2e-5, rtol=2e-5)


def test_chunk_scan_gradients_match_recurrence():
    b, length, h, p, g, n = 1, 11, 2, 2, 1, 3
    leaves = [randn(b, length, h, p), randn(b, length, h), -torch.rand(h, generator=G) - 0.1,
              randn(b, length, g, n), randn(b, length, g, n), randn(h)]
    ours = [t.clone().requires_grad_() for t in leaves]
    ref = [t.clone().double().requires_grad_() for t in leaves]
    K.mamba_chunk_scan_combined(*ours[:5], 4, D=ours[5], dt_softplus=True).pow(2).sum().backward()
    naive_scan(*ref[:5], D=ref[5])[0].pow(2).sum().backward()
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-4, rtol=1e-4)


def test_gated_rmsnorm_matches_loop():
    x, z, w = randn(2, 3, 12), randn(2, 3, 12), randn(12)
    norm = K.RMSNormGated(12, eps=1e-5, group_size=4, norm_before_gate=False)
    with torch.no_grad():
        norm.weight.copy_(w)
    assert norm.bias is None and [n for n, _ in norm.named_parameters()] == ["weight"]
    torch.testing.assert_close(norm(x, z).double(), naive_gated_norm(x, w, z, 1e-5, 4), atol=1e-5, rtol=1e-5)
    # Without a gate: plain grouped RMSNorm (a constant gate silu(50) = 50 scales x, which the norm removes).
    torch.testing.assert_close(norm(x).double(), naive_gated_norm(x, w, torch.full_like(x, 50.0), 1e-5, 4),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rmsnorm", [False, True])
def test_split_conv1d_scan_is_conv_then_scan_then_gate(rmsnorm):
    """The fused training kernel equals the naive conv, the naive recurrence and the gate (or gated norm) in turn."""
    b, length, h, p, g, n, width, chunk = 2, 10, 4, 2, 2, 3, 4, 4
    dim = h * p
    conv_dim = dim + 2 * g * n
    zxbcdt = randn(b, length, 2 * dim + 2 * g * n + h)
    cw, cb, dt_bias, D = randn(conv_dim, width, scale=0.5), randn(conv_dim), randn(h, scale=0.5), randn(h)
    A = -torch.rand(h, generator=G) - 0.1
    nw = randn(dim) if rmsnorm else None
    y = K.mamba_split_conv1d_scan_combined(zxbcdt, cw, cb, dt_bias, A, D, chunk, headdim=p, ngroups=g,
                                           rmsnorm_weight=nw, rmsnorm_eps=1e-5, norm_before_gate=False)
    z, xbc, dt = torch.split(zxbcdt, [dim, conv_dim, h], dim=-1)
    xbc = naive_conv(xbc.transpose(1, 2), cw, cb, "silu").transpose(1, 2)
    x, B, C = torch.split(xbc, [dim, g * n, g * n], dim=-1)
    gate = None if rmsnorm else z.reshape(b, length, h, p)
    want, _ = naive_scan(x.reshape(b, length, h, p), dt, A, B.reshape(b, length, g, n), C.reshape(b, length, g, n),
                         D=D, z=gate, dt_bias=dt_bias)
    want = want.reshape(b, length, dim)
    if rmsnorm:
        want = naive_gated_norm(want, nw, z, 1e-5, dim // g)
    torch.testing.assert_close(y.double(), want, atol=3e-5, rtol=3e-5)


def test_packed_sequences_are_refused():
    with pytest.raises(NotImplementedError, match="packed"):
        K.causal_conv1d_fn(randn(1, 2, 3), randn(2, 2), seq_idx=torch.zeros(1, 3, dtype=torch.int32))
    with pytest.raises(NotImplementedError, match="packed"):
        K.mamba_chunk_scan_combined(randn(1, 3, 2, 2), randn(1, 3, 2), -torch.ones(2), randn(1, 3, 1, 2),
                                    randn(1, 3, 1, 2), 2, cu_seqlens=torch.tensor([0, 3]))
