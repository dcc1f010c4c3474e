"""The latent-space interface shared by every tokenizer (taef2, vae, pixels, vq).

Contract (shapes at the door):

* ``encode(img[B,3,H,W] in [-1, 1])`` -> continuous ``latents[B,C,h,w]`` (standardised,
  roughly zero-mean unit-variance) or discrete ``codes[B,h,w]`` (int64 in [0, codebook_size)).
* ``decode(z)`` inverts it back to ``img[B,3,H,W]`` in [-1, 1].
* ``downsample``: spatial factor H / h.  ``channels``: C (continuous).
  ``codebook_size``: K (discrete).  ``discrete``: which of the two.

Everything a latent space needs to be reproduced (e.g. standardisation statistics)
lives in its ``state_dict`` (buffers), so it is saved with checkpoints and caches.
"""

from __future__ import annotations

import torch
from torch import nn

from genhancer.errors import ShapeError


class LatentSpace(nn.Module):
    discrete: bool = False
    downsample: int = 1
    channels: int = 0
    codebook_size: int = 0

    def encode(self, img: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def latent_hw(self, image_size: int, patch_size: int = 1) -> tuple[int, int]:
        """Latent grid for a square image, checking divisibility by ``downsample * patch_size``."""
        need = self.downsample * patch_size
        if image_size % need:
            raise ShapeError(f"image size {image_size} is not divisible by {need} "
                             f"(latent downsample {self.downsample} x patch size {patch_size})")
        h = image_size // self.downsample
        return h, h

    @staticmethod
    def check_image(img: torch.Tensor, downsample: int) -> None:
        if img.ndim != 4 or img.shape[1] != 3:
            raise ShapeError(f"expected images [B,3,H,W], got shape {tuple(img.shape)}")
        if img.shape[-1] % downsample or img.shape[-2] % downsample:
            raise ShapeError(f"image size {tuple(img.shape[-2:])} is not divisible by the latent "
                             f"downsample factor {downsample}")
