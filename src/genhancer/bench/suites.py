"""``genhancer bench``: what the hardware can do, and what each part of the method costs on it.

One run measures, on one machine (ratios are what to read; absolute times move with load):

1. **matmul ceiling**: best FLOP/s of square dense matmuls (fp32; bf16 too on CUDA);
2. **denoiser train step**: forward + backward of each MM-DiT preset at the demo's latent
   size (TAEF2, 64 px -> 8x8x32 latent -> 4x4 = 16 tokens of 128 channels) and at 256
   tokens, with FLOPs counted analytically (:func:`flow_dit_flops`), as FLOP/s and as a
   percentage of the matmul ceiling of the same dtype;
3. **stage 1 from images vs from the cache, and stage 2**: samples/s of a full optimizer
   step of :class:`~genhancer.enhancer.Enhancer` (tiny CLIP at 64 px, ``small`` and ``tiny``
   denoisers): from tensors in memory (the step alone; the frozen forwards a cached step
   skips are timed too, which gives the Amdahl bound of the cache), and stage 1 end to end
   from a folder of JPEGs vs from a cache built of it, through the real data path;
4. **evaluation**: images/s of :func:`genhancer.eval.common.encode_images` over image files
   (decode + preprocess + forward) against the bare encoder forward on ready tensors, for
   the tiny encoder and for one with ViT-B/32's shape (random weights);
5. **peak memory**: max RSS on CPU, ``torch.cuda.max_memory_allocated`` per section on CUDA;
6. the optimizer update alone, ``foreach`` vs fused AdamW; optionally the speed-up of
   ``torch.compile`` on the denoiser step;
7. an analytic memory estimate of a paper-sized run (:func:`memory_estimate`).

FLOPs here are multiply-adds x 2 of the matrix products only (linear layers, attention's
two batched products), the convention of MFU figures; norms, RoPE, activations and
adaLN's elementwise work are left out (a few percent of the total at these sizes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from genhancer.denoisers.flow_dit import PRESETS, TIME_EMBED_DIM, FlowDiTParams
from genhancer.errors import ConfigError

# TAEF2: 32 latent channels x 2x2 patches; the published flux-lite reads 16-ch FLUX VAE latents.
TAEF2_TOKEN_CHANNELS = 32 * 2 * 2
FLUX_VAE_TOKEN_CHANNELS = 16 * 2 * 2
DEMO_IMAGE_SIZE = 64  # -> 8x8 latent -> 4x4 = 16 tokens
TOKEN_COUNTS = (16, 256)


# ----------------------------------------------------------------------------- FLOPs


def flow_dit_flops(params: FlowDiTParams, tokens: int, txt_tokens: int = 1) -> int:
    """Forward FLOPs of one sample through a :class:`~genhancer.denoisers.flow_dit.FlowDiT`.

    ``tokens`` image tokens L, ``txt_tokens`` text-stream tokens T (1 global-token
    condition + K local ones); N = L + T. With hidden H, MLP width M, input channels C,
    condition width Dc, a linear layer costs ``2 * in * out`` per row it sees:

    * embedders: ``img_in`` on L rows, ``time_in`` / ``vector_in`` on one row,
      ``txt_in`` (two linears) on T rows;
    * double block: two adaLN projections H -> 6H (one row each), then per stream qkv,
      output projection and MLP over its own rows (together N rows), and joint attention
      ``4 * N^2 * H`` (QK^T and AV);
    * single block: adaLN H -> 3H, ``linear1`` H -> 3H + M and ``linear2`` H + M -> H over
      N rows, attention ``4 * N^2 * H``;
    * final layer: adaLN H -> 2H (one row) and H -> C over the L image rows.

    Counts matrix products only (what ``torch.utils.flop_counter`` counts); multiply by the
    batch size for a batch. A training step is taken as 3x this (backward = 2x forward).
    """
    h, c, dc = params.hidden_size, params.in_channels, params.cond_dim
    m = int(h * params.mlp_ratio)
    L, T = int(tokens), int(txt_tokens)
    n = L + T
    embed = (2 * c * h * L
             + 2 * (TIME_EMBED_DIM * h + h * h)        # time_in
             + 2 * (dc * h + h * h)                    # vector_in
             + 2 * (dc * h + h * h) * T)               # txt_in
    double = (2 * (2 * h * 6 * h)                      # img_mod, txt_mod
              + 2 * h * 3 * h * n                      # qkv (both streams)
              + 4 * n * n * h                          # joint attention
              + 2 * h * h * n                          # attention output projections
              + 2 * 2 * h * m * n)                     # MLPs
    single = (2 * h * 3 * h                            # modulation
              + 2 * h * (3 * h + m) * n                # linear1: qkv + MLP in
              + 4 * n * n * h                          # attention
              + 2 * (h + m) * h * n)                   # linear2
    final = 2 * h * 2 * h + 2 * h * c * L
    return embed + params.depth_double * double + params.depth_single * single + final


def flow_dit_train_flops(params: FlowDiTParams, tokens: int, txt_tokens: int = 1) -> int:
    """FLOPs of forward + backward of one sample: the usual 3x forward.

    Exact counts are 1-3 % lower: the first layers need no gradient of their inputs.
    """
    return 3 * flow_dit_flops(params, tokens, txt_tokens)


# ----------------------------------------------------------------------------- encoder sizes


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


def _encoder_spec(vision: str | VisionLanguageSpec) -> VisionLanguageSpec:
    if isinstance(vision, VisionLanguageSpec):
        return vision
    if vision not in ENCODER_SPECS:
        raise ConfigError(f"vision: unknown encoder '{vision}'; expected one of {', '.join(ENCODER_SPECS)}")
    return ENCODER_SPECS[vision]


def _layer_params(w: int, m: int) -> int:
    return 4 * (w * w + w) + (w * m + m) + (m * w + w) + 4 * w


def vision_params(vision: str | VisionLanguageSpec, image_size: int) -> int:
    """Vision tower + its projection to the global token (what ``encode_image`` runs)."""
    s = _encoder_spec(vision)
    w, p = s.width, s.patch
    grid = (image_size // p) ** 2
    n = s.layers * _layer_params(w, s.mlp) + 2 * w  # + post-LN
    if s.family == "clip":
        return n + w + 3 * p * p * w + (grid + 1) * w + 2 * w + w * s.global_dim
    head = w + (3 * w * w + 3 * w) + (w * w + w) + 2 * w + (w * s.mlp + s.mlp + s.mlp * w + w)
    return n + 3 * p * p * w + w + grid * w + head


def text_params(vision: str | VisionLanguageSpec) -> int:
    """Text tower + projection + logit scale (and SigLIP's bias): loaded, never trained."""
    s = _encoder_spec(vision)
    w = s.text_width
    n = s.vocab * w + s.context * w + s.text_layers * _layer_params(w, s.text_mlp) + 2 * w
    if s.family == "clip":
        return n + w * s.global_dim + 1
    return n + w * w + w + 2


def lora_params(vision: str | VisionLanguageSpec, r: int = 16) -> int:
    """LoRA A (r x in) + B (out x r) on q, k, v, out_proj, fc1, fc2 of every vision layer
    (and the SigLIP head's out_proj, fc1, fc2)."""
    s = _encoder_spec(vision)
    w, m = s.width, s.mlp
    per_layer = 4 * r * 2 * w + 2 * r * (w + m)
    head = r * 2 * w + 2 * r * (w + m) if s.family == "siglip" else 0
    return s.layers * per_layer + head


def vit_forward_flops(vision: str | VisionLanguageSpec, image_size: int) -> int:
    """Matmul FLOPs of one image through the vision tower (patch embedding, layers)."""
    s = _encoder_spec(vision)
    w, p = s.width, s.patch
    patches = (image_size // p) ** 2
    n = patches + (1 if s.family == "clip" else 0)
    layer = 2 * n * (4 * w * w + 2 * w * s.mlp) + 4 * n * n * w
    return 2 * patches * 3 * p * p * w + s.layers * layer + 2 * w * s.global_dim


# ----------------------------------------------------------------------------- memory estimate

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def memory_estimate(vision: str | VisionLanguageSpec = "ViT-L/14", image_size: int = 224,
                    denoiser: str = "flux-lite", batch: int = 16, dtype: str = "bf16",
                    grad_ckpt: bool = True, stage: int | str = 2, *, weights: str | None = None,
                    lora_r: int = 16, lora_dropout: float = 0.1, train_projector: bool = True,
                    train_denoiser: bool = True, projector_hidden: int = 768,
                    latent_space: str | None = None) -> dict[str, Any]:
    """Analytic GPU memory (GB = 1e9 bytes) of one training process, by term.

    Assumptions:

    * **Weights** of everything the enhancer holds: vision tower + projection
      (``vision_params``; ViT-L/14 ~304 M), text tower (loaded, never run in training;
      ~123 M), the latent space (FLUX VAE 83.8 M for ``flux-lite``, else TAEF2 2.7 M),
      projector (LayerNorm -> Dg x ``projector_hidden`` -> cond dim = denoiser hidden),
      denoiser (``count_params`` of the preset; flux-lite 1.31 B), LoRA adapters.
      Stored at ``weights`` bytes per parameter (default: ``dtype``). ``weights="fp32",
      dtype="bf16"`` is what ``genhancer train`` does (accelerate autocast);
      ``weights="bf16"`` is DeepSpeed-style bf16 training (upstream).
    * **Trainable**: stage 1 projector + denoiser; stage 2 LoRA (r = ``lora_r``) +
      projector / denoiser when ``train_projector`` / ``train_denoiser``; e2e all three.
      For them: fp32 master copies when weights are 16-bit (4 B), gradients in the
      weights' dtype, AdamW's two fp32 states (8 B). No ZeRO sharding (divide gradients,
      master copies and optimizer by the number of GPUs for ZeRO-2).
    * **Activations** in ``dtype`` (attention through SDPA, so no L x L matrices kept).
      Kept per token and layer: ViT layer 8w + 2m (LN in/out, q, k, v, attention out,
      LN2 in/out, MLP hidden before / after GELU), plus 5w + m for LoRA dropout copies
      and 1-byte masks when ``lora_dropout > 0``; MM-DiT block 16h + 2m (the same plus
      modulated inputs, gated outputs, QK-norm / RoPE copies). With ``grad_ckpt`` each
      layer keeps only its input (w or h per token) and one layer's full set is live
      during its recomputation. The vision tower keeps a graph only where LoRA trains
      (stage 2 / e2e); the denoiser always does (gradients reach the projector, and in
      stage 2 the encoder, through it). Encoder tokens: (S / patch)^2 (+1 CLS for CLIP);
      denoiser tokens: (S / 16)^2 + 1 text token.
    * **Transient**: the frozen autoencoder encoding the batch without a graph, taken as
      three full-resolution feature maps of its first stage (width x S^2).
    * Not counted: CUDA context (~0.5 GB), allocator fragmentation, data loader buffers.

    ``latent_space``: ``"flux-vae"`` or ``"taef2"`` (default: the FLUX VAE for ``flux-lite``,
    TAEF2 otherwise).
    """
    from genhancer.denoisers.flow_dit import count_params

    stage = str(stage)
    if stage not in ("1", "2", "e2e"):
        raise ConfigError(f"stage: expected 1, 2 or e2e, got {stage!r}")
    for name, v in (("dtype", dtype), ("weights", weights or dtype)):
        if v not in _BYTES:
            raise ConfigError(f"{name}: expected one of {', '.join(_BYTES)}, got {v!r}")
    if denoiser not in PRESETS:
        raise ConfigError(f"denoiser: unknown flow_dit preset '{denoiser}'; expected one of {', '.join(PRESETS)}")
    spec = _encoder_spec(vision)
    wb, ab = _BYTES[weights or dtype], _BYTES[dtype]
    space = latent_space or ("flux-vae" if denoiser == "flux-lite" else "taef2")
    if space not in LATENT_SPACES:
        raise ConfigError(f"latent_space: expected one of {', '.join(LATENT_SPACES)}, got {space!r}")
    in_ch = FLUX_VAE_TOKEN_CHANNELS if space == "flux-vae" else TAEF2_TOKEN_CHANNELS
    dp = PRESETS[denoiser]
    h, mh = dp.hidden_size, int(dp.hidden_size * dp.mlp_ratio)
    dg = spec.global_dim

    counts = {
        "vision": vision_params(spec, image_size),
        "text": text_params(spec),
        "latent_space": LATENT_SPACES[space][0],
        "projector": 2 * dg + dg * projector_hidden + projector_hidden + projector_hidden * h + h,
        "denoiser": count_params(denoiser, in_ch, h),
        "lora": lora_params(spec, lora_r) if stage in ("2", "e2e") else 0,
    }
    train_proj = train_projector if stage == "2" else True
    train_den = train_denoiser if stage == "2" else True
    trainable = (counts["lora"] + (counts["projector"] if train_proj else 0)
                 + (counts["denoiser"] if train_den else 0))
    gb = 1e9
    params_gb = {k: v * wb / gb for k, v in counts.items()}

    # activations
    w, m = spec.width, spec.mlp
    enc_tokens = (image_size // spec.patch) ** 2 + (1 if spec.family == "clip" else 0)
    grid = image_size // 16
    den_tokens = grid * grid + 1
    lora_on = stage in ("2", "e2e")
    act = {"encoder": 0.0, "denoiser": 0.0}
    if lora_on:
        full = (8 * w + 2 * m) * ab
        if lora_dropout > 0:
            full += (5 * w + m) * (ab + 1)
        per_layer_full = batch * enc_tokens * full
        if grad_ckpt:
            act["encoder"] = spec.layers * batch * enc_tokens * w * ab + per_layer_full
        else:
            act["encoder"] = spec.layers * per_layer_full
    blocks = dp.depth_double + dp.depth_single
    block_full = batch * den_tokens * (16 * h + 2 * mh) * ab
    if grad_ckpt:
        act["denoiser"] = blocks * batch * den_tokens * h * ab + block_full
    else:
        act["denoiser"] = blocks * block_full
    act["denoiser"] += batch * (grid * grid) * (2 * h + 2 * in_ch) * ab  # final layer + target / output
    act["latent_space_transient"] = 3 * batch * LATENT_SPACES[space][1] * image_size ** 2 * ab
    act_gb = {k: v / gb for k, v in act.items()}

    master = trainable * 4 / gb if wb < 4 else 0.0
    grads = trainable * wb / gb
    optim = trainable * 8 / gb
    total = sum(params_gb.values()) + master + grads + optim + sum(act_gb.values())
    return {
        "inputs": {"vision": vision if isinstance(vision, str) else dataclasses.asdict(vision),
                   "image_size": image_size, "denoiser": denoiser, "batch": batch, "dtype": dtype,
                   "weights": weights or dtype, "grad_ckpt": grad_ckpt, "stage": stage, "lora_r": lora_r,
                   "train_projector": train_proj, "train_denoiser": train_den, "latent_space": space},
        "param_counts": {**counts, "trainable": trainable},
        "bytes_per_param": wb,
        "params_gb": params_gb,
        "params_total_gb": sum(params_gb.values()),
        "master_weights_gb": master,
        "gradients_gb": grads,
        "optimizer_gb": optim,
        "activations_gb": act_gb,
        "activations_total_gb": sum(act_gb.values()),
        "total_gb": total,
    }


# ----------------------------------------------------------------------------- shared step


def _random_images(enhancer, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random image batch of an Enhancer's two views: pixel_values [B,3,Se,Se], gen_pixels [B,3,Sg,Sg]."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    s_enc, s_gen = enhancer.encoder.spec.size, enhancer.gen_size
    return {"pixel_values": torch.randn(batch, 3, s_enc, s_enc, generator=g).to(device),
            "gen_pixels": (torch.rand(batch, 3, s_gen, s_gen, generator=g) * 2 - 1).to(device)}


def _optimizer_step(cfg, enhancer, next_batch: Callable[[], dict], device: torch.device,
                    amp: torch.dtype | None) -> tuple[Callable[[], None], int]:
    """A closure running one optimizer step as ``genhancer train`` does (its optimizer, autocast,
    gradient clipping) on ``next_batch()``, and the number of trainable parameters."""
    from genhancer.train import build_optimizer

    params = [p for p in enhancer.parameters() if p.requires_grad]
    opt = build_optimizer(cfg, params)[0]
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        data = next_batch()
        with _autocast(device, amp):
            loss = enhancer(data, generator=gen)["loss"]
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


# ----------------------------------------------------------------------------- measured memory

# FLUX.1's AutoencoderKL config (diffusers): 83,819,683 parameters, 16 latent channels.
FLUX_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=16,
                       down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                       block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                       use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                       scaling_factor=0.3611, sample_size=1024)


def spec_of(encoder) -> VisionLanguageSpec:
    """The :class:`VisionLanguageSpec` of a loaded ``VisionLanguageEncoder``."""
    c = encoder.model.config
    v, t = c.vision_config, c.text_config
    return VisionLanguageSpec(encoder.family, v.hidden_size, v.num_hidden_layers, v.intermediate_size,
                              v.num_attention_heads, v.patch_size, encoder.global_dim, t.hidden_size,
                              t.num_hidden_layers, t.intermediate_size, t.num_attention_heads, t.vocab_size,
                              t.max_position_embeddings)


def param_counts(enhancer) -> dict[str, int]:
    """Parameters of a built ``Enhancer`` by the terms of :func:`memory_estimate`."""
    enc = enhancer.encoder

    def n(mod, lora: bool | None = None):
        return sum(p.numel() for name, p in mod.named_parameters()
                   if lora is None or (("lora_" in name) == lora))

    vision = n(enc.vision_tower, lora=False)
    if enc.family == "clip":
        vision += n(enc.model.visual_projection)
    return {"vision": vision, "text": n(enc.model, lora=False) - vision, "latent_space": n(enhancer.space),
            "projector": n(enhancer.projector), "denoiser": n(enhancer.denoiser),
            "lora": n(enc.vision_tower, lora=True),
            "trainable": sum(p.numel() for p in enhancer.parameters() if p.requires_grad)}


def estimate_for(cfg, enhancer) -> dict[str, Any]:
    """:func:`memory_estimate` with every input read off a config and the Enhancer built from it."""
    from genhancer.train import _mixed_precision

    mp = _mixed_precision(cfg)
    if cfg.tokenizer.kind not in ("taef2", "vae"):
        raise ConfigError(f"tokenizer.kind: the memory estimate covers taef2 and vae, got '{cfg.tokenizer.kind}'")
    return memory_estimate(
        vision=spec_of(enhancer.encoder), image_size=enhancer.encoder.spec.size, denoiser=cfg.denoiser.preset,
        batch=cfg.data.batch_size, dtype={"bf16": "bf16", "fp16": "fp16"}.get(mp, "fp32"), weights="fp32",
        grad_ckpt=bool(cfg.encoder.gradient_checkpointing and cfg.denoiser.gradient_checkpointing),
        stage=cfg.train.stage, lora_r=cfg.lora.r, lora_dropout=cfg.lora.dropout,
        train_projector=cfg.train.train_projector, train_denoiser=cfg.train.train_denoiser,
        projector_hidden=cfg.projector.hidden_dim, latent_space="flux-vae" if cfg.tokenizer.kind == "vae" else "taef2")


def measure_recipe_memory(cfg, device: torch.device | None = None, steps: int = 2) -> dict[str, Any]:
    """Peak memory of ``steps`` real optimizer steps of ``cfg`` (its stage, batch, precision,
    checkpointing; random inputs; stage 2 starts from fresh weights, which costs the same
    memory) next to :func:`estimate_for` of the same config. The peak is
    ``torch.cuda.max_memory_allocated`` on CUDA; on CPU only the parameter counts are compared
    (``measured_peak_gb`` is None: RSS mixes in the interpreter and libraries)."""
    from genhancer.enhancer import Enhancer
    from genhancer.train import _mixed_precision

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    enhancer = Enhancer(cfg)
    enhancer.set_stage(cfg.train.stage)
    estimate = estimate_for(cfg, enhancer)
    counts = param_counts(enhancer)
    enhancer.to(device).train()
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(_mixed_precision(cfg)) if cuda else None
    b = cfg.data.batch_size
    batch = _random_images(enhancer, b, device)
    step = _optimizer_step(cfg, enhancer, lambda: batch, device, amp)[0]
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
    return {"device": _device_name(device), "stage": cfg.train.stage, "batch": b,
            "mixed_precision": _mixed_precision(cfg), "measured_peak_gb": peak,
            "estimate_gb": estimate["total_gb"], "estimate": estimate, "param_counts": counts,
            "step_s": min(times)}


def build_random_recipe(recipe: str, work: Path, vision: str = "ViT-L/14", image_size: int = 224,
                        overrides: tuple[str, ...] = ()):
    """``recipe``'s config with its encoder and VAE replaced by random-weight copies of the
    same shapes, built offline under ``work`` (a CLIP of ``vision``'s shape; FLUX.1's
    AutoencoderKL config): a paper-sized run's memory can be measured on a machine without
    the hub. The text tower keeps the shape but a small vocabulary (1,000 BPE tokens)."""
    from diffusers import AutoencoderKL

    from genhancer.config import load_config
    from genhancer.encoders.tiny import build_tiny_clip

    s = _encoder_spec(vision)
    if s.family != "clip" or s.mlp != 4 * s.width or s.text_mlp != 4 * s.text_width:
        raise ConfigError(f"vision: random recipes are built for CLIP shapes with 4x MLPs, not '{vision}'")
    clip_dir = work / f"clip-{vision.replace('/', '-')}-{image_size}"
    if not (clip_dir / "config.json").exists():
        build_tiny_clip(clip_dir, image_size=image_size, patch_size=s.patch, width=s.width, layers=s.layers,
                        heads=s.heads, text_width=s.text_width, text_layers=s.text_layers, text_heads=s.text_heads,
                        projection_dim=s.global_dim)
    vae_dir = work / "flux-vae"
    if not (vae_dir / "config.json").exists():
        torch.manual_seed(0)
        AutoencoderKL(**FLUX_VAE_CONFIG).save_pretrained(vae_dir)
    return load_config(recipe, [f"encoder.name_or_path={clip_dir}", f"tokenizer.name_or_path={vae_dir}",
                                "tokenizer.subfolder=", f"train.output_dir={work / 'run'}", *overrides])


# ----------------------------------------------------------------------------- timing helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int,
               min_time: float = 0.0, max_reps: int = 50) -> tuple[float, float]:
    """(best, median) seconds of ``fn``: ``warmup`` untimed calls, then at least ``reps`` timed
    ones, more until ``min_time`` seconds were spent (at most ``max_reps``). The best of N
    is the least disturbed by other processes on a shared machine."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    while len(times) < reps or (sum(times) < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def _interleaved_times(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, reps: int,
                       min_time: float = 0.0, max_reps: int = 50) -> dict[str, tuple[float, float]]:
    """Like :func:`_best_time` for several functions whose times are compared: they run in
    turn, so a change in the machine's load hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    rounds = 0
    while rounds < reps or (sum(map(sum, times.values())) < min_time and rounds < max_reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
        rounds += 1
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def _rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


class _Peak:
    """Peak memory of one section: CUDA allocator peak, or the process RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self.mb = _rss_mb()
        return False


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ----------------------------------------------------------------------------- measurements


def bench_matmul(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...], warmup: int = 2,
                 reps: int = 3, min_time: float = 0.5) -> dict[str, Any]:
    """Best FLOP/s of ``n x n @ n x n`` over ``sizes``."""
    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best, _ = _best_time(lambda a=a, b=b: torch.mm(a, b), device, warmup, reps, min_time)
        by_size[n] = 2 * n ** 3 / best
        del a, b
    n_best = max(by_size, key=by_size.get)
    return {"dtype": str(dtype).removeprefix("torch."), "best_size": n_best, "flops": by_size[n_best],
            "by_size": {str(k): v for k, v in by_size.items()}}


def _denoiser_in_channels(preset: str) -> int:
    return FLUX_VAE_TOKEN_CHANNELS if preset == "flux-lite" else TAEF2_TOKEN_CHANNELS


def _denoiser_step(model: torch.nn.Module, tokens: int, batch: int, device: torch.device,
                   amp: torch.dtype | None, compile: bool = False) -> Callable[[], None]:
    """One forward + backward of ``model`` on fixed random tokens (gradients dropped)."""
    model.train()
    cin, hidden = model.params.in_channels, model.params.cond_dim
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, tokens, cin, generator=g).to(device)
    target = torch.randn(batch, tokens, cin, generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    cond = torch.randn(batch, hidden, generator=g).to(device)
    run = torch.compile(model) if compile else model
    weights = list(model.parameters())

    def step():
        with _autocast(device, amp):
            out = run(x, t, cond)
        loss = (out.float() - target).pow(2).mean()
        loss.backward()
        for p in weights:
            p.grad = None

    return step


def bench_denoiser(preset: str, tokens: int, batch: int, device: torch.device,
                   amp: torch.dtype | None = None, warmup: int = 1, reps: int = 2,
                   min_time: float = 0.0) -> dict[str, Any]:
    """Forward + backward of one denoiser step on random tokens; FLOPs counted analytically."""
    from genhancer.denoisers.flow_dit import build_flow_dit

    side = math.isqrt(tokens)
    tokens = side * side
    model = build_flow_dit(preset, _denoiser_in_channels(preset), PRESETS[preset].hidden_size).to(device)
    best, median = _best_time(_denoiser_step(model, tokens, batch, device, amp), device, warmup, reps, min_time)
    flops = batch * flow_dit_train_flops(model.params, tokens, 1)
    return {"preset": preset, "tokens": tokens, "batch": batch, "params": sum(p.numel() for p in model.parameters()),
            "dtype": str(amp).removeprefix("torch.") if amp else "float32", "flops_per_step": flops,
            "step_s": best, "step_s_median": median, "flops_per_s": flops / best,
            "samples_per_s": batch / best}


def bench_optimizer(preset: str, device: torch.device, warmup: int = 1, reps: int = 2,
                    min_time: float = 0.0) -> dict[str, Any]:
    """One AdamW update of a denoiser preset's parameters: the ``foreach`` implementation
    (torch's default) vs the fused kernel the training loop uses, timed in turn."""
    from genhancer.denoisers.flow_dit import build_flow_dit

    params = list(build_flow_dit(preset, _denoiser_in_channels(preset), PRESETS[preset].hidden_size)
                  .to(device).parameters())
    g = torch.Generator(device="cpu").manual_seed(0)
    for prm in params:
        prm.grad = torch.randn(prm.shape, generator=g).to(device)
    opts = {"foreach": torch.optim.AdamW(params, lr=1e-6, foreach=True),
            "fused": torch.optim.AdamW(params, lr=1e-6, fused=True)}
    t = _interleaved_times({k: o.step for k, o in opts.items()}, device, warmup, reps, min_time)
    return {"preset": preset, "params": sum(p.numel() for p in params),
            "foreach_s": t["foreach"][0], "fused_s": t["fused"][0], "speedup": t["foreach"][0] / t["fused"][0]}


def bench_compile(preset: str, tokens: int, batch: int, device: torch.device, amp: torch.dtype | None = None,
                  warmup: int = 1, reps: int = 2, min_time: float = 0.0) -> dict[str, Any]:
    """Eager vs ``torch.compile`` of the same denoiser step, timed in turn.

    ``compile_s`` is the first compiled call; inductor's on-disk cache makes it seconds
    instead of a minute when the same graphs were compiled before.
    """
    from genhancer.denoisers.flow_dit import build_flow_dit

    model = build_flow_dit(preset, _denoiser_in_channels(preset), PRESETS[preset].hidden_size).to(device)
    eager = _denoiser_step(model, tokens, batch, device, amp)
    compiled = _denoiser_step(model, tokens, batch, device, amp, compile=True)
    try:
        t0 = time.perf_counter()
        compiled()  # compiles forward and backward graphs
        _sync(device)
        compile_s = time.perf_counter() - t0
        t = _interleaved_times({"eager": eager, "compiled": compiled}, device, warmup, reps, min_time)
    finally:
        torch._dynamo.reset()
    return {"preset": preset, "tokens": tokens, "batch": batch, "eager_step_s": t["eager"][0],
            "compiled_step_s": t["compiled"][0], "speedup": t["eager"][0] / t["compiled"][0],
            "compile_s": compile_s}


def _enhancer_config(clip_dir: Path, preset: str = "small", overrides: tuple[str, ...] = ()):
    from genhancer.config import load_config

    return load_config("tiny", [f"encoder.name_or_path={clip_dir}", f"denoiser.preset={preset}", *overrides])


def _file_streams(clip_dir: Path, preset: str, enhancer, work: Path, batch: int, n_images: int):
    """The two real ``BatchStream`` s of ``genhancer train``: a folder of 256 px JPEGs (decode,
    random resized crops to both views; ``num_workers=0``, so loading is in the timed step as
    it is in the demo) and a cache built from the same folder by :func:`build_cache`."""
    from genhancer.cache import build_cache
    from genhancer.train import BatchStream

    folder = work / f"stage1_images_{n_images}"
    if not folder.exists():
        _write_images(folder, n_images, seed=1)
    common = (f"data.batch_size={batch}", "data.num_workers=0")
    files_cfg = _enhancer_config(clip_dir, preset, ("data.kind=folder", f"data.path={folder}", *common))
    cache_dir = work / f"stage1_cache_{n_images}"
    if not cache_dir.exists():
        build_cache(files_cfg, cache_dir, progress=False)
    cache_cfg = _enhancer_config(clip_dir, preset, ("data.kind=cache", f"data.path={cache_dir}", *common))
    return BatchStream(files_cfg, enhancer, 0, 1), BatchStream(cache_cfg, enhancer, 0, 1)


def bench_enhancer(clip_dir: Path, device: torch.device, batch: int, amp: torch.dtype | None = None,
                   warmup: int = 1, reps: int = 2, min_time: float = 0.0, preset: str = "small",
                   work: Path | None = None, n_images: int = 256) -> dict[str, Any]:
    """samples/s of a full optimizer step: stage 1 from images, stage 1 from cached tensors,
    stage 2 (LoRA on the vision tower) from images.

    The cache removes the encoder forward and the latent encoding from a stage-1 step, so
    its speed-up is bounded by Amdahl's law: (encoder + latent encode + cached step) / cached
    step. Both parts are timed in the same rounds, so the bound (``cache_bound``) is measured
    too. It is large for a light denoiser and shrinks as the denoiser grows (hence two presets).

    With ``work`` (a scratch folder), stage 1 is also timed end to end through the real data
    path, as ``genhancer train`` runs it: the next batch from a folder of ``n_images`` JPEGs
    vs from a cache of them, plus the step (``stage1_files`` / ``stage1_cache_files``)."""
    from genhancer.enhancer import Enhancer

    cfg = _enhancer_config(clip_dir, preset)
    # Two enhancers, so stage 1 runs on an encoder without LoRA wrappers while the
    # stage-2 one has them; all steps are then timed in turn.
    stage1 = Enhancer(cfg).to(device).train()
    stage2 = Enhancer(cfg).to(device).train()
    stage1.set_stage("1")
    stage2.set_stage("2")
    g = torch.Generator(device="cpu").manual_seed(1)
    s_enc = stage1.encoder.spec.size
    raw = _random_images(stage1, batch, device)
    with torch.no_grad():
        latents = stage1.target(raw["gen_pixels"])
    cached = {"global_token": torch.randn(batch, stage1.encoder.global_dim, generator=g).to(device),
              "latents": torch.randn(latents.shape, generator=g).to(device)}

    def make_step(enhancer, next_batch: Callable[[], dict]):
        return _optimizer_step(cfg, enhancer, next_batch, device, amp)

    def inputs():  # the two frozen forwards a cached step does not run
        with _autocast(device, amp):
            stage1.encode(raw["pixel_values"])
            stage1.target(raw["gen_pixels"])

    (s1_raw, n1), (s1_cache, _), (s2, n2) = (make_step(stage1, lambda: raw), make_step(stage1, lambda: cached),
                                             make_step(stage2, lambda: raw))
    fns = {"stage1_uncached": s1_raw, "stage1_cached": s1_cache, "stage2": s2, "frozen_inputs": inputs}
    if work is not None:
        files, cache = _file_streams(clip_dir, preset, stage1, work, batch, n_images)

        def from_stream(stream):
            def next_batch():
                return {k: v.to(device) for k, v in stream.next().items() if torch.is_tensor(v)}
            return next_batch

        fns["stage1_files"] = make_step(stage1, from_stream(files))[0]
        fns["stage1_cache_files"] = make_step(stage1, from_stream(cache))[0]
    t = _interleaved_times(fns, device, warmup, reps, min_time)
    best = {k: v[0] for k, v in t.items()}
    out = {"batch": batch, "denoiser": cfg.denoiser.preset, "encoder_image_size": s_enc,
           "latent_shape": list(latents.shape[1:]), "trainable_stage1": n1, "trainable_stage2": n2,
           "stage1_uncached_samples_per_s": batch / best["stage1_uncached"],
           "stage1_cached_samples_per_s": batch / best["stage1_cached"],
           "cache_speedup": best["stage1_uncached"] / best["stage1_cached"],
           "cache_bound": (best["frozen_inputs"] + best["stage1_cached"]) / best["stage1_cached"],
           "stage2_samples_per_s": batch / best["stage2"],
           "step_s": best, "step_s_median": {k: v[1] for k, v in t.items()}}
    if work is not None:
        out.update({"files_images": n_images,
                    "stage1_files_samples_per_s": batch / best["stage1_files"],
                    "stage1_cache_files_samples_per_s": batch / best["stage1_cache_files"],
                    "cache_speedup_files": best["stage1_files"] / best["stage1_cache_files"]})
    return out


def _write_images(folder: Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
    """``n`` smooth random JPEGs (photographs compress like this, unlike white noise)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
        p = folder / f"{i}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def bench_eval(clip_dir: Path, device: torch.device, work: Path, n_images: int, batch_size: int = 32,
               warmup: int = 1, reps: int = 2, min_time: float = 0.0,
               fp32_flops: float | None = None, inline: bool = True) -> dict[str, Any]:
    """``encode_images`` over files (as ``run_mmvp`` does) vs the bare encoder forward on the
    same images already decoded and preprocessed. ``inline``: also time decoding without
    reader threads (what overlapping decode with the forward buys)."""
    from genhancer.encoders import load_encoder
    from genhancer.eval.common import encode_images, open_image, resolve_encoder

    folder = work / f"eval_images_{n_images}"
    paths = sorted(folder.glob("*.jpg"), key=lambda q: int(q.stem)) if folder.exists() else []
    if len(paths) != n_images:
        paths = _write_images(folder, n_images)
    encoder, dev = resolve_encoder(load_encoder(str(clip_dir)), device)
    pixels = encoder.preprocess([open_image(p) for p in paths]).to(dev)

    def full():
        encode_images(encoder, paths, batch_size, dev)

    def no_threads():
        encode_images(encoder, paths, batch_size, dev, readers=0)

    @torch.inference_mode()
    def bare():
        for chunk in pixels.split(batch_size):
            encoder.encode_image(chunk)

    fns = {"full": full, "bare": bare} | ({"inline": no_threads} if inline else {})
    t = _interleaved_times(fns, dev, warmup, reps, min_time)
    t_full, t_bare = t["full"][0], t["bare"][0]
    overhead = max(t_full - t_bare, 0.0) / n_images
    vc = encoder.model.config.vision_config
    out = {"images": n_images, "image_size_on_disk": 256, "encoder_image_size": encoder.spec.size,
           "encoder_shape": {"width": vc.hidden_size, "layers": vc.num_hidden_layers, "patch": vc.patch_size,
                             "params": sum(p.numel() for p in encoder.vision_tower.parameters())},
           "batch_size": batch_size, "eval_images_per_s": n_images / t_full,
           "bare_forward_images_per_s": n_images / t_bare, "ratio": t_full / t_bare,
           "overhead_ms_per_image": overhead * 1e3}
    if inline:
        out.update({"inline_decode_images_per_s": n_images / t["inline"][0],
                    "ratio_inline": t["inline"][0] / t_bare})
    if fp32_flops:
        # The decode + preprocess cost per image does not depend on the encoder; set it
        # against a real encoder's forward at the measured ceiling to see what it means there.
        vit_s = vit_forward_flops("ViT-L/14", 224) / fp32_flops
        out["projected_ratio_vit_l14_224"] = 1 + overhead / vit_s
    return out


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


# ----------------------------------------------------------------------------- report


def _fmt_flops(x: float) -> str:
    for unit, scale in (("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOP/s"


def format_table(res: dict[str, Any]) -> str:
    lines = [f"genhancer bench — {res['device']} | torch {res['torch']} | {res['threads']} threads | "
             f"load average {res['load_average_start']:.1f} -> {res['load_average_end']:.1f}"
             + (" | quick" if res["quick"] else "")]

    def section(title):
        lines.append("")
        lines.append(title)
        lines.append("-" * len(title))

    section("matmul ceiling")
    for k, v in res["matmul"].items():
        sizes = ", ".join(f"{n}: {_fmt_flops(f)}" for n, f in v["by_size"].items())
        lines.append(f"  {k:<6} best {_fmt_flops(v['flops']):>16}   ({sizes})")

    section("denoiser train step (fwd + bwd, analytic FLOPs = 3 x forward)")
    lines.append(f"  {'preset':<10}{'params':>10}{'tokens':>8}{'batch':>7}{'dtype':>10}{'GFLOP/step':>12}"
                 f"{'ms/step':>10}{'achieved':>18}{'% ceiling':>11}")
    for r in res["denoiser"]:
        lines.append(f"  {r['preset']:<10}{r['params'] / 1e6:>9.2f}M{r['tokens']:>8}{r['batch']:>7}"
                     f"{r['dtype']:>10}{r['flops_per_step'] / 1e9:>12.2f}{r['step_s'] * 1e3:>10.1f}"
                     f"{_fmt_flops(r['flops_per_s']):>18}{r['pct_of_ceiling']:>10.1f}%")
    if "optimizer" in res:
        o = res["optimizer"]
        lines.append(f"  AdamW update of {o['preset']} ({o['params'] / 1e6:.2f} M): foreach {o['foreach_s'] * 1e3:.1f} ms, "
                     f"fused {o['fused_s'] * 1e3:.1f} ms ({o['speedup']:.2f}x; the training loop uses fused)")

    e = res["enhancer"]
    section(f"enhancer optimizer step (tiny CLIP @ {e['encoder_image_size']} px, batch {e['batch']})")
    lines.append(f"  {'':<40}{'from tensors':>14}{'from files':>12}")
    for k in ("enhancer", "enhancer_tiny"):
        if k not in res:
            continue
        r = res[k]
        files = r.get("stage1_files_samples_per_s")
        cache_files = r.get("stage1_cache_files_samples_per_s")

        def row(label, a, b):
            lines.append(f"  {label:<40}{a:>14.1f}{(f'{b:.1f}' if b else '-'):>12}")

        den = r["denoiser"]
        row(f"{den} stage 1 from images (samples/s)", r["stage1_uncached_samples_per_s"], files)
        row(f"{den} stage 1 from cache (samples/s)", r["stage1_cached_samples_per_s"], cache_files)
        lines.append(f"  {den} cache speed-up {r['cache_speedup']:.2f}x of a {r['cache_bound']:.2f}x bound"
                     + (f"; from files {r['cache_speedup_files']:.2f}x" if "cache_speedup_files" in r else ""))
    lines.append(f"  stage 2 (LoRA), {e['denoiser']}, images {e['stage2_samples_per_s']:>8.1f} samples/s")

    for key in ("eval", "eval_reference"):
        if key not in res:
            continue
        v = res[key]
        sh = v["encoder_shape"]
        section(f"evaluation encoding, {v.get('encoder', 'tiny CLIP')} (width {sh['width']} x {sh['layers']} layers, "
                f"{sh['params'] / 1e6:.1f} M; {v['images']} JPEGs {v['image_size_on_disk']} px -> "
                f"{v['encoder_image_size']} px, batch {v['batch_size']})")
        lines.append(f"  encode_images (files)    {v['eval_images_per_s']:>10.1f} images/s")
        if "inline_decode_images_per_s" in v:
            lines.append(f"  ... without reader threads {v['inline_decode_images_per_s']:>8.1f} images/s"
                         f"   (ratio {v['ratio_inline']:.2f})")
        lines.append(f"  bare encoder forward     {v['bare_forward_images_per_s']:>10.1f} images/s")
        lines.append(f"  ratio eval / bare        {v['ratio']:>10.2f}   (overhead "
                     f"{v['overhead_ms_per_image']:.2f} ms/image)")
        if "projected_ratio_vit_l14_224" in v:
            lines.append(f"  same overhead on ViT-L/14 @ 224: ratio {v['projected_ratio_vit_l14_224']:.3f}")

    c = res["compile"]
    if c.get("enabled"):
        section("torch.compile (denoiser step)")
        if "error" in c:
            lines.append(f"  failed: {c['error']}")
        else:
            lines.append(f"  {c['preset']} @ {c['tokens']} tokens: eager {c['eager_step_s'] * 1e3:.1f} ms, "
                         f"compiled {c['compiled_step_s'] * 1e3:.1f} ms -> {c['speedup']:.2f}x "
                         f"(compile {c['compile_s']:.1f} s)")

    m = res["memory"]
    section("peak memory")
    kind = "CUDA allocated" if m["kind"] == "cuda_allocated" else "process max RSS (high-water mark)"
    lines.append(f"  {kind}: " + ", ".join(f"{k} {v:.0f} MB" for k, v in m["sections_mb"].items()))
    lines.append(f"  peak RSS {m['peak_rss_mb']:.0f} MB")

    est = res["memory_estimate"]
    i = est["inputs"]
    section(f"memory estimate: {i['vision']} @ {i['image_size']}, {i['denoiser']}, stage {i['stage']}, "
            f"batch {i['batch']}, {i['dtype']} activations, {i['weights']} weights, "
            f"grad ckpt {'on' if i['grad_ckpt'] else 'off'}")
    pc = est["param_counts"]
    for k, gbv in est["params_gb"].items():
        lines.append(f"  weights  {k:<22}{pc[k] / 1e6:>10.1f} M {gbv:>9.2f} GB")
    lines.append(f"  trainable {pc['trainable'] / 1e6:.1f} M: master copies {est['master_weights_gb']:.2f} GB, "
                 f"gradients {est['gradients_gb']:.2f} GB, AdamW {est['optimizer_gb']:.2f} GB")
    lines.append("  activations " + ", ".join(f"{k} {gbv:.2f} GB" for k, gbv in est["activations_gb"].items()))
    lines.append(f"  total {est['total_gb']:.2f} GB")
    if res.get("wall_s"):
        lines.append("")
        lines.append("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in res["wall_s"].items()))
    return "\n".join(lines)


def format_memory_run(res: dict[str, Any]) -> str:
    est = res["estimate"]
    lines = [f"memory of one optimizer step — {res['device']} | stage {res['stage']}, batch {res['batch']}, "
             f"{res['mixed_precision']} | {res['step_s']:.2f} s/step",
             "  measured peak (torch.cuda.max_memory_allocated): "
             + (f"{res['measured_peak_gb']:.2f} GB" if res["measured_peak_gb"] is not None else "n/a on CPU"),
             f"  analytic estimate: {res['estimate_gb']:.2f} GB (weights {est['params_total_gb']:.2f}, master "
             f"{est['master_weights_gb']:.2f}, gradients {est['gradients_gb']:.2f}, AdamW {est['optimizer_gb']:.2f}, "
             f"activations {est['activations_total_gb']:.2f})",
             "  parameters (real / estimate):"]
    for k, v in res["param_counts"].items():
        lines.append(f"    {k:<14}{v / 1e6:>10.2f} M / {est['param_counts'][k] / 1e6:.2f} M")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def _load_average() -> float:
    """1-minute load average (how busy the machine was); 0 where the OS has none."""
    try:
        import os

        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def run_bench(out_dir: str | Path, quick: bool = False, presets: tuple[str, ...] | list[str] = ("tiny", "small"),
              compile: bool = False, progress: bool | None = None, threads: int | None = None) -> dict[str, Any]:
    """Measure everything listed in the module docstring; print a table, write
    ``out_dir/bench.json`` and return the same dict.

    ``quick`` shrinks sizes and repetitions to a smoke run (seconds, numbers noisy).
    ``presets``: flow_dit presets for the denoiser rows; on CUDA ``base`` and
    ``flux-lite`` are added. ``progress``: tqdm bar (default: when stderr is a terminal).
    ``threads``: torch intra-op threads for the run (default: leave torch's setting);
    on a machine whose cores are busy with other work, fewer threads than cores give far
    steadier numbers, since OpenMP workers wait on each other at every op.
    """
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run_bench(Path(out_dir), quick, list(presets), compile, progress)
    finally:
        torch.set_num_threads(saved_threads)


def _run_bench(out_dir: Path, quick: bool, presets: list[str], compile: bool,
               progress: bool | None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from genhancer.encoders.tiny import build_tiny_clip

    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    presets = list(dict.fromkeys(presets))
    if cuda:
        presets += [p for p in ("base", "flux-lite") if p not in presets]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ConfigError(f"presets: unknown flow_dit preset '{unknown[0]}'; expected any of {', '.join(PRESETS)}")
    amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None

    if quick:
        mm_sizes, token_budget = (256, 512), 64
        reps = dict(warmup=1, reps=2, min_time=0.0)
        enh_batch, n_images, n_ref_images, n_files = 4, 8, 4, 8
    else:
        mm_sizes = (1024, 2048, 4096, 8192) if cuda else (1024, 2048)
        token_budget = 32768 if cuda else 1024
        reps = dict(warmup=2, reps=3, min_time=1.0)
        enh_batch, n_images, n_ref_images, n_files = (64 if cuda else 32), 128, 32, 256
    eval_batch = 32

    tasks = (1 + int(amp is not None) + len(presets) * len(TOKEN_COUNTS) + 4 + int(compile))
    bar = tqdm(total=tasks, desc="bench", unit="task", dynamic_ncols=True,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    res: dict[str, Any] = {"device": _device_name(device), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "quick": quick,
                           "load_average_start": _load_average()}
    mem_sections: dict[str, float] = {}
    wall: dict[str, float] = {}
    t_section = [time.perf_counter()]

    def task(name: str):
        bar.set_description(f"bench: {name}")

    def done(section: str):
        now = time.perf_counter()
        wall[section] = now - t_section[0]
        t_section[0] = now

    # 1. matmul ceiling
    res["matmul"] = {}
    with _Peak(device) as pk:
        task("matmul fp32")
        res["matmul"]["fp32"] = bench_matmul(device, torch.float32, mm_sizes, **reps)
        bar.update()
        if amp is not None:
            task("matmul bf16")
            res["matmul"]["bf16"] = bench_matmul(device, torch.bfloat16, mm_sizes, **reps)
            bar.update()
    mem_sections["matmul"] = pk.mb
    done("matmul")
    ceiling = res["matmul"]["bf16" if amp is not None else "fp32"]["flops"]

    # 2. denoiser train steps
    res["denoiser"] = []
    with _Peak(device) as pk:
        for preset in presets:
            for tokens in TOKEN_COUNTS:
                task(f"{preset} @ {tokens} tokens")
                r = bench_denoiser(preset, tokens, max(1, token_budget // tokens), device, amp, **reps)
                r["pct_of_ceiling"] = 100 * r["flops_per_s"] / ceiling
                res["denoiser"].append(r)
                bar.update()
        task("optimizer step")
        res["optimizer"] = bench_optimizer(presets[-1] if "small" not in presets else "small", device, **reps)
        bar.update()
    mem_sections["denoiser"] = pk.mb
    done("denoiser")

    with tempfile.TemporaryDirectory(prefix="genhancer-bench-") as tmp:
        tmp = Path(tmp)
        clip_dir = build_tiny_clip(tmp / "tiny_clip", image_size=DEMO_IMAGE_SIZE)
        # 3. stage 1 uncached / cached, stage 2
        with _Peak(device) as pk:
            task("enhancer stages")
            res["enhancer"] = bench_enhancer(clip_dir, device, enh_batch, amp, work=tmp, n_images=n_files, **reps)
            res["enhancer_tiny"] = bench_enhancer(clip_dir, device, enh_batch, amp, preset="tiny", work=tmp,
                                                  n_images=n_files, **reps)
            bar.update()
        mem_sections["enhancer"] = pk.mb
        done("enhancer")
        # 4. evaluation encoding: the tiny encoder, then one with a real (ViT-B/32) forward cost
        with _Peak(device) as pk:
            task("eval encoding")
            res["eval"] = bench_eval(clip_dir, device, tmp, n_images, eval_batch,
                                     fp32_flops=res["matmul"]["fp32"]["flops"], **reps)
            bar.update()
            task("eval encoding, ViT-B/32 shape")
            ref_dir = build_reference_clip(tmp / "reference_clip", quick=quick)
            res["eval_reference"] = bench_eval(ref_dir, device, tmp, n_ref_images, eval_batch, inline=False,
                                               **reps)
            res["eval_reference"]["encoder"] = (f"{REFERENCE_ENCODER} shape, random weights"
                                                + (" (quick: narrow)" if quick else ""))
            bar.update()
        mem_sections["eval"] = pk.mb
        done("eval")

    # 6. torch.compile
    res["compile"] = {"enabled": bool(compile)}
    if compile:
        task("torch.compile")
        preset = next((p for p in reversed(presets) if p != "flux-lite"), presets[-1])
        tokens = TOKEN_COUNTS[-1]
        batch = max(1, token_budget // tokens)
        try:
            res["compile"].update(bench_compile(preset, tokens, batch, device, amp, **reps))
        except Exception as e:  # inductor needs a C++ toolchain; report, don't fail the run
            res["compile"]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        bar.update()
        done("compile")
    bar.close()
    res["wall_s"] = wall
    res["load_average_end"] = _load_average()

    # 5. memory
    res["memory"] = {"kind": "cuda_allocated" if cuda else "rss_high_water", "sections_mb": mem_sections,
                     "peak_rss_mb": _rss_mb()}
    # 7. analytic estimate of a paper-sized stage 2
    res["memory_estimate"] = memory_estimate()

    print(format_table(res))
    (out_dir / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    return res
