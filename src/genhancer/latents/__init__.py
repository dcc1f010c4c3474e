"""Latent spaces the denoiser works in: ``taef2``, ``vae`` (diffusers), ``pixels``, ``vq``."""

from __future__ import annotations

from genhancer.config import TokenizerConfig
from genhancer.latents.base import LatentSpace


def build_latent_space(cfg: TokenizerConfig) -> LatentSpace:
    if cfg.kind == "taef2":
        from genhancer.latents.taef2 import TAEF2Space

        return TAEF2Space()
    if cfg.kind == "vae":
        from genhancer.latents.vae import VAESpace

        return VAESpace(cfg.name_or_path, subfolder=cfg.subfolder or None, shift=cfg.shift, scale=cfg.scale,
                        sample_posterior=cfg.sample_posterior)
    if cfg.kind == "pixels":
        from genhancer.latents.pixels import PixelSpace

        return PixelSpace()
    from genhancer.latents.vq import load_vq_space

    return load_vq_space(cfg.name_or_path)


__all__ = ["LatentSpace", "build_latent_space"]
