"""Denoisers g: ``flow_dit`` (continuous, FLUX-style MM-DiT), ``sd_unet`` (a pretrained Stable
Diffusion UNet, continuous) and ``perceiver`` (discrete).

``build_denoiser(cfg, space, grid, cond_dim)`` picks one from the config; the latent
space fixes its input size (channels x patch^2, or the codebook size).
"""

from __future__ import annotations

from genhancer.config import DenoiserConfig
from genhancer.errors import ConfigError

_SIZE_KEYS = ("hidden_size", "num_heads", "mlp_ratio", "depth_double", "depth_single", "qk_norm")


def _presets(kind: str) -> dict:
    if kind == "flow_dit":
        from genhancer.denoisers.flow_dit import PRESETS
    else:
        from genhancer.denoisers.perceiver import PRESETS
    return PRESETS


def preset_hidden_size(kind: str, preset: str) -> int:
    presets = _presets(kind)
    if preset not in presets:
        raise ConfigError(f"denoiser.preset: unknown {kind} preset '{preset}'; expected one of "
                          f"{', '.join(presets)}")
    p = presets[preset]
    return p["hidden_size"] if isinstance(p, dict) else p.hidden_size


def denoiser_hidden_size(cfg: DenoiserConfig) -> int:
    """The width the denoiser will have: ``denoiser.hidden_size`` or its preset's (the projector's
    default output width); for sd_unet the UNet's cross_attention_dim, read from its config.json."""
    if cfg.kind == "sd_unet":
        from genhancer.denoisers.sd_unet import cross_attention_dim, unet_config

        return cross_attention_dim(unet_config(cfg.name_or_path, cfg.subfolder), cfg.name_or_path)
    return cfg.hidden_size or preset_hidden_size(cfg.kind, cfg.preset)


def list_denoiser_presets() -> list[str]:
    return [f"flow_dit/{n}" for n in _presets("flow_dit")] + [f"perceiver/{n}" for n in _presets("perceiver")]


def count_denoiser_params(name: str) -> int:
    """Parameters of a preset (``flux-lite`` or ``flow_dit/flux-lite``), counted on the meta device.

    flow_dit presets are counted at their published input size (64 channels = a 16-channel
    FLUX latent, 2x2 patchified) with the condition at the hidden size.
    """
    kind, _, preset = name.rpartition("/")
    kind = kind or ("flow_dit" if preset in _presets("flow_dit") else "perceiver")
    if kind not in ("flow_dit", "perceiver"):
        raise ConfigError(f"--denoiser: unknown kind '{kind}'; expected flow_dit or perceiver")
    hidden = preset_hidden_size(kind, preset)
    if kind == "flow_dit":
        from genhancer.denoisers.flow_dit import count_params

        return count_params(preset, 64, hidden)
    import torch

    from genhancer.denoisers.perceiver import build_perceiver

    with torch.device("meta"):
        model = build_perceiver(preset, 1024, 256, hidden)
    return sum(p.numel() for p in model.parameters())


def build_denoiser(cfg: DenoiserConfig, space, grid: tuple[int, int], cond_dim: int):
    if cfg.kind == "sd_unet":  # a pretrained UNet: no size preset, its own gradient checkpointing
        from genhancer.denoisers.sd_unet import build_sd_unet

        return build_sd_unet(cfg, space, cond_dim)
    overrides = {k: getattr(cfg, k) for k in _SIZE_KEYS if getattr(cfg, k, None) is not None}
    if cfg.kind == "flow_dit":
        from genhancer.denoisers.flow_dit import build_flow_dit

        model = build_flow_dit(cfg.preset, space.channels * cfg.patch_size ** 2, cond_dim, **overrides)
    else:
        from genhancer.denoisers.perceiver import build_perceiver

        if cfg.depth is not None:
            overrides["depth"] = cfg.depth
        overrides = {k: v for k, v in overrides.items() if k in ("hidden_size", "num_heads", "mlp_ratio", "depth")}
        model = build_perceiver(cfg.preset, space.codebook_size, grid[0] * grid[1], cond_dim, **overrides)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    return model
