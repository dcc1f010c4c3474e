"""Timers, and the training steps bench times.

Times on a shared machine are noisy; what bench reports is the best of several runs, and
ratios of functions timed in alternating rounds (:func:`interleaved_times`), which a change
in the machine's load hits alike. The steps: one denoiser forward + backward on random
tokens (:func:`denoiser_fwd_bwd`), and one full optimizer step of an
:class:`~genhancer.enhancer.Enhancer` (:func:`enhancer_optimizer_step`, bench's only copy of
the training loop's step).
"""

from __future__ import annotations

import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from genhancer.bench.catalogue import token_channels
from genhancer.bench.flops import flow_dit_train_flops
from genhancer.denoisers.flow_dit import PRESETS

# ----------------------------------------------------------------------------- timers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int,
              min_time: float = 0.0, max_reps: int = 50) -> tuple[float, float]:
    """(best, median) seconds of ``fn``: ``warmup`` untimed calls, then at least ``reps`` timed
    ones, more until ``min_time`` seconds were spent (at most ``max_reps``). The best of N
    is the least disturbed by other processes on a shared machine."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    while len(times) < reps or (sum(times) < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, reps: int,
                      min_time: float = 0.0, max_reps: int = 50) -> dict[str, tuple[float, float]]:
    """Like :func:`best_time` for several functions whose times are compared: they run in
    turn, so a change in the machine's load hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    rounds = 0
    while rounds < reps or (sum(map(sum, times.values())) < min_time and rounds < max_reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
        rounds += 1
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


class Peak:
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
            self.mb = rss_mb()
        return False


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def load_average() -> float:
    """1-minute load average (how busy the machine was); 0 where the OS has none."""
    try:
        import os

        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.getdevice_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


# ----------------------------------------------------------------------------- steps


def random_images(enhancer, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random image batch of an Enhancer's two views: pixel_values [B,3,Se,Se], gen_pixels [B,3,Sg,Sg]."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    s_enc, s_gen = enhancer.encoder.spec.size, enhancer.gen_size
    return {"pixel_values": torch.randn(batch, 3, s_enc, s_enc, generator=g).to(device),
            "gen_pixels": (torch.rand(batch, 3, s_gen, s_gen, generator=g) * 2 - 1).to(device)}


def enhancer_optimizer_step(cfg, enhancer, next_batch: Callable[[], dict], device: torch.device,
                            amp: torch.dtype | None) -> tuple[Callable[[], None], int]:
    """A closure running one optimizer step as ``genhancer train`` does (its optimizer, autocast,
    gradient clipping) on ``next_batch()``, and the number of trainable parameters.

    Bench's only copy of the training loop's step (no accelerate, no guard): every timed
    Enhancer step and the measured memory go through here, so this is the one function to
    swap for the training package's step once it has a reusable one."""
    from genhancer.training.step import build_optimizer

    params = [p for p in enhancer.parameters() if p.requires_grad]
    opt = build_optimizer(cfg, params)[0]
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        data = next_batch()
        with autocast(device, amp):
            loss = enhancer(data, generator=gen)["loss"]
        loss.backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def write_images(folder: Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
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


# ----------------------------------------------------------------------------- training-step rows


def denoiser_fwd_bwd(model: torch.nn.Module, tokens: int, batch: int, device: torch.device,
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
        with autocast(device, amp):
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
    model = build_flow_dit(preset, token_channels(preset), PRESETS[preset].hidden_size).to(device)
    best, median = best_time(denoiser_fwd_bwd(model, tokens, batch, device, amp), device, warmup, reps, min_time)
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

    params = list(build_flow_dit(preset, token_channels(preset), PRESETS[preset].hidden_size)
                  .to(device).parameters())
    g = torch.Generator(device="cpu").manual_seed(0)
    for prm in params:
        prm.grad = torch.randn(prm.shape, generator=g).to(device)
    opts = {"foreach": torch.optim.AdamW(params, lr=1e-6, foreach=True),
            "fused": torch.optim.AdamW(params, lr=1e-6, fused=True)}
    t = interleaved_times({k: o.step for k, o in opts.items()}, device, warmup, reps, min_time)
    return {"preset": preset, "params": sum(p.numel() for p in params),
            "foreach_s": t["foreach"][0], "fused_s": t["fused"][0], "speedup": t["foreach"][0] / t["fused"][0]}


def bench_compile(preset: str, tokens: int, batch: int, device: torch.device, amp: torch.dtype | None = None,
                  warmup: int = 1, reps: int = 2, min_time: float = 0.0) -> dict[str, Any]:
    """Eager vs ``torch.compile`` of the same denoiser step, timed in turn.

    ``compile_s`` is the first compiled call; inductor's on-disk cache makes it seconds
    instead of a minute when the same graphs were compiled before.
    """
    from genhancer.denoisers.flow_dit import build_flow_dit

    model = build_flow_dit(preset, token_channels(preset), PRESETS[preset].hidden_size).to(device)
    eager = denoiser_fwd_bwd(model, tokens, batch, device, amp)
    compiled = denoiser_fwd_bwd(model, tokens, batch, device, amp, compile=True)
    try:
        t0 = time.perf_counter()
        compiled()  # compiles forward and backward graphs
        sync(device)
        compile_s = time.perf_counter() - t0
        t = interleaved_times({"eager": eager, "compiled": compiled}, device, warmup, reps, min_time)
    finally:
        torch._dynamo.reset()
    return {"preset": preset, "tokens": tokens, "batch": batch, "eager_step_s": t["eager"][0],
            "compiled_step_s": t["compiled"][0], "speedup": t["eager"][0] / t["compiled"][0],
            "compile_s": compile_s}


def _enhancer_config(clip_dir: Path, preset: str = "small", overrides: tuple[str, ...] = ()):
    from genhancer.config import load_config

    return load_config("tiny", [f"encoder.name_or_path={clip_dir}", f"denoiser.preset={preset}", *overrides])


def _file_streams(clip_dir: Path, preset: str, enhancer, work: Path, batch: int, n_images: int,
                  stage: str = "1"):
    """The two real ``BatchStream`` s of ``genhancer train``: a folder of 256 px JPEGs (decode,
    random resized crops to both views; ``num_workers=0``, so loading is in the timed step as
    it is in the demo) and a cache built from the same folder by :func:`build_cache`
    (stage 2: a ``--with-pixels`` cache, read as stage 2 reads it)."""
    from genhancer.data.cache_build import build_cache
    from genhancer.data.stream import BatchStream

    folder = work / f"stage1_images_{n_images}"
    if not folder.exists():
        write_images(folder, n_images, seed=1)
    common = (f"data.batch_size={batch}", "data.num_workers=0")
    files_cfg = _enhancer_config(clip_dir, preset, ("data.kind=folder", f"data.path={folder}", *common))
    pixels = stage != "1"
    cache_dir = work / f"stage1_cache_{n_images}{'_pixels' if pixels else ''}"
    if not cache_dir.exists():
        build_cache(files_cfg, cache_dir, progress=False, pixels=pixels)
    cache_cfg = _enhancer_config(clip_dir, preset, ("data.kind=cache", f"data.path={cache_dir}",
                                                    f"train.stage={stage}", *common))
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
    vs from a cache of them, plus the step (``stage1_files`` / ``stage1_cache_files``).

    Stage 2 likewise: from images vs from a ``--with-pixels`` cache (cached latents plus
    the encoder view as uint8), which skips only the autoencoder's forward; its Amdahl
    bound is (latent encode + pixel-cached step) / pixel-cached step (``stage2_cache_bound``)."""
    from genhancer.enhancer import Enhancer
    from genhancer.training.stage import STAGES

    cfg = _enhancer_config(clip_dir, preset)
    # Two enhancers, so stage 1 runs on an encoder without LoRA wrappers while the
    # stage-2 one has them; all steps are then timed in turn.
    stage1 = Enhancer(cfg).to(device).train()
    stage2 = Enhancer(cfg).to(device).train()
    STAGES["1"].apply(stage1)
    STAGES["2"].apply(stage2)
    g = torch.Generator(device="cpu").manual_seed(1)
    s_enc = stage1.encoder.spec.size
    raw = random_images(stage1, batch, device)
    with torch.no_grad():
        latents = stage1.target(raw["gen_pixels"])
    cached = {"global_token": torch.randn(batch, stage1.encoder.global_dim, generator=g).to(device),
              "latents": torch.randn(latents.shape, generator=g).to(device)}

    def make_step(enhancer, next_batch: Callable[[], dict]):
        return enhancer_optimizer_step(cfg, enhancer, next_batch, device, amp)

    def inputs():  # the two frozen forwards a cached step does not run
        with autocast(device, amp):
            stage1.encode(raw["pixel_values"])
            stage1.target(raw["gen_pixels"])

    def latent_encode():  # the one a stage-2 step from a pixel cache does not run
        with torch.no_grad(), autocast(device, amp):
            stage1.target(raw["gen_pixels"])

    pixel_cached = {"pixel_values": raw["pixel_values"], "latents": cached["latents"]}

    (s1_raw, n1), (s1_cache, _), (s2, n2) = (make_step(stage1, lambda: raw), make_step(stage1, lambda: cached),
                                             make_step(stage2, lambda: raw))
    fns = {"stage1_uncached": s1_raw, "stage1_cached": s1_cache, "stage2": s2, "frozen_inputs": inputs,
           "stage2_cached": make_step(stage2, lambda: pixel_cached)[0], "latent_encode": latent_encode}
    if work is not None:
        files, cache = _file_streams(clip_dir, preset, stage1, work, batch, n_images)

        def from_stream(stream):
            def next_batch():
                return {k: v.to(device) for k, v in stream.next().items() if torch.is_tensor(v)}
            return next_batch

        fns["stage1_files"] = make_step(stage1, from_stream(files))[0]
        fns["stage1_cache_files"] = make_step(stage1, from_stream(cache))[0]
        # Read as e2e reads it (the same pixel-cache path as stage 2, minus the check that
        # the latent statistics match a stage-1 run's: this bench has none).
        files2, cache2 = _file_streams(clip_dir, preset, stage2, work, batch, n_images, stage="e2e")
        fns["stage2_files"] = make_step(stage2, from_stream(files2))[0]
        fns["stage2_cache_files"] = make_step(stage2, from_stream(cache2))[0]
    t = interleaved_times(fns, device, warmup, reps, min_time)
    best = {k: v[0] for k, v in t.items()}
    out = {"batch": batch, "denoiser": cfg.denoiser.preset, "encoder_image_size": s_enc,
           "latent_shape": list(latents.shape[1:]), "trainable_stage1": n1, "trainable_stage2": n2,
           "stage1_uncached_samples_per_s": batch / best["stage1_uncached"],
           "stage1_cached_samples_per_s": batch / best["stage1_cached"],
           "cache_speedup": best["stage1_uncached"] / best["stage1_cached"],
           "cache_bound": (best["frozen_inputs"] + best["stage1_cached"]) / best["stage1_cached"],
           "stage2_samples_per_s": batch / best["stage2"],
           "stage2_cached_samples_per_s": batch / best["stage2_cached"],
           "stage2_cache_speedup": best["stage2"] / best["stage2_cached"],
           "stage2_cache_bound": (best["latent_encode"] + best["stage2_cached"]) / best["stage2_cached"],
           "step_s": best, "step_s_median": {k: v[1] for k, v in t.items()}}
    if work is not None:
        out.update({"files_images": n_images,
                    "stage1_files_samples_per_s": batch / best["stage1_files"],
                    "stage1_cache_files_samples_per_s": batch / best["stage1_cache_files"],
                    "cache_speedup_files": best["stage1_files"] / best["stage1_cache_files"],
                    "stage2_files_samples_per_s": batch / best["stage2_files"],
                    "stage2_cache_files_samples_per_s": batch / best["stage2_cache_files"],
                    "stage2_cache_speedup_files": best["stage2_files"] / best["stage2_cache_files"]})
    return out

