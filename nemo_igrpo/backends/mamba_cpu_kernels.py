"""Pure-PyTorch stand-ins for the mamba-ssm / causal-conv1d kernels that megatron-core's Mamba mixer calls.

megatron-core 0.16's ``MambaMixer`` needs CUDA/Triton kernels from two packages that do not exist on a CPU-only
machine: ``mamba_ssm`` (the chunked selective scan, alone and fused with the depthwise convolution, and a gated,
grouped RMSNorm) and ``causal_conv1d``. This module implements the same functions, with the same signatures and the
same maths, in plain PyTorch (float32 inside, results in the input dtype); ``cpu_shims`` installs them into
megatron's mixer module when CUDA is absent. Autograd differentiates them, so training works too. They are slow
(O(L * chunk) memory per head) and meant for tests and the CPU demo, not for real model sizes.

The recurrence they compute (Mamba-2, one head ``h`` of size ``p`` with state size ``n``; ``B``/``C`` shared by the
heads of a group)::

    dt_t = softplus(dt_t + dt_bias)          (clamped to dt_limit when one is given)
    s_t  = exp(dt_t * A) * s_{t-1} + dt_t * x_t B_t^T          s: [p, n]
    y_t  = s_t C_t + D * x_t                 then  y_t * silu(z_t)  when a gate z is given

computed chunk by chunk (``chunk_size`` positions): inside a chunk as a masked matrix product, across chunks by
carrying the state, as in the state-space-duality (SSD) formulation of Mamba-2. Not supported (they raise): packed
sequences (``seq_idx``/``cu_seqlens``, megatron asks for them only with packed inputs) and variable-length states.
``tests/conversion/test_mamba_cpu_kernels.py`` checks each function against a step-by-step loop over time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_NO_LIMIT = (0.0, float("inf"))


def _activation(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return x
    if activation in ("silu", "swish"):
        return F.silu(x)
    raise ValueError(f"activation={activation!r}: the CPU kernels support None, 'silu' and 'swish'")


def _no_packing(seq_idx=None, cu_seqlens=None, return_varlen_states=False) -> None:
    if seq_idx is not None or cu_seqlens is not None or return_varlen_states:
        raise NotImplementedError("packed sequences (seq_idx / cu_seqlens / varlen states) are not supported by the "
                                  "CPU Mamba kernels; pass one sequence per row")


# ------------------------------------------------------------------------------------------------- causal conv1d
def causal_conv1d_fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, seq_idx=None,
                     initial_states: torch.Tensor | None = None, return_final_states: bool = False,
                     final_states_out: torch.Tensor | None = None, activation: str | None = None):
    """``causal_conv1d.causal_conv1d_fn``: depthwise causal convolution over time.

    ``x`` [batch, dim, seqlen], ``weight`` [dim, width], ``bias`` [dim]; ``initial_states`` [batch, dim, width - 1]
    are the inputs before t = 0 (zeros when None). ``out[b, d, t] = act(bias[d] + sum_k weight[d, k] *
    x[b, d, t - width + 1 + k])``. With ``return_final_states`` also returns the last ``width - 1`` inputs.
    """
    _no_packing(seq_idx)
    batch, dim, _ = x.shape
    width = weight.shape[-1]
    history = (x.new_zeros(batch, dim, width - 1) if initial_states is None else initial_states.to(x.dtype))
    padded = torch.cat([history, x], dim=-1)
    out = F.conv1d(padded.float(), weight.float().unsqueeze(1), None if bias is None else bias.float(), groups=dim)
    out = _activation(out, activation).to(x.dtype)
    if not return_final_states:
        return out
    final = padded[..., padded.shape[-1] - (width - 1):]
    if final_states_out is not None:
        final_states_out.copy_(final)
        final = final_states_out
    return out, final


# ------------------------------------------------------------------------------------------------- chunked scan
def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """``a`` [..., Q] -> [..., Q, Q] with ``out[..., l, s] = a[s+1] + ... + a[l]`` for ``l >= s`` (0 on the diagonal)
    and -inf above it, so that ``exp(out)`` is the decay from position s to position l inside a chunk. Built from a
    masked cumulative sum rather than differences of one cumsum, which would lose precision in float32."""
    q = a.shape[-1]
    strictly_lower = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device), diagonal=-1)
    terms = a.unsqueeze(-1).expand(*a.shape, q).masked_fill(~strictly_lower, 0.0)  # [..., k, s] = a_k if k > s
    sums = torch.cumsum(terms, dim=-2)  # [..., l, s] = sum over s < k <= l
    lower = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~lower, float("-inf"))


def mamba_chunk_scan_combined(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                              chunk_size: int, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                              dt_bias: torch.Tensor | None = None, initial_states: torch.Tensor | None = None,
                              seq_idx=None, chunk_indices=None, chunk_offsets=None, cu_seqlens=None,
                              dt_softplus: bool = False, dt_limit: tuple[float, float] = _NO_LIMIT,
                              return_final_states: bool = False, return_varlen_states: bool = False):
    """``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``.

    ``x`` [b, l, h, p], ``dt`` [b, l, h], ``A`` [h], ``B``/``C`` [b, l, g, n] (h divisible by g), ``D`` [h] or
    [h, p], ``z`` [b, l, h, p], ``dt_bias`` [h], ``initial_states`` [b, h, p, n]. Returns ``y`` [b, l, h, p] in
    ``x``'s dtype, and with ``return_final_states`` the state after the last position [b, h, p, n] (float32).
    """
    del chunk_indices, chunk_offsets  # only meaningful with seq_idx
    _no_packing(seq_idx, cu_seqlens, return_varlen_states)
    batch, length, heads, _ = x.shape
    groups = B.shape[2]
    if heads % groups:
        raise ValueError(f"{heads} heads are not divisible by {groups} groups")
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != _NO_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    xf = x.float()
    # Each group's B and C serve heads // groups consecutive heads.
    Bh = B.float().repeat_interleave(heads // groups, dim=2)
    Ch = C.float().repeat_interleave(heads // groups, dim=2)

    # Pad the time axis to whole chunks with dt = 0: a padded step neither decays the state nor adds to it.
    q = int(chunk_size)
    pad = (-length) % q
    if pad:
        xf, Bh, Ch = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, Bh, Ch))
        dt = F.pad(dt, (0, 0, 0, pad))
    chunks = (length + pad) // q
    # [b, c, q, h, ...]: chunk c, position l/s inside it.
    xc = xf.reshape(batch, chunks, q, heads, -1)
    Bc = Bh.reshape(batch, chunks, q, heads, -1)
    Cc = Ch.reshape(batch, chunks, q, heads, -1)
    dtc = dt.reshape(batch, chunks, q, heads)
    log_decay = (dtc * A.float()).permute(0, 1, 3, 2)  # [b, c, h, q]: log of exp(dt_t * A), one per step
    inputs = xc * dtc.unsqueeze(-1)  # dt_t * x_t

    # Inside each chunk: y_l = sum_{s <= l} (C_l . B_s) * decay(s -> l) * dt_s x_s.
    decay = torch.exp(_segment_sums(log_decay))  # [b, c, h, l, s]
    scores = torch.einsum("bclhn,bcshn->bchls", Cc, Bc) * decay
    y = torch.einsum("bchls,bcshp->bclhp", scores, inputs)

    # State contributed by each chunk alone, at its last position: sum_s decay(s -> end) * dt_s x_s B_s^T.
    cumulative = torch.cumsum(log_decay, dim=-1)  # [b, c, h, q]
    to_end = torch.exp(cumulative[..., -1:] - cumulative)
    chunk_states = torch.einsum("bchs,bcshn,bcshp->bchpn", to_end, Bc, inputs)

    # Across chunks: carry the state, decayed over a whole chunk, into the next one.
    state = (x.new_zeros(batch, heads, xc.shape[-1], Bc.shape[-1], dtype=torch.float32) if initial_states is None
             else initial_states.float())
    chunk_decay = torch.exp(cumulative[..., -1])  # [b, c, h]
    entering = []
    for c in range(chunks):
        entering.append(state)
        state = state * chunk_decay[:, c, :, None, None] + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)  # [b, c, h, p, n]: the state before each chunk's first position
    from_start = torch.exp(cumulative)  # decay from the chunk's start to position l (inclusive)
    y = y + torch.einsum("bclhn,bchpn,bchl->bclhp", Cc, entering, from_start)

    y = y.reshape(batch, chunks * q, heads, -1)[:, :length]
    if D is not None:
        Df = D.float()
        y = y + x.float() * (Df.unsqueeze(-1) if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(x.dtype)
    return (y, state) if return_final_states else y


# --------------------------------------------------------------------------------------------- gated RMSNorm
def rms_norm_gated(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   z: torch.Tensor | None = None, eps: float = 1e-6, group_size: int | None = None,
                   norm_before_gate: bool = True) -> torch.Tensor:
    """``mamba_ssm.ops.triton.layernorm_gated.rmsnorm_fn``: RMSNorm over groups of ``group_size`` channels of the
    last axis, gated by ``silu(z)`` after the norm (``norm_before_gate``) or before it."""
    xf = x.float()
    if z is not None and not norm_before_gate:
        xf = xf * F.silu(z.float())
    size = group_size or xf.shape[-1]
    if xf.shape[-1] % size:
        raise ValueError(f"{xf.shape[-1]} channels are not divisible by group_size={size}")
    grouped = xf.reshape(*xf.shape[:-1], -1, size)
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    out = grouped.reshape(xf.shape) * weight.float()
    if bias is not None:
        out = out + bias.float()
    if z is not None and norm_before_gate:
        out = out * F.silu(z.float())
    return out.to(x.dtype)


class RMSNormGated(torch.nn.Module):
    """``mamba_ssm.ops.triton.layernorm_gated.RMSNorm``: a ``weight`` of ``hidden_size`` (ones), no bias;
    ``forward(x, z=None)``."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return rms_norm_gated(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                              norm_before_gate=self.norm_before_gate)


# -------------------------------------------------------------------------------- fused conv1d + scan (training)
def mamba_split_conv1d_scan_combined(zxbcdt: torch.Tensor, conv1d_weight: torch.Tensor,
                                     conv1d_bias: torch.Tensor | None, dt_bias: torch.Tensor, A: torch.Tensor,
                                     D: torch.Tensor, chunk_size: int, initial_states: torch.Tensor | None = None,
                                     seq_idx=None, dt_limit: tuple[float, float] = _NO_LIMIT,
                                     return_final_states: bool = False, activation: str = "silu",
                                     rmsnorm_weight: torch.Tensor | None = None, rmsnorm_eps: float = 1e-6,
                                     outproj_weight: torch.Tensor | None = None,
                                     outproj_bias: torch.Tensor | None = None, headdim: int | None = None,
                                     ngroups: int = 1, norm_before_gate: bool = True):
    """``mamba_ssm.ops.triton.ssd_combined.mamba_split_conv1d_scan_combined``: the whole Mamba-2 mixer after
    ``in_proj``.

    ``zxbcdt`` [b, l, 2 * dim + 2 * ngroups * dstate + nheads] is split into the gate ``z`` [dim], the convolution
    input ``xBC`` [dim + 2 * ngroups * dstate] and ``dt`` [nheads]; ``xBC`` goes through the causal convolution and
    ``activation``, is split into ``x``, ``B``, ``C`` and scanned (softplus on dt, ``D`` skip). Without
    ``rmsnorm_weight`` the gate is applied as ``y * silu(z)``; with it, the gated RMSNorm (groups of
    ``dim / ngroups``) is. ``outproj_weight`` then applies the output projection. ``D`` is [nheads] (``headdim``
    given) or [nheads, headdim].
    """
    _no_packing(seq_idx)
    if D.dim() == 1:
        if headdim is None:
            raise ValueError("headdim is required when D is one value per head")
        nheads = D.shape[0]
    else:
        nheads, headdim = D.shape
    dim = nheads * headdim
    batch, length, width = zxbcdt.shape
    dstate = (width - 2 * dim - nheads) // (2 * ngroups)
    if 2 * dim + 2 * ngroups * dstate + nheads != width:
        raise ValueError(f"zxbcdt has {width} channels; expected 2*{dim} + 2*{ngroups}*dstate + {nheads}")
    z, xbc, dt = torch.split(zxbcdt, [dim, dim + 2 * ngroups * dstate, nheads], dim=-1)
    xbc = causal_conv1d_fn(xbc.transpose(1, 2), conv1d_weight, conv1d_bias, activation=activation).transpose(1, 2)
    x, B, C = torch.split(xbc, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
    gate = z.reshape(batch, length, nheads, headdim) if rmsnorm_weight is None else None
    out = mamba_chunk_scan_combined(
        x.reshape(batch, length, nheads, headdim), dt, A, B.reshape(batch, length, ngroups, dstate),
        C.reshape(batch, length, ngroups, dstate), chunk_size, D=D, z=gate, dt_bias=dt_bias,
        initial_states=initial_states, dt_softplus=True, dt_limit=dt_limit, return_final_states=return_final_states)
    y, final = out if return_final_states else (out, None)
    y = y.reshape(batch, length, dim)
    if rmsnorm_weight is not None:
        y = rms_norm_gated(y, rmsnorm_weight, z=z, eps=rmsnorm_eps, group_size=dim // ngroups,
                           norm_before_gate=norm_before_gate)
    if outproj_weight is not None:
        y = F.linear(y, outproj_weight, outproj_bias)
    return (y, final) if return_final_states else y
