"""GPU memory of a training run: the analytic model and a measured step to check it by.

:func:`memory_estimate` sums weights, master copies, gradients, AdamW states and
activations of a paper-sized run by term; :func:`measure_recipe_memory` runs real optimizer
steps of a config (``genhancer bench --memory-recipe``) and reads the CUDA allocator's peak
next to :func:`estimate_for` of the same config. :func:`build_random_recipe` builds such a
config offline with random weights of a published encoder's shape.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from genhancer.bench.catalogue import (
    FLUX_VAE_CONFIG,
    FLUX_VAE_TOKEN_CHANNELS,
    LATENT_SPACES,
    TAEF2_TOKEN_CHANNELS,
    VisionLanguageSpec,
    encoder_spec,
    lora_bias_params,
    lora_params,
    spec_of,
    text_params,
    vision_params,
)
from genhancer.bench.timing import device_name, enhancer_optimizer_step, random_images, sync
from genhancer.denoisers.flow_dit import PRESETS
from genhancer.errors import ConfigError

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def memory_estimate(vision: str | VisionLanguageSpec = "ViT-L/14", image_size: int = 224,
                    denoiser: str = "flux-lite", batch: int = 16, dtype: str = "bf16",
                    grad_ckpt: bool = True, stage: int | str = 2, *, weights: str | None = None,
                    lora_r: int = 16, lora_dropout: float = 0.1, train_projector: bool = True,
                    train_denoiser: bool = True, projector_hidden: int = 768,
                    latent_space: str | None = None, lora_visual_projection: bool = True,
                    lora_bias: str = "lora_only") -> dict[str, Any]:
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
    from genhancer.training.stage import STAGES

    st = STAGES.get(str(stage))
    if st is None:
        raise ConfigError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    for name, v in (("dtype", dtype), ("weights", weights or dtype)):
        if v not in _BYTES:
            raise ConfigError(f"{name}: expected one of {', '.join(_BYTES)}, got {v!r}")
    if denoiser not in PRESETS:
        raise ConfigError(f"denoiser: unknown flow_dit preset '{denoiser}'; expected one of {', '.join(PRESETS)}")
    spec = encoder_spec(vision)
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
        "lora": lora_params(spec, lora_r, lora_visual_projection) if st.lora else 0,
    }
    # With lora.bias=lora_only the wrapped linears' biases train too (weights counted in "vision").
    bias_trainable = lora_bias_params(spec) if st.lora and lora_bias == "lora_only" else 0
    train_proj = train_projector if st.projector is None else st.projector
    train_den = train_denoiser if st.denoiser is None else st.denoiser
    trainable = (counts["lora"] + bias_trainable + (counts["projector"] if train_proj else 0)
                 + (counts["denoiser"] if train_den else 0))
    gb = 1e9
    params_gb = {k: v * wb / gb for k, v in counts.items()}

    # activations
    w, m = spec.width, spec.mlp
    enc_tokens = (image_size // spec.patch) ** 2 + (1 if spec.family == "clip" else 0)
    grid = image_size // 16
    den_tokens = grid * grid + 1
    lora_on = st.lora
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


def param_counts(enhancer) -> dict[str, int]:
    """Parameters of a built ``Enhancer`` by the terms of :func:`memory_estimate`."""
    enc = enhancer.encoder

    def n(mod, lora: bool | None = None):
        return sum(p.numel() for name, p in mod.named_parameters()
                   if lora is None or (("lora_" in name) == lora))

    vision, lora = n(enc.vision_tower, lora=False), n(enc.vision_tower, lora=True)
    if enc.family == "clip":
        vision += n(enc.model.visual_projection, lora=False)
        lora += n(enc.model.visual_projection, lora=True)
    return {"vision": vision, "text": n(enc.model, lora=False) - vision, "latent_space": n(enhancer.space),
            "projector": n(enhancer.projector), "denoiser": n(enhancer.denoiser), "lora": lora,
            "trainable": sum(p.numel() for p in enhancer.parameters() if p.requires_grad)}


def estimate_for(cfg, enhancer) -> dict[str, Any]:
    """:func:`memory_estimate` with every input read off a config and the Enhancer built from it."""
    from genhancer.training.precision import mixed_precision as _mixed_precision

    mp = _mixed_precision(cfg)
    if cfg.tokenizer.kind not in ("taef2", "vae"):
        raise ConfigError(f"tokenizer.kind: the memory estimate covers taef2 and vae, got '{cfg.tokenizer.kind}'")
    return memory_estimate(
        vision=spec_of(enhancer.encoder), image_size=enhancer.encoder.spec.size, denoiser=cfg.denoiser.preset,
        batch=cfg.data.batch_size, dtype={"bf16": "bf16", "fp16": "fp16"}.get(mp, "fp32"), weights="fp32",
        grad_ckpt=bool(cfg.encoder.gradient_checkpointing and cfg.denoiser.gradient_checkpointing),
        stage=cfg.train.stage, lora_r=cfg.lora.r, lora_dropout=cfg.lora.dropout,
        lora_visual_projection=cfg.lora.visual_projection, lora_bias=cfg.lora.bias,
        train_projector=cfg.train.train_projector, train_denoiser=cfg.train.train_denoiser,
        projector_hidden=cfg.projector.hidden_dim, latent_space="flux-vae" if cfg.tokenizer.kind == "vae" else "taef2")


def measure_recipe_memory(cfg, device: torch.device | None = None, steps: int = 2) -> dict[str, Any]:
    """Peak memory of ``steps`` real optimizer steps of ``cfg`` (its stage, batch, precision,
    checkpointing; random inputs; stage 2 starts from fresh weights, which costs the same
    memory) next to :func:`estimate_for` of the same config. The peak is
    ``torch.cuda.max_memory_allocated`` on CUDA; on CPU only the parameter counts are compared
    (``measured_peak_gb`` is None: RSS mixes in the interpreter and libraries)."""
    from genhancer.enhancer import Enhancer
    from genhancer.training.precision import mixed_precision as _mixed_precision
    from genhancer.training.stage import stage_of

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    enhancer = Enhancer(cfg)
    stage_of(cfg.train.stage).apply(enhancer, cfg.train)
    estimate = estimate_for(cfg, enhancer)
    counts = param_counts(enhancer)
    enhancer.to(device).train()
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(_mixed_precision(cfg)) if cuda else None
    b = cfg.data.batch_size
    batch = random_images(enhancer, b, device)
    step = enhancer_optimizer_step(cfg, enhancer, lambda: batch, device, amp)[0]
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
    return {"device": device_name(device), "stage": cfg.train.stage, "batch": b,
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

    s = encoder_spec(vision)
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

