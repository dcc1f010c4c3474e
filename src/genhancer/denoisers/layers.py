"""Building blocks shared by the denoisers (MM-DiT here, the Perceiver can reuse the attention).

Shapes follow one convention throughout: sequences are ``[B, L, D]``; inside attention,
heads are split to ``[B, H, L, Dh]``; RoPE tables are ``[B, 1, L, Dh/2, 2]`` holding
``(cos, sin)`` so one table broadcasts over every head.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- timestep


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0,
                       time_factor: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous timesteps.

    ``t[B]`` in [0, 1] -> ``[B, dim]`` (cos half then sin half).  ``t`` is first scaled by
    ``time_factor`` so that [0, 1] covers as many periods as DDPM's integer steps did,
    which is what FLUX does; otherwise the low frequencies would barely move.
    """
    t = time_factor * t.float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class MLPEmbedder(nn.Module):
    """``Linear(in, hidden) -> SiLU -> Linear(hidden, hidden)``: ``[..., in] -> [..., hidden]``."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


# ----------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim with a learned per-channel scale (init 1)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32: in bf16 the mean of squares loses too many bits.
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf.to(dtype) * self.scale.to(dtype)


class QKNorm(nn.Module):
    """RMSNorm of queries and keys per head (``[B, H, L, Dh]``); identity when disabled.

    Normalising q and k bounds the attention logits, which keeps a randomly initialised
    wide transformer from producing one-hot attention early in training.
    """

    def __init__(self, head_dim: int, enabled: bool = True):
        super().__init__()
        self.query_norm = RMSNorm(head_dim) if enabled else nn.Identity()
        self.key_norm = RMSNorm(head_dim) if enabled else nn.Identity()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


# ----------------------------------------------------------------------------- RoPE


def rope(pos: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotary table for one axis: ``pos[B, L]`` -> ``[B, L, dim/2, 2]`` holding (cos, sin)."""
    if dim % 2:
        raise ValueError(f"a RoPE axis needs an even dimension, got {dim}")
    omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)
    angles = pos.float()[..., None] * omega  # [B, L, dim/2]
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)


class EmbedND(nn.Module):
    """Multi-axis RoPE: each position id axis gets its own slice of the head dim.

    ``ids[B, L, n_axes]`` -> ``pe[B, 1, L, sum(axes_dim)/2, 2]``.  With ids ``(0, row, col)``
    the first slice never rotates (FLUX keeps it for reference images), the other two
    encode the 2-D patch grid.
    """

    def __init__(self, axes_dim: tuple[int, ...] | list[int], theta: float = 10000.0):
        super().__init__()
        self.axes_dim = tuple(int(a) for a in axes_dim)
        self.theta = theta

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"expected ids with {len(self.axes_dim)} axes, got {ids.shape[-1]}")
        parts = [rope(ids[..., i], d, self.theta) for i, d in enumerate(self.axes_dim) if d > 0]
        return torch.cat(parts, dim=-2).unsqueeze(1)


def apply_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x[B, H, L, Dh]`` by ``pe[B, 1, L, Dh/2, 2]``.

    Pair ``(x0, x1)`` becomes ``(x0 cos - x1 sin, x1 cos + x0 sin)``, computed over the full
    head dim as ``x * [cos, cos] + [x1, x0] * [-sin, sin]``: two dense products instead of
    four on stride-2 halves, and a backward without a zero-filled copy per half (measured
    1.7x faster fwd + bwd on CPU). Bitwise the same values: ``a + (-b)`` is ``a - b`` in IEEE
    arithmetic, and addition commutes.
    """
    xf = x.float()
    x0, x1 = xf.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = pe.unbind(-1)
    cos2 = torch.stack((cos, cos), dim=-1).flatten(-2)
    sin2 = torch.stack((-sin, sin), dim=-1).flatten(-2)
    return (xf * cos2 + torch.stack((x1, x0), dim=-1).flatten(-2) * sin2).to(x.dtype)


# ----------------------------------------------------------------------------- attention


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, L, H*Dh]`` -> ``[B, H, L, Dh]``."""
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, Dh]`` -> ``[B, L, H*Dh]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor | None = None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention on split heads.

    ``q[B, H, Lq, Dh]``, ``k, v[B, H, Lk, Dh]``, optional RoPE ``pe`` (only when q and k
    share positions, i.e. self-attention), optional boolean / additive ``mask``
    broadcastable to ``[B, H, Lq, Lk]`` -> ``[B, Lq, H*Dh]``.
    """
    if pe is not None:
        q, k = apply_rope(q, pe), apply_rope(k, pe)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return merge_heads(out)


class QKVLinear(nn.Module):
    """One fused ``Linear(dim, 3*dim)`` for q, k and v: ``[B, L, dim]`` -> three ``[B, H, L, Dh]``.

    Fused so a single GEMM feeds all three; LoRA / checkpoint tools see one module.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)


# ----------------------------------------------------------------------------- adaLN


class ModulationOut(NamedTuple):
    shift: torch.Tensor  # [B, 1, dim]
    scale: torch.Tensor  # [B, 1, dim]
    gate: torch.Tensor   # [B, 1, dim]


class Modulation(nn.Module):
    """adaLN-Zero: ``vec[B, dim]`` -> one (``double=False``) or two sets of (shift, scale, gate).

    The projection is zero-initialised, so at init every gate is 0 and the block that owns
    it is the identity: a fresh deep model starts as a no-op and learns residuals
    (DiT, Peebles & Xie 2023).  Gradients still reach the projection through the gates.
    """

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, vec: torch.Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return ModulationOut(*out[:3]), (ModulationOut(*out[3:]) if self.double else None)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(1 + scale) * x + shift``; ``scale`` is a delta around 1 so zero means untouched."""
    return (1 + scale) * x + shift
