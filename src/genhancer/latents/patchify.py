"""Latent grid <-> token sequence, the way FLUX packs its latents.

``patchify(z[B,C,h,w], p) -> [B, (h/p)(w/p), C*p*p]``: tokens in row-major grid order,
channels within a token ordered (c, ph, pw).  ``unpatchify`` is its exact inverse.
"""

from __future__ import annotations

import torch

from genhancer.errors import ShapeError


def patchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """``z[B,C,h,w]`` -> ``tokens[B, (h/p)*(w/p), C*p*p]``."""
    if z.ndim != 4:
        raise ShapeError(f"patchify: expected latents [B,C,h,w], got shape {tuple(z.shape)}")
    b, c, h, w = z.shape
    if p < 1 or h % p or w % p:
        raise ShapeError(f"patchify: latent size {(h, w)} is not divisible by patch size {p}")
    x = z.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, h: int, w: int, c: int) -> torch.Tensor:
    """``tokens[B, (h/p)*(w/p), C*p*p]`` -> ``z[B,C,h,w]`` (``h, w`` are latent sizes)."""
    if p < 1 or h % p or w % p:
        raise ShapeError(f"unpatchify: latent size {(h, w)} is not divisible by patch size {p}")
    gh, gw = h // p, w // p
    if tokens.ndim != 3 or tokens.shape[1:] != (gh * gw, c * p * p):
        raise ShapeError(f"unpatchify: expected tokens [B,{gh * gw},{c * p * p}], got {tuple(tokens.shape)}")
    b = tokens.shape[0]
    x = tokens.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)
