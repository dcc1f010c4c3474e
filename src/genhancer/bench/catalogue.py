"""Sizes of what bench measures: encoder checkpoints, latent spaces, token shapes.

The shape catalogue is enough to count parameters (:func:`vision_params`,
:func:`text_params`, :func:`lora_params`) and FLOPs (:mod:`genhancer.bench.flops`) of a
published checkpoint without downloading it; tests check it against ``transformers``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from genhancer.errors import ConfigError

# TAEF2: 32 latent channels x 2x2 patches; the published flux-lite reads 16-ch FLUX VAE latents.
TAEF2_TOKEN_CHANNELS = 32 * 2 * 2
FLUX_VAE_TOKEN_CHANNELS = 16 * 2 * 2
DEMO_IMAGE_SIZE = 64  # -> 8x8 latent -> 4x4 = 16 tokens
TOKEN_COUNTS = (16, 256)


def token_channels(preset: str) -> int:
    """Token channels a denoiser preset is benched with: its latent space's (patchified)."""
    return FLUX_VAE_TOKEN_CHANNELS if preset == "flux-lite" else TAEF2_TOKEN_CHANNELS


@dataclasses.dataclass(frozen=True)
class VisionLanguageSpec:
    """Sizes of a CLIP-family checkpoint, enough to count parameters and FLOPs."""

    family: str          # "clip" (CLS token, projection) or "siglip" (MAP head, no CLS)
    width: int
    layers: int
    mlp: int
    heads: int
    patch: int
    global_dim: int      # CLIP projection_dim; SigLIP = width (pooled output)
    text_width: int
    text_layers: int
    text_mlp: int
    text_heads: int
    vocab: int
    context: int


ENCODER_SPECS: dict[str, VisionLanguageSpec] = {
    "ViT-B/32": VisionLanguageSpec("clip", 768, 12, 3072, 12, 32, 512, 512, 12, 2048, 8, 49408, 77),
    "ViT-B/16": VisionLanguageSpec("clip", 768, 12, 3072, 12, 16, 512, 512, 12, 2048, 8, 49408, 77),
    "ViT-L/14": VisionLanguageSpec("clip", 1024, 24, 4096, 16, 14, 768, 768, 12, 3072, 12, 49408, 77),
    "ViT-H/14": VisionLanguageSpec("clip", 1280, 32, 5120, 16, 14, 1024, 1024, 24, 4096, 16, 49408, 77),
    "SO400M/14": VisionLanguageSpec("siglip", 1152, 27, 4304, 16, 14, 1152, 1152, 27, 4304, 16, 32000, 64),
}

# Latent spaces: (parameters of encoder + decoder, width of the full-resolution stage).
LATENT_SPACES = {
    "flux-vae": (83_819_683, 128),   # diffusers AutoencoderKL with FLUX.1's config
    "taef2": (2_677_027, 64),
}


def encoder_spec(vision: str | VisionLanguageSpec) -> VisionLanguageSpec:
    """A spec as given, or the catalogue's entry of a name (a one-line error if unknown)."""
    if isinstance(vision, VisionLanguageSpec):
        return vision
    if vision not in ENCODER_SPECS:
        raise ConfigError(f"vision: unknown encoder '{vision}'; expected one of {', '.join(ENCODER_SPECS)}")
    return ENCODER_SPECS[vision]


def _layer_params(w: int, m: int) -> int:
    return 4 * (w * w + w) + (w * m + m) + (m * w + w) + 4 * w


def vision_params(vision: str | VisionLanguageSpec, image_size: int) -> int:
    """Vision tower + its projection to the global token (what ``encode_image`` runs)."""
    s = encoder_spec(vision)
    w, p = s.width, s.patch
    grid = (image_size // p) ** 2
    n = s.layers * _layer_params(w, s.mlp) + 2 * w  # + post-LN
    if s.family == "clip":
        return n + w + 3 * p * p * w + (grid + 1) * w + 2 * w + w * s.global_dim
    head = w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (w * s.mlp + s.mlp + s.mlp * w + w)
    return n + 3 * p * p * w + w + grid * w + head


def text_params(vision: str | VisionLanguageSpec) -> int:
    """Text tower + projection + logit scale (and SigLIP's bias): loaded, never trained."""
    s = encoder_spec(vision)
    w = s.text_width
    n = s.vocab * w + s.context * w + s.text_layers * _layer_params(w, s.text_mlp) + 2 * w
    if s.family == "clip":
        return n + w * s.global_dim + 1
    return n + w * w + w + 2


def lora_params(vision: str | VisionLanguageSpec, r: int = 16, visual_projection: bool = True) -> int:
    """LoRA A (r x in) + B (out x r) on q, k, v, out_proj, fc1, fc2 of every vision layer
    (and the SigLIP head's out_proj, fc1, fc2), and on CLIP's visual projection when
    ``visual_projection`` (the default adapter, as upstream's)."""
    s = encoder_spec(vision)
    w, m = s.width, s.mlp
    per_layer = 4 * r * 2 * w + 2 * r * (w + m)
    head = r * 2 * w + 2 * r * (w + m) if s.family == "siglip" else 0
    proj = r * (w + s.global_dim) if visual_projection and s.family == "clip" else 0
    return s.layers * per_layer + head + proj


def lora_bias_params(vision: str | VisionLanguageSpec) -> int:
    """Biases of the linears LoRA wraps (they train with ``lora.bias=lora_only``): q, k, v,
    out_proj, fc1, fc2 per layer, and the SigLIP head's; CLIP's visual projection has none."""
    s = encoder_spec(vision)
    w, m = s.width, s.mlp
    return s.layers * (5 * w + m) + (2 * w + m if s.family == "siglip" else 0)


# FLUX.1's AutoencoderKL config (diffusers): 83,819,683 parameters, 16 latent channels.
FLUX_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=16,
                       down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                       block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                       use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                       scaling_factor=0.3611, sample_size=1024)


def spec_of(encoder) -> VisionLanguageSpec:
    """The :class:`VisionLanguageSpec` of a loaded ``VisionLanguageEncoder``."""
    if not getattr(encoder, "has_text", True):
        raise ConfigError(f"encoder.name_or_path: the memory / FLOP model covers CLIP and SigLIP dual encoders; "
                          f"'{encoder.source}' is a {type(encoder.model).__name__} (measure it instead)")
    c = encoder.model.config
    v, t = c.vision_config, c.text_config
    return VisionLanguageSpec(encoder.family, v.hidden_size, v.num_hidden_layers, v.intermediate_size,
                              v.num_attention_heads, v.patch_size, encoder.global_dim, t.hidden_size,
                              t.num_hidden_layers, t.intermediate_size, t.num_attention_heads, t.vocab_size,
                              t.max_position_embeddings)


REFERENCE_ENCODER = "ViT-B/32"


def build_reference_clip(out_dir: Path, quick: bool = False) -> Path:
    """A CLIP whose vision tower has :data:`REFERENCE_ENCODER`'s shape (224 px; random
    weights, built offline) and whose text tower is tiny (unused here): the smallest
    published CLIP, so the evaluation ratio is measured against a real encoder's cost.
    ``quick``: the same 224 px geometry at width 128 x 2 layers (for tests)."""
    from genhancer.encoders.tiny import build_tiny_clip

    s = ENCODER_SPECS[REFERENCE_ENCODER]
    shape = (dict(width=128, layers=2, heads=2, projection_dim=64) if quick else
             dict(width=s.width, layers=s.layers, heads=s.heads, projection_dim=s.global_dim))
    assert s.mlp == 4 * s.width  # build_tiny_clip's MLP ratio
    return build_tiny_clip(out_dir, image_size=224, patch_size=s.patch, text_width=64, text_layers=1,
                           text_heads=2, **shape)

