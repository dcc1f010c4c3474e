"""The discrete variant's denoiser: a Perceiver-style stack over VQ code tokens.

The paper (Sec. on the discrete variant) uses "a 6-layer Perceiver" whose cross-attention
takes queries from the token sequence and keys / values from the tokens concatenated with
the global token. Each layer here is, pre-norm:

    x = x + SelfAttn(LN(x))                                   # tokens talk to each other
    x = x + CrossAttn(q = LN(x), kv = LN([x ; c_tokens]))      # tokens read the condition
    x = x + MLP(LN(x))

``c_tokens`` is the projected global token (one token) followed by optional local
condition tokens (the paper's ablation). Input tokens are code ids; masked positions hold
the mask id ``codebook_size`` (the embedding table has ``K + 1`` rows). Output: logits over
the ``K`` real codes at every position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genhancer.errors import ConfigError, ShapeError

# Sizes per preset. The paper fixes only the depth (6 layers; SigLIP@224 depth sweep
# 2 / 4 / 6 / 8 peaks at 6); the widths are ours.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, depth=2, num_heads=4, mlp_ratio=4.0),
    "small": dict(hidden_size=256, depth=4, num_heads=4, mlp_ratio=4.0),
    "base": dict(hidden_size=512, depth=6, num_heads=8, mlp_ratio=4.0),
    "paper": dict(hidden_size=768, depth=6, num_heads=12, mlp_ratio=4.0),
}


class Attention(nn.Module):
    """Multi-head attention through SDPA; self-attention when ``context`` is None."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x[B,L,D], context[B,S,D] | None -> [B,L,D]."""
        b, n, d = x.shape
        ctx = x if context is None else context
        h = self.num_heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).reshape(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, cond_tokens: torch.Tensor) -> torch.Tensor:
        """x[B,L,D], cond_tokens[B,K,D] (already in the hidden width) -> [B,L,D]."""
        x = x + self.self_attn(self.norm_self(x))
        kv = self.norm_kv(torch.cat([x, cond_tokens], dim=1))
        x = x + self.cross_attn(self.norm_q(x), kv)
        return x + self.mlp(self.norm_mlp(x))


class PerceiverDenoiser(nn.Module):
    """Predict VQ codes at masked positions from the visible codes and the condition.

    ``forward(codes[B,L] int64, cond[B,Dc], cond_tokens[B,K,Dc] | None) -> logits[B,L,K]``.
    """

    def __init__(self, codebook_size: int, num_tokens: int, cond_dim: int, hidden_size: int = 512,
                 depth: int = 6, num_heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ConfigError(f"perceiver hidden_size: expected a multiple of num_heads ({num_heads}), "
                              f"got {hidden_size}")
        for name, v in (("codebook_size", codebook_size), ("num_tokens", num_tokens), ("cond_dim", cond_dim),
                        ("depth", depth)):
            if v < 1:
                raise ConfigError(f"perceiver {name}: expected a positive integer, got {v}")
        self.codebook_size, self.num_tokens, self.cond_dim = codebook_size, num_tokens, cond_dim
        self.hidden_size, self.depth, self.num_heads, self.mlp_ratio = hidden_size, depth, num_heads, mlp_ratio
        self.mask_id = codebook_size

        self.token_embed = nn.Embedding(codebook_size + 1, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_size))
        # One projection for every condition token; a learned type embedding tells the
        # global token (row 0) from local patch tokens (row 1).
        self.cond_norm = nn.LayerNorm(cond_dim)
        self.cond_proj = nn.Linear(cond_dim, hidden_size)
        self.cond_type = nn.Parameter(torch.zeros(2, hidden_size))
        self.layers = nn.ModuleList(PerceiverLayer(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, codebook_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.token_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cond_type, std=0.02)
        # A small head starts every position near the uniform distribution (CE ~ log K).
        nn.init.trunc_normal_(self.head.weight, std=0.02)

    def embed_condition(self, cond: torch.Tensor, cond_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """cond[B,Dc], cond_tokens[B,K,Dc] | None -> condition tokens [B,1+K,D]."""
        c = self.cond_proj(self.cond_norm(cond))[:, None] + self.cond_type[0]
        if cond_tokens is None:
            return c
        local = self.cond_proj(self.cond_norm(cond_tokens)) + self.cond_type[1]
        return torch.cat([c, local], dim=1)

    def forward(self, codes: torch.Tensor, cond: torch.Tensor,
                cond_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """codes[B,L] (mask id at masked positions), cond[B,Dc], cond_tokens[B,K,Dc] -> logits[B,L,K]."""
        if codes.ndim != 2 or codes.shape[1] != self.num_tokens or codes.dtype.is_floating_point:
            raise ShapeError(f"perceiver codes: expected integer [B,{self.num_tokens}], got {codes.dtype} "
                             f"{tuple(codes.shape)}")
        b = codes.shape[0]
        if cond.shape != (b, self.cond_dim):
            raise ShapeError(f"perceiver cond: expected [{b},{self.cond_dim}], got {tuple(cond.shape)}")
        if cond_tokens is not None and (cond_tokens.ndim != 3 or cond_tokens.shape[0] != b
                                        or cond_tokens.shape[2] != self.cond_dim):
            raise ShapeError(f"perceiver cond_tokens: expected [{b},K,{self.cond_dim}], "
                             f"got {tuple(cond_tokens.shape)}")
        x = self.token_embed(codes) + self.pos_embed
        c = self.embed_condition(cond, cond_tokens).to(x.dtype)
        for layer in self.layers:
            x = layer(x, c)
        return self.head(self.norm_out(x))


def build_perceiver(preset: str, codebook_size: int, num_tokens: int, cond_dim: int,
                    **overrides) -> PerceiverDenoiser:
    """A :class:`PerceiverDenoiser` of a named size; overrides that are None keep the preset."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown perceiver preset '{preset}'; expected one of: {', '.join(PRESETS)}")
    sizes = dict(PRESETS[preset])
    unknown = sorted(set(overrides) - set(sizes))
    if unknown:
        raise ConfigError(f"perceiver override '{unknown[0]}': expected one of {', '.join(sizes)}")
    sizes.update({k: v for k, v in overrides.items() if v is not None})
    return PerceiverDenoiser(codebook_size, num_tokens, cond_dim, **sizes)


def check_compatible(denoiser: PerceiverDenoiser, space, image_size: int | None = None) -> None:
    """Raise ConfigError when the tokenizer's codebook does not fit the denoiser's head (and,
    with ``image_size``, ShapeError when its code grid does not give ``num_tokens`` tokens)."""
    n, m = int(space.codebook_size), int(denoiser.codebook_size)
    if n != m:
        raise ConfigError(f"codebook size mismatch: tokenizer has {n} codes, denoiser expects {m}")
    if image_size is not None:
        h, w = space.latent_hw(image_size)
        if h * w != denoiser.num_tokens:
            raise ShapeError(f"token count mismatch: {image_size}px images give {h}x{w} = {h * w} codes, "
                             f"denoiser expects {denoiser.num_tokens}")
