"""Pixel space as a latent space: the identity, for small images and CPU demos.

Patchifying (``p x p`` pixels -> one token) happens in :mod:`genhancer.latents.patchify`,
like for every other continuous space.
"""

from __future__ import annotations

import torch

from genhancer.latents.base import LatentSpace


class PixelSpace(LatentSpace):
    """``encode(img[B,3,H,W] in [-1,1]) -> img``; ``decode`` clamps back to [-1, 1]."""

    discrete = False
    downsample = 1
    channels = 3

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        self.check_image(img, self.downsample)
        return img

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # A sampled image can overshoot the data range; clamp like the other decoders.
        return z.clamp(-1.0, 1.0)
