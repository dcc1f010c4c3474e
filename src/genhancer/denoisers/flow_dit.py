"""FLUX-style MM-DiT denoiser for rectified flow on patchified latents.

The data flow reads top to bottom like the FLUX diagram::

    x[B,L,Cin] --img_in--> img[B,L,H]
    t[B]       --sinusoid, time_in--+
    cond[B,Dc] --vector_in----------+--> vec[B,H]           (adaLN modulation of every block)
    cond[B,Dc] --txt_in--> 1 token  -+
    cond_tokens[B,K,Dc] --txt_in----+--> txt[B,1+K,H]       (the "text" stream)
    double blocks: img / txt keep their own weights, attend jointly
    single blocks: one stream over concat(txt, img)
    final adaLN layer on the image part -> [B,L,Cin]

GenHancer's lite denoiser is FLUX.1's architecture with 2 double + 4 single blocks and
random weights.  Upstream feeds the projected CLIP global token in twice: through a
768-d vector (``vector_in``) and as one 4096-d T5-shaped token (``txt_in``).  Here the
projector outside the denoiser produces one condition ``cond[B,Dc]`` and the denoiser owns
both entry MLPs; FLUX's guidance embedding (a constant 4 upstream) is dropped.  With
``Dc = 3072`` this keeps the parameter count within 0.3 % of upstream's 1.310 B.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from genhancer.denoisers.layers import (
    EmbedND,
    MLPEmbedder,
    Modulation,
    QKNorm,
    QKVLinear,
    attention,
    modulate,
    split_heads,
    timestep_embedding,
)
from genhancer.errors import ConfigError, ShapeError

TIME_EMBED_DIM = 256


@dataclass(frozen=True)
class FlowDiTParams:
    """Sizes of one MM-DiT.  ``sum(axes_dim)`` must equal the head dim ``hidden_size / num_heads``.

    ``patch_size`` is not used by the network (it sees already patchified tokens,
    ``in_channels = C * patch_size**2``); it travels with the params so a checkpoint
    records how its tokens were made.
    """

    in_channels: int
    hidden_size: int
    num_heads: int
    mlp_ratio: float
    depth_double: int
    depth_single: int
    axes_dim: tuple[int, ...]
    cond_dim: int
    theta: float = 10000.0
    qk_norm: bool = True
    patch_size: int = 2
    qkv_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


PRESETS: dict[str, FlowDiTParams] = {
    # GenHancer's lightweight FLUX: 16-ch FLUX VAE latents, 2x2 patches -> 64 channels.
    "flux-lite": FlowDiTParams(in_channels=64, hidden_size=3072, num_heads=24, mlp_ratio=4.0,
                               depth_double=2, depth_single=4, axes_dim=(16, 56, 56), cond_dim=3072),
    # Narrower stand-ins with the same depth, for single-GPU / ablation runs (TAEF2: 32 ch x 2x2).
    "base": FlowDiTParams(in_channels=128, hidden_size=1024, num_heads=16, mlp_ratio=4.0,
                          depth_double=2, depth_single=4, axes_dim=(8, 28, 28), cond_dim=1024),
    "small": FlowDiTParams(in_channels=128, hidden_size=384, num_heads=6, mlp_ratio=4.0,
                           depth_double=2, depth_single=4, axes_dim=(8, 28, 28), cond_dim=384),
    # CPU test / demo size.
    "tiny": FlowDiTParams(in_channels=12, hidden_size=64, num_heads=4, mlp_ratio=4.0,
                          depth_double=1, depth_single=1, axes_dim=(4, 6, 6), cond_dim=64),
}

_OVERRIDABLE = ("hidden_size", "num_heads", "mlp_ratio", "depth_double", "depth_single", "qk_norm",
                "patch_size", "theta")


# ----------------------------------------------------------------------------- blocks


class SelfAttention(nn.Module):
    """The per-stream attention weights of a double block: fused qkv, QK-norm, output proj."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, qk_norm: bool):
        super().__init__()
        self.qkv = QKVLinear(dim, num_heads, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads, enabled=qk_norm)
        self.proj = nn.Linear(dim, dim)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    """Image and text streams with separate weights and one joint attention.

    ``img[B,L,H], txt[B,T,H], vec[B,H], pe[B,1,T+L,Dh/2,2]`` -> ``(img, txt)`` same shapes.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = True,
                 qk_norm: bool = True):
        super().__init__()
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.num_heads = num_heads
        for s in ("img", "txt"):
            self.add_module(f"{s}_mod", Modulation(hidden_size, double=True))
            self.add_module(f"{s}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            self.add_module(f"{s}_attn", SelfAttention(hidden_size, num_heads, qkv_bias, qk_norm))
            self.add_module(f"{s}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            self.add_module(f"{s}_mlp", _mlp(hidden_size, mlp_hidden))

    def _qkv(self, stream: str, x: torch.Tensor, mod) -> tuple[torch.Tensor, ...]:
        attn: SelfAttention = getattr(self, f"{stream}_attn")
        q, k, v = attn.qkv(modulate(getattr(self, f"{stream}_norm1")(x), mod.shift, mod.scale))
        q, k = attn.norm(q, k, v)
        return q, k, v

    def _residual(self, stream: str, x, attn_out, mod1, mod2) -> torch.Tensor:
        x = x + mod1.gate * getattr(self, f"{stream}_attn").proj(attn_out)
        h = modulate(getattr(self, f"{stream}_norm2")(x), mod2.shift, mod2.scale)
        return x + mod2.gate * getattr(self, f"{stream}_mlp")(h)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor,
                pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q, img_k, img_v = self._qkv("img", img, img_mod1)
        txt_q, txt_k, txt_v = self._qkv("txt", txt, txt_mod1)
        # Text first, as FLUX orders its sequence (and its RoPE ids).
        out = attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2),
                        torch.cat((txt_v, img_v), 2), pe=pe)
        n_txt = txt.shape[1]
        img = self._residual("img", img, out[:, n_txt:], img_mod1, img_mod2)
        txt = self._residual("txt", txt, out[:, :n_txt], txt_mod1, txt_mod2)
        return img, txt


class SingleStreamBlock(nn.Module):
    """One stream over ``concat(txt, img)`` with attention and MLP run in parallel
    (ViT-22B style): one input GEMM gives qkv and the MLP hidden, one output GEMM merges both.

    ``x[B,N,H], vec[B,H], pe[B,1,N,Dh/2,2]`` -> ``[B,N,H]``.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool = True):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads, enabled=qk_norm)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        mod, _ = self.modulation(vec)
        h = self.linear1(modulate(self.pre_norm(x), mod.shift, mod.scale))
        # One split into q, k, v and the MLP input (not split, then chunk): its backward is a
        # single concatenation of the four gradients, with no extra copy of h's gradient.
        q, k, v, mlp = torch.split(h, [self.hidden_size] * 3 + [self.mlp_hidden], dim=-1)
        q, k, v = (split_heads(a, self.num_heads) for a in (q, k, v))
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, pe=pe), self.mlp_act(mlp)), dim=-1))
        return x + mod.gate * out


class LastLayer(nn.Module):
    """adaLN (shift, scale) then a linear back to token channels: ``[B,L,H]`` -> ``[B,L,Cout]``.

    Both the modulation and the output linear start at zero, so the untrained model
    predicts exactly 0 (the mean of the rectified-flow target over noise).
    """

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        for lin in (self.linear, self.adaLN_modulation[1]):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ----------------------------------------------------------------------------- model


class FlowDiT(nn.Module):
    """MM-DiT velocity model ``v(x_t, t | cond)``; see the module docstring for the data flow."""

    def __init__(self, params: FlowDiTParams):
        super().__init__()
        _check_params(params)
        self.params = params
        h = params.hidden_size
        self.in_channels = params.in_channels
        self.cond_dim = params.cond_dim
        self.num_heads = params.num_heads
        self.gradient_checkpointing = False

        self.pe_embedder = EmbedND(params.axes_dim, params.theta)
        self.img_in = nn.Linear(params.in_channels, h)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, h)
        self.vector_in = MLPEmbedder(params.cond_dim, h)
        # The condition as a text-stream token (upstream: LayerNorm -> Linear -> GELU -> Linear,
        # then txt_in).  Local cond tokens share it: they live in the same Dc space.
        self.txt_in = nn.Sequential(nn.LayerNorm(params.cond_dim), nn.Linear(params.cond_dim, h),
                                    nn.GELU(approximate="tanh"), nn.Linear(h, h))
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(h, params.num_heads, params.mlp_ratio, params.qkv_bias, params.qk_norm)
            for _ in range(params.depth_double))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(h, params.num_heads, params.mlp_ratio, params.qk_norm)
            for _ in range(params.depth_single))
        self.final_layer = LastLayer(h, params.in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT's recipe: xavier linears with zero bias, N(0, 0.02) for the embedders' first
        # layers; adaLN projections and the output layer stay zero (set in their modules).
        zero = set()
        for m in self.modules():
            if isinstance(m, Modulation):
                zero.add(m.lin)
            elif isinstance(m, LastLayer):
                zero.update((m.linear, m.adaLN_modulation[1]))
        for m in self.modules():
            if isinstance(m, nn.Linear) and m not in zero:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for emb in (self.time_in, self.vector_in):
            nn.init.normal_(emb.in_layer.weight, std=0.02)
            nn.init.normal_(emb.out_layer.weight, std=0.02)

    # -- shapes ------------------------------------------------------------------------

    def _check_inputs(self, x, t, cond, cond_tokens, grid) -> tuple[torch.Tensor, tuple[int, int]]:
        if x.ndim != 3 or x.shape[-1] != self.in_channels:
            raise ShapeError(f"denoiser input: expected x [B,L,{self.in_channels}], got {tuple(x.shape)}")
        b, n = x.shape[:2]
        if cond.shape != (b, self.cond_dim):
            raise ShapeError(f"denoiser cond: expected [{b},{self.cond_dim}], got {tuple(cond.shape)}")
        if cond_tokens is not None and (cond_tokens.ndim != 3 or cond_tokens.shape[0] != b
                                        or cond_tokens.shape[-1] != self.cond_dim):
            raise ShapeError(f"denoiser cond_tokens: expected [{b},K,{self.cond_dim}], "
                             f"got {tuple(cond_tokens.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ShapeError(f"denoiser t: expected [{b}], got {tuple(t.shape)}")
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ShapeError(f"denoiser: {n} tokens are not a square grid; pass grid=(gh, gw)")
            grid = (side, side)
        gh, gw = int(grid[0]), int(grid[1])
        if gh * gw != n:
            raise ShapeError(f"denoiser grid: expected gh*gw == {n} tokens, got grid {(gh, gw)}")
        return t, (gh, gw)

    @staticmethod
    def position_ids(batch: int, n_txt: int, grid: tuple[int, int], device) -> torch.Tensor:
        """RoPE ids ``[B, n_txt + gh*gw, 3]``: text tokens (0,0,0), image tokens (0,row,col)."""
        gh, gw = grid
        rows = torch.arange(gh, device=device).repeat_interleave(gw)
        cols = torch.arange(gw, device=device).repeat(gh)
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1)
        txt_ids = torch.zeros(n_txt, 3, dtype=img_ids.dtype, device=device)
        return torch.cat([txt_ids, img_ids], 0)[None].expand(batch, -1, -1)

    # -- forward -----------------------------------------------------------------------

    def _run(self, block: nn.Module, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                cond_tokens: torch.Tensor | None = None,
                grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Predict the velocity ``eps - x1``.

        ``x[B,L,Cin]`` noisy patch tokens; ``t[B]`` in [0, 1] (1 = pure noise);
        ``cond[B,Dc]`` projected global token; ``cond_tokens[B,K,Dc]`` optional projected
        local tokens; ``grid`` the (gh, gw) patch grid for RoPE, default square.
        Returns ``[B,L,Cin]``.
        """
        t, grid = self._check_inputs(x, t, cond, cond_tokens, grid)
        img = self.img_in(x)
        vec = self.time_in(timestep_embedding(t, TIME_EMBED_DIM).to(img.dtype)) + self.vector_in(cond)
        txt_src = cond[:, None, :] if cond_tokens is None else torch.cat([cond[:, None, :], cond_tokens], 1)
        txt = self.txt_in(txt_src)
        pe = self.pe_embedder(self.position_ids(x.shape[0], txt.shape[1], grid, x.device))

        for block in self.double_blocks:
            img, txt = self._run(block, img, txt, vec, pe)
        n_txt = txt.shape[1]
        h = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            h = self._run(block, h, vec, pe)
        return self.final_layer(h[:, n_txt:], vec)


# ----------------------------------------------------------------------------- factory


def axes_dim_for(head_dim: int) -> tuple[int, ...]:
    """Split a head dim over RoPE axes (unused, row, col) in FLUX's 1/8 : 7/16 : 7/16 ratio,
    each even (RoPE rotates pairs) and row == col (the grid is isotropic)."""
    if head_dim % 2 or head_dim < 4:
        raise ConfigError(f"denoiser head dim (hidden_size / num_heads): expected an even number >= 4, "
                          f"got {head_dim}")
    first = 2 * round(head_dim / 16)
    if (head_dim - first) % 4:
        first += 2
    rest = (head_dim - first) // 2
    return (first, rest, rest)


def _check_params(p: FlowDiTParams) -> None:
    if p.hidden_size % p.num_heads:
        raise ConfigError(f"denoiser.hidden_size: expected a multiple of num_heads ({p.num_heads}), "
                          f"got {p.hidden_size}")
    if sum(p.axes_dim) != p.head_dim or any(a % 2 for a in p.axes_dim):
        raise ConfigError(f"denoiser axes_dim: expected even sizes summing to the head dim {p.head_dim}, "
                          f"got {list(p.axes_dim)}")
    for name in ("in_channels", "cond_dim", "hidden_size", "num_heads"):
        if getattr(p, name) < 1:
            raise ConfigError(f"denoiser.{name}: expected >= 1, got {getattr(p, name)}")
    if p.depth_double < 0 or p.depth_single < 0 or p.depth_double + p.depth_single == 0:
        raise ConfigError(f"denoiser depth: expected at least one block, got {p.depth_double} double + "
                          f"{p.depth_single} single")


def resolve_params(preset: str, in_channels: int, cond_dim: int, **overrides) -> FlowDiTParams:
    """The preset's params with ``in_channels``, ``cond_dim`` and non-None overrides applied.

    The RoPE split is recomputed when the head dim changes.
    """
    if preset not in PRESETS:
        raise ConfigError(f"denoiser.preset: unknown flow_dit preset '{preset}'; expected one of "
                          f"{', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise ConfigError(f"flow_dit override '{unknown[0]}': expected one of {', '.join(_OVERRIDABLE)}")
    base = PRESETS[preset]
    changes = {k: v for k, v in overrides.items() if v is not None}
    p = dataclasses.replace(base, in_channels=int(in_channels), cond_dim=int(cond_dim), **changes)
    if p.hidden_size % p.num_heads:
        raise ConfigError(f"denoiser.hidden_size: expected a multiple of num_heads ({p.num_heads}), "
                          f"got {p.hidden_size}")
    if sum(p.axes_dim) != p.head_dim:
        p = dataclasses.replace(p, axes_dim=axes_dim_for(p.head_dim))
    _check_params(p)
    return p


def build_flow_dit(preset: str, in_channels: int, cond_dim: int, *, device: torch.device | str | None = None,
                   gradient_checkpointing: bool = False, **overrides) -> FlowDiT:
    """Build a randomly initialised :class:`FlowDiT`.

    ``overrides``: hidden_size, num_heads, mlp_ratio, depth_double, depth_single, qk_norm,
    patch_size, theta (None keeps the preset).  ``device="meta"`` builds shapes only.
    """
    params = resolve_params(preset, in_channels, cond_dim, **overrides)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = FlowDiT(params)
    model.gradient_checkpointing = gradient_checkpointing
    return model


def count_params(preset: str, in_channels: int, cond_dim: int, **overrides) -> int:
    """Parameter count of a build, measured on the meta device (no memory allocated)."""
    model = build_flow_dit(preset, in_channels, cond_dim, device="meta", **overrides)
    return sum(p.numel() for p in model.parameters())

