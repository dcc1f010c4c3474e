"""TAEF2: a tiny (~1.3 M params per half) autoencoder with FLUX.2's latent layout.

32 latent channels at 8x downsampling, fast enough on CPU to encode on the fly.  The
network is written here so its ``nn.Sequential`` indices match the vendored weights
(``assets/taef2/taef2_{encoder,decoder}.pth``, MIT, by Ollin Boer Bohan); they are read
with ``torch.load(weights_only=True)`` after a sha256 check against ``SHA256SUMS``.

Raw TAEF2 latents are not unit-scaled, and FLUX.2 normalises them with statistics the
tiny model does not carry, so :class:`TAEF2Space` standardises per channel with buffers
measured on the training data by :meth:`TAEF2Space.fit_stats`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from importlib import resources

import torch
from torch import nn

from genhancer.errors import DataError, ModelLoadError, ShapeError
from genhancer.latents.base import LatentSpace

LATENT_CHANNELS = 32
WIDTH = 64
_ASSET_DIR = ("assets", "taef2")
_VERIFIED: set[str] = set()  # file names whose sha256 was checked in this process


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp to (-3, 3): keeps out-of-range latents (e.g. from a sampler) decodable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual block ``[B,64,h,w] -> [B,64,h,w]``: three 3x3 convs, identity skip, ReLU.

    ``pool`` (deepest blocks only) is a pointwise bottleneck with GroupNorm added to the
    input first; its normalisation gives the low-resolution blocks some image-wide
    context that 3x3 convs alone cannot see.
    """

    def __init__(self, n: int = WIDTH, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.pool = (nn.Sequential(nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(),
                                   nn.Conv2d(4 * n, n, 1, bias=False)) if pool else None)
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def taef2_encoder(latent_channels: int = LATENT_CHANNELS) -> nn.Sequential:
    """Image in [0, 1] ``[B,3,H,W]`` -> raw latent ``[B,32,H/8,W/8]``."""
    down = lambda: _conv(WIDTH, WIDTH, stride=2, bias=False)  # noqa: E731
    return nn.Sequential(
        _conv(3, WIDTH), Block(),
        down(), Block(), Block(), Block(),
        down(), Block(), Block(), Block(),
        down(), Block(pool=True), Block(pool=True), Block(pool=True),
        _conv(WIDTH, latent_channels),
    )


def taef2_decoder(latent_channels: int = LATENT_CHANNELS) -> nn.Sequential:
    """Raw latent ``[B,32,h,w]`` -> image in ~[0, 1] ``[B,3,8h,8w]``."""
    up = lambda: (nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False))  # noqa: E731
    return nn.Sequential(
        Clamp(), _conv(latent_channels, WIDTH), nn.ReLU(),
        Block(pool=True), Block(pool=True), Block(pool=True), *up(),
        Block(), Block(), Block(), *up(),
        Block(), Block(), Block(), *up(),
        Block(), _conv(WIDTH, 3),
    )


def _asset(name: str):
    return resources.files("genhancer").joinpath(*_ASSET_DIR, name)


def load_taef2_state(half: str) -> dict[str, torch.Tensor]:
    """The vendored state dict of ``half`` ("encoder" / "decoder"), sha256-checked once."""
    name = f"taef2_{half}.pth"
    res = _asset(name)
    try:
        data = res.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"TAEF2 weights '{name}' missing from the package ({e.strerror})") from None
    if name not in _VERIFIED:
        sums = {}
        for line in _asset("SHA256SUMS").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0].lower()
        got = hashlib.sha256(data).hexdigest()
        if sums.get(name) != got:
            raise ModelLoadError(f"TAEF2 weights '{name}': expected sha256 {sums.get(name)}, got {got}")
        _VERIFIED.add(name)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt pickle surfaces as several exception types
        raise ModelLoadError(f"TAEF2 weights '{name}': cannot be read ({type(e).__name__}: {e})") from None


class TAEF2Space(LatentSpace):
    """Continuous latent space of TAEF2: ``[B,3,H,W]`` in [-1,1] <-> ``[B,32,H/8,W/8]`` standardised.

    The encoder and decoder are frozen (no grads, always eval); the per-channel
    ``latent_mean`` / ``latent_std`` buffers (init 0 / 1) travel in ``state_dict``.
    """

    discrete = False
    downsample = 8
    channels = LATENT_CHANNELS

    def __init__(self, load_weights: bool = True):
        super().__init__()
        self.encoder = taef2_encoder()
        self.decoder = taef2_decoder()
        if load_weights:
            self.encoder.load_state_dict(load_taef2_state("encoder"), strict=True)
            self.decoder.load_state_dict(load_taef2_state("decoder"), strict=True)
        self.register_buffer("latent_mean", torch.zeros(LATENT_CHANNELS))
        self.register_buffer("latent_std", torch.ones(LATENT_CHANNELS))
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> TAEF2Space:
        # Frozen networks stay in eval mode whatever the surrounding model does.
        super().train(mode)
        self.encoder.eval()
        self.decoder.eval()
        return self

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.latent_mean.to(z.dtype)[None, :, None, None],
                self.latent_std.to(z.dtype)[None, :, None, None])

    def encode_raw(self, img: torch.Tensor) -> torch.Tensor:
        """``img[B,3,H,W]`` in [-1,1] -> unstandardised latent ``[B,32,H/8,W/8]``."""
        self.check_image(img, self.downsample)
        return self.encoder(img * 0.5 + 0.5)

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """``img[B,3,H,W]`` in [-1,1] -> standardised latent ``[B,32,H/8,W/8]``."""
        z = self.encode_raw(img)
        mean, std = self._stats(z)
        return (z - mean) / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised latent ``[B,32,h,w]`` -> image ``[B,3,8h,8w]`` in [-1,1]."""
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise ShapeError(f"TAEF2 decode: expected latents [B,{self.channels},h,w], got {tuple(z.shape)}")
        mean, std = self._stats(z)
        img = self.decoder(z * std + mean)
        return (img * 2 - 1).clamp(-1.0, 1.0)

    @torch.no_grad()
    def fit_stats(self, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 16,
                  max_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Measure per-channel mean / std of raw latents and store them in the buffers.

        ``images``: a tensor ``[N,3,H,W]`` in [-1,1] (split into ``batch_size`` chunks) or
        an iterable of such batches.  Returns ``(latent_mean[32], latent_std[32])``.
        """
        batches = images.split(batch_size) if torch.is_tensor(images) else images
        device = self.latent_mean.device
        s = torch.zeros(self.channels, dtype=torch.float64, device=device)
        sq = torch.zeros_like(s)
        n = 0
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            z = self.encode_raw(batch.to(device=device, dtype=self.encoder[0].weight.dtype)).double()
            s += z.sum(dim=(0, 2, 3))
            sq += z.pow(2).sum(dim=(0, 2, 3))
            n += z.shape[0] * z.shape[2] * z.shape[3]
        if n == 0:
            raise DataError("TAEF2 fit_stats: expected at least one image, got none")
        mean = s / n
        std = (sq / n - mean.pow(2)).clamp_min(1e-12).sqrt().clamp_min(1e-6)
        self.latent_mean.copy_(mean.to(self.latent_mean.dtype))
        self.latent_std.copy_(std.to(self.latent_std.dtype))
        return self.latent_mean.clone(), self.latent_std.clone()
