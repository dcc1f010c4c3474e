"""A diffusers ``AutoencoderKL`` (FLUX / SD VAEs) as a continuous latent space.

Latents are mapped as ``(z - shift) * scale``.  Defaults: a 16-channel VAE is taken to
be FLUX.1's (shift 0.1159, scale 0.3611, as GenHancer uses it), otherwise the VAE's own
``shift_factor`` / ``scaling_factor`` from its config (SD: 0 / 0.18215).
"""

from __future__ import annotations

from pathlib import Path

import torch

from genhancer.errors import ModelLoadError, ShapeError
from genhancer.hub import hub_offline, looks_like_path
from genhancer.latents.base import LatentSpace

FLUX_SHIFT = 0.1159
FLUX_SCALE = 0.3611


def load_autoencoder_kl(name_or_path: str, subfolder: str | None = None,
                        dtype: torch.dtype | None = None):
    """``AutoencoderKL.from_pretrained`` with failures turned into one-line ModelLoadErrors."""
    from diffusers import AutoencoderKL

    if not name_or_path:
        raise ModelLoadError("tokenizer.name_or_path: expected a diffusers AutoencoderKL dir or hub id, got ''")
    path = Path(name_or_path).expanduser()
    local = path.exists()
    if not local and looks_like_path(name_or_path):
        raise ModelLoadError(f"VAE '{name_or_path}': expected a directory with config.json, but it does not exist")
    kwargs = {"subfolder": subfolder} if subfolder else {}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if not local and hub_offline():
        kwargs["local_files_only"] = True  # fail at once instead of retrying the network
    try:
        vae = AutoencoderKL.from_pretrained(str(path) if local else name_or_path, **kwargs)
    except Exception as e:  # diffusers raises OSError, ValueError, EnvironmentError, HF errors...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if local:
            where = "local dir"
        elif kwargs.get("local_files_only"):
            where = "hub id, offline: only the local cache was searched"
        else:
            where = "hub id"
        raise ModelLoadError(f"VAE '{name_or_path}' ({where}): cannot load an AutoencoderKL: {msg}") from None
    return vae


class VAESpace(LatentSpace):
    """``encode(img[B,3,H,W] in [-1,1]) -> (z - shift) * scale`` with ``z[B,C,H/f,W/f]``.

    ``sample_posterior``: draw from the diagonal Gaussian posterior (as upstream) rather
    than take its mode.  The VAE is frozen and kept in eval mode.
    """

    discrete = False

    def __init__(self, name_or_path: str, subfolder: str | None = None, shift: float | None = None,
                 scale: float | None = None, sample_posterior: bool = True, dtype: torch.dtype | None = None):
        super().__init__()
        self.vae = load_autoencoder_kl(name_or_path, subfolder=subfolder, dtype=dtype)
        cfg = self.vae.config
        self.channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        flux_like = self.channels == 16
        if shift is None:
            shift = FLUX_SHIFT if flux_like else float(getattr(cfg, "shift_factor", None) or 0.0)
        if scale is None:
            scale = FLUX_SCALE if flux_like else float(getattr(cfg, "scaling_factor", None) or 1.0)
        self.shift = float(shift)
        self.scale = float(scale)
        self.sample_posterior = sample_posterior
        self.vae.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> VAESpace:
        super().train(mode)
        self.vae.eval()
        return self

    def extra_repr(self) -> str:
        return f"channels={self.channels}, downsample={self.downsample}, shift={self.shift}, scale={self.scale}"

    def encode(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``img[B,3,H,W]`` in [-1,1] -> scaled latent ``[B,C,H/f,W/f]``."""
        self.check_image(img, self.downsample)
        dist = self.vae.encode(img.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator=generator) if self.sample_posterior else dist.mode()
        return (z - self.shift) * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent ``[B,C,h,w]`` -> image ``[B,3,h*f,w*f]`` in [-1,1]."""
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise ShapeError(f"VAE decode: expected latents [B,{self.channels},h,w], got {tuple(z.shape)}")
        img = self.vae.decode((z / self.scale + self.shift).to(self.vae.dtype)).sample
        return img.clamp(-1.0, 1.0)
