"""DCR's augmented view, on a batch of encoder inputs already on the device.

``augmented_view(pixels[B,3,S,S], mean, std, generator) -> [B,3,S,S]``, normalised like the
input. Per image, as DCR's torchvision pipeline draws it: colour jitter (brightness,
contrast, saturation 0.1, hue 0.05), horizontal and vertical flips with p 0.5, and a
resized crop of 90-100 % of the area (aspect 0.9-1.1) back to S x S, bilinear. Written on
tensors (no torchvision: its wheels pin another torch) so the view is made where the batch
already is; the jitter is applied in a fixed order (torchvision permutes it) and the hue
shift is a rotation of the chroma plane in YIQ space (torchvision goes through HSV), which
agree to first order for shifts this small. DCR jitters the CLIP-normalised tensor; here
the jitter acts on the image in [0, 1], which is what the transform means.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.1, 0.1, 0.1, 0.05
CROP_SCALE, CROP_RATIO = (0.9, 1.0), (0.9, 1.1)   # DCR: RandomResizedCrop(scale=(0.9, 1), ratio=(0.9, 1.1))
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    dev = generator.device if generator is not None else device
    return (lo + (hi - lo) * torch.rand(n, generator=generator, device=dev)).to(device)


def _jitter(x: torch.Tensor, generator) -> torch.Tensor:
    """Colour jitter of images ``x[B,3,S,S]`` in [0, 1]."""
    b, dev = x.shape[0], x.device
    view = lambda v: v.view(b, 1, 1, 1)  # noqa: E731
    luma = torch.tensor(_LUMA, device=dev, dtype=x.dtype).view(1, 3, 1, 1)
    x = x * view(_uniform(b, 1 - BRIGHTNESS, 1 + BRIGHTNESS, generator, dev))
    gray_mean = (x * luma).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = (x - gray_mean) * view(_uniform(b, 1 - CONTRAST, 1 + CONTRAST, generator, dev)) + gray_mean
    gray = (x * luma).sum(1, keepdim=True)
    x = (x - gray) * view(_uniform(b, 1 - SATURATION, 1 + SATURATION, generator, dev)) + gray
    # Hue: rotate (I, Q) by 2 pi h around the Y axis.
    angle = 2 * math.pi * _uniform(b, -HUE, HUE, generator, dev)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=dev, dtype=x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    cos, sin = view(angle.cos()).squeeze(1), view(angle.sin()).squeeze(1)
    i, q = yiq[:, 1] * cos - yiq[:, 2] * sin, yiq[:, 1] * sin + yiq[:, 2] * cos
    yiq = torch.stack([yiq[:, 0], i, q], 1)
    x = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)
    return x.clamp(0, 1)


def _crop_flip(x: torch.Tensor, generator) -> torch.Tensor:
    """Random resized crop + flips, as one affine resampling per image."""
    b, dev = x.shape[0], x.device
    area = _uniform(b, *CROP_SCALE, generator, dev)
    log_r = _uniform(b, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator, dev)
    ratio = log_r.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)   # crop side as a fraction of the image side
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * _uniform(b, 0, 1, generator, dev) - 1)   # centre in [-1+w, 1-w]
    cy = (1 - h) * (2 * _uniform(b, 0, 1, generator, dev) - 1)
    fx = torch.where(_uniform(b, 0, 1, generator, dev) < 0.5, -1.0, 1.0)
    fy = torch.where(_uniform(b, 0, 1, generator, dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * fx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h * fy, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augmented_view(pixels: torch.Tensor, mean, std, generator: torch.Generator | None = None) -> torch.Tensor:
    """Normalised encoder inputs ``[B,3,S,S]`` -> DCR's augmented view of each, normalised."""
    m = torch.as_tensor(mean, device=pixels.device, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, device=pixels.device, dtype=torch.float32).view(1, 3, 1, 1)
    x = pixels.float() * s + m
    x = _crop_flip(_jitter(x, generator), generator)
    return ((x - m) / s).to(pixels.dtype)
