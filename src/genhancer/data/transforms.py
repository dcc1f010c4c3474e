"""The two views of one image: what the encoder sees and what the denoiser reconstructs.

GenHancer's denoiser reconstructs the image the encoder looked at, from the encoder's
global token alone. If the two views were cropped independently, the denoiser would be
asked to reproduce pixels the encoder never saw, and the gradient reaching the encoder
would push it towards guessing instead of towards seeing fine detail. So one
RandomResizedCrop box is drawn per image and *both* views are resized from that same box:
only their size and value range differ.

Implemented with PIL (crop, then an antialiased resize per view), so the package does not
need torchvision.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from genhancer.errors import ConfigError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}

Rng = random.Random | torch.Generator | None


def _uniform(rng: Rng, lo: float, hi: float) -> float:
    if isinstance(rng, torch.Generator):
        return lo + (hi - lo) * float(torch.rand((), generator=rng, dtype=torch.float64))
    return (rng or random).uniform(lo, hi)


def _randint(rng: Rng, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi], both ends included."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(lo, hi + 1, (), generator=rng))
    return (rng or random).randint(lo, hi)


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float ``[3,H,W]`` in [0, 1]."""
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class PairedViews:
    """One crop, two views: ``pixel_values`` for the encoder, ``gen_pixels`` for the denoiser.

    Args:
        encoder_size: side Se of the encoder view (the processor's crop size).
        encoder_mean, encoder_std: the encoder processor's per-channel normalisation.
        gen_size: side Sg of the generative view (the tokenizer's image size).
        scale: RandomResizedCrop area fraction range (upstream GenHancer: (0.9, 1.0)).
        ratio: RandomResizedCrop aspect-ratio range (w / h).
        train: True draws a random crop; False takes the centred square of side
            min(W, H), i.e. "resize the shorter side, then center crop" for both views.
        interpolation: nearest, bilinear, bicubic (upstream default), lanczos or box.

    ``__call__(image, rng)`` returns ``{"pixel_values": [3,Se,Se] float32 normalised with
    encoder_mean / encoder_std, "gen_pixels": [3,Sg,Sg] float32 in [-1, 1]}``, both
    resampled from the same crop box of ``image``.
    """

    def __init__(self, encoder_size: int, encoder_mean: Sequence[float], encoder_std: Sequence[float],
                 gen_size: int, scale: tuple[float, float] = (0.9, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), train: bool = True,
                 interpolation: str = "bicubic"):
        if interpolation not in _RESAMPLE:
            raise ConfigError(f"interpolation: expected one of {', '.join(_RESAMPLE)}, got {interpolation!r}")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(f"crop scale: expected 0 < min <= max <= 1, got {tuple(scale)}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ConfigError(f"crop ratio: expected 0 < min <= max, got {tuple(ratio)}")
        if len(encoder_mean) != 3 or len(encoder_std) != 3 or min(encoder_std) <= 0:
            raise ConfigError(f"encoder mean / std: expected 3 values each, std > 0; got "
                              f"{tuple(encoder_mean)} / {tuple(encoder_std)}")
        self.encoder_size = int(encoder_size)
        self.gen_size = int(gen_size)
        self.mean = torch.tensor([float(m) for m in encoder_mean]).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in encoder_std]).view(3, 1, 1)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.train = train
        self.interpolation = interpolation
        self.resample = _RESAMPLE[interpolation]

    @classmethod
    def from_spec(cls, spec, gen_size: int | None = None, **kw) -> PairedViews:
        """Build from anything with ``size``, ``mean`` and ``std`` (the encoder's ImageSpec).

        ``gen_size`` defaults to the encoder size, as upstream GenHancer does.
        """
        return cls(spec.size, spec.mean, spec.std, gen_size or spec.size, **kw)

    # ----------------------------------------------------------------------------- crop box

    def crop_box(self, width: int, height: int, rng: Rng = None) -> tuple[int, int, int, int]:
        """The crop ``(left, top, right, bottom)`` in pixel coordinates of a W x H image.

        Train: RandomResizedCrop (area fraction in ``scale``, log-uniform aspect ratio in
        ``ratio``; after 10 misses, the largest centred box with a clamped aspect ratio).
        Eval: the centred square of side min(W, H).
        """
        if not self.train:
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            return (left, top, left + side, top + side)
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * _uniform(rng, *self.scale)
            aspect = math.exp(_uniform(rng, log_lo, log_hi))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = _randint(rng, 0, height - h)
                left = _randint(rng, 0, width - w)
                return (left, top, left + w, top + h)
        # Fallback for extreme aspect ratios: the whole image, trimmed to the ratio range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return (left, top, left + w, top + h)

    # ----------------------------------------------------------------------------- views

    def __call__(self, image: Image.Image, rng: Rng = None) -> dict[str, torch.Tensor]:
        """RGB ``image`` -> ``{"pixel_values": [3,Se,Se], "gen_pixels": [3,Sg,Sg]}``.

        ``rng`` (``random.Random`` or ``torch.Generator``) draws the crop; pass a seeded
        one for reproducible crops. Both views are resampled from the same box.
        """
        # Crop first: resizing with ``box=`` would let the bicubic kernel reach pixels
        # outside the box, so the views would show a sliver the crop excluded.
        crop = image.crop(self.crop_box(image.width, image.height, rng))
        enc = crop.resize((self.encoder_size, self.encoder_size), self.resample)
        gen = crop.resize((self.gen_size, self.gen_size), self.resample)
        pixel_values = (pil_to_tensor(enc) - self.mean) / self.std
        gen_pixels = pil_to_tensor(gen).mul_(2.0).sub_(1.0)
        return {"pixel_values": pixel_values, "gen_pixels": gen_pixels}

    def unnormalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encoder view ``[...,3,Se,Se]`` back to [0, 1] (for plots and checks)."""
        return pixel_values * self.std.to(pixel_values) + self.mean.to(pixel_values)

    def __repr__(self) -> str:
        return (f"PairedViews(encoder_size={self.encoder_size}, gen_size={self.gen_size}, "
                f"scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}, "
                f"train={self.train}, interpolation={self.interpolation!r})")
