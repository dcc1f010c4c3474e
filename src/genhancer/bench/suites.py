"""What one ``genhancer bench`` run measures, and the rows that are not training steps.

One run measures, on one machine (ratios are what to read; absolute times move with load):

1. **matmul ceiling**: best FLOP/s of square dense matmuls (fp32; bf16 too on CUDA);
2. **denoiser train step**: forward + backward of each MM-DiT preset at the demo's latent
   size (TAEF2, 64 px -> 8x8x32 latent -> 4x4 = 16 tokens of 128 channels) and at 256
   tokens, with FLOPs counted analytically (:func:`~genhancer.bench.flops.flow_dit_flops`), as FLOP/s and as a
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
7. an analytic memory estimate of a paper-sized run (:func:`~genhancer.bench.memory.memory_estimate`);
8. **reference MM-DiT**: our denoiser's train step next to diffusers' ``FluxTransformer2DModel``
   of the same dimensions, as a speed ratio (:mod:`genhancer.bench.reference`; ``small``,
   ``tiny`` with ``quick``);
9. ``pretrain-clip`` steps (:mod:`genhancer.bench.pretrain`);
10. **objectives**: a stage-2 step under MSE, DCR's contrastive term (all negatives, 7, without
    the augmented view), MSE + contrastive and the drift regulariser, as ratios to the MSE
    step of the same run (:mod:`genhancer.bench.objectives`).

The training-step rows (2, 3, 6) are in :mod:`genhancer.bench.timing`; FLOPs are counted
as :mod:`genhancer.bench.flops` describes.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from genhancer.bench.catalogue import DEMO_IMAGE_SIZE, REFERENCE_ENCODER, TOKEN_COUNTS, build_reference_clip
from genhancer.bench.flops import vit_forward_flops
from genhancer.bench.memory import memory_estimate
from genhancer.bench.pretrain import bench_pretrain
from genhancer.bench.reference import bench_reference
from genhancer.bench.report import format_table
from genhancer.bench.timing import (
    Peak,
    bench_compile,
    bench_denoiser,
    bench_enhancer,
    bench_optimizer,
    best_time,
    device_name,
    interleaved_times,
    load_average,
    rss_mb,
    write_images,
)
from genhancer.denoisers.flow_dit import PRESETS
from genhancer.errors import ConfigError

# ----------------------------------------------------------------------------- matmul, evaluation


def bench_matmul(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...], warmup: int = 2,
                 reps: int = 3, min_time: float = 0.5) -> dict[str, Any]:
    """Best FLOP/s of ``n x n @ n x n`` over ``sizes``."""
    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best, _ = best_time(lambda a=a, b=b: torch.mm(a, b), device, warmup, reps, min_time)
        by_size[n] = 2 * n ** 3 / best
        del a, b
    n_best = max(by_size, key=by_size.get)
    return {"dtype": str(dtype).removeprefix("torch."), "best_size": n_best, "flops": by_size[n_best],
            "by_size": {str(k): v for k, v in by_size.items()}}


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
        paths = write_images(folder, n_images)
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
    t = interleaved_times(fns, dev, warmup, reps, min_time)
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


# ----------------------------------------------------------------------------- driver


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

    tasks = (1 + int(amp is not None or not cuda) + len(presets) * len(TOKEN_COUNTS) + 7 + int(compile))
    bar = tqdm(total=tasks, desc="bench", unit="task", dynamic_ncols=True,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    res: dict[str, Any] = {"device": device_name(device), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "quick": quick,
                           "load_average_start": load_average()}
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
    with Peak(device) as pk:
        task("matmul fp32")
        res["matmul"]["fp32"] = bench_matmul(device, torch.float32, mm_sizes, **reps)
        bar.update()
        # bf16 on CUDA (the denoiser rows run under autocast there) and on CPUs too: AVX-512
        # BF16 / AMX CPUs run it ~2x faster than fp32, which `train.mixed_precision=bf16` uses.
        if amp is not None or not cuda:
            task("matmul bf16")
            res["matmul"]["bf16"] = bench_matmul(device, torch.bfloat16, mm_sizes, **reps)
            bar.update()
    mem_sections["matmul"] = pk.mb
    done("matmul")
    ceiling = res["matmul"]["bf16" if amp is not None else "fp32"]["flops"]

    # 2. denoiser train steps
    res["denoiser"] = []
    with Peak(device) as pk:
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

    # 8. the same step against diffusers' FLUX transformer of the same dimensions
    with Peak(device) as pk:
        task("reference MM-DiT (diffusers)")
        res["reference"] = bench_reference("tiny" if quick else "small", device, amp, **reps)
        bar.update()
    mem_sections["reference"] = pk.mb
    done("reference")

    # 9. genhancer pretrain-clip at the shipped tiny CLIP's sizes, against the fp32 ceiling
    with Peak(device) as pk:
        task("pretrain-clip steps")
        res["pretrain"] = bench_pretrain(res["matmul"]["fp32"]["flops"], quick=quick)
        bar.update()
    mem_sections["pretrain"] = pk.mb
    done("pretrain")

    with tempfile.TemporaryDirectory(prefix="genhancer-bench-") as tmp:
        tmp = Path(tmp)
        clip_dir = build_tiny_clip(tmp / "tiny_clip", image_size=DEMO_IMAGE_SIZE)
        # 3. stage 1 uncached / cached, stage 2
        with Peak(device) as pk:
            task("enhancer stages")
            res["enhancer"] = bench_enhancer(clip_dir, device, enh_batch, amp, work=tmp, n_images=n_files, **reps)
            res["enhancer_tiny"] = bench_enhancer(clip_dir, device, enh_batch, amp, preset="tiny", work=tmp,
                                                  n_images=n_files, **reps)
            bar.update()
        mem_sections["enhancer"] = pk.mb
        done("enhancer")
        # 10. the objectives: MSE vs DCR's contrastive term vs the drift regulariser, stage 2
        with Peak(device) as pk:
            task("objectives")
            from genhancer.bench.objectives import bench_objectives

            res["objectives"] = bench_objectives(clip_dir, device, enh_batch, amp, **reps)
            bar.update()
        mem_sections["objectives"] = pk.mb
        done("objectives")
        # 4. evaluation encoding: the tiny encoder, then one with a real (ViT-B/32) forward cost
        with Peak(device) as pk:
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
    res["load_average_end"] = load_average()

    # 5. memory
    res["memory"] = {"kind": "cuda_allocated" if cuda else "rss_high_water", "sections_mb": mem_sections,
                     "peak_rss_mb": rss_mb()}
    # 7. analytic estimate of a paper-sized stage 2
    res["memory_estimate"] = memory_estimate()

    print(format_table(res))
    (out_dir / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    return res
