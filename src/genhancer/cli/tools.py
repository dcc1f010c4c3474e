"""``genhancer info`` / ``export`` / ``tokenizer`` / ``bench``: tools around the method."""

from __future__ import annotations

import argparse
import json

from genhancer.cli.common import command
from genhancer.errors import ConfigError


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--denoiser", help="print the parameter count of this flow_dit / perceiver preset")
    p.add_argument("--model", help="an encoder directory or hub id: print its family and parameter counts")
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("info", "versions, device, presets and parameter counts")
def cmd_info(args) -> int:
    import platform

    import torch

    from genhancer import __version__
    from genhancer.config import list_presets

    info: dict = {"genhancer": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for mod in ("transformers", "peft", "diffusers", "accelerate", "webdataset", "datasets"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = "not installed"
    info["device"] = (f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available()
                      else f"cpu ({torch.get_num_threads()} threads)")
    info["presets"] = list_presets()
    from genhancer.denoisers import count_denoiser_params, list_denoiser_presets

    if args.denoiser:
        info["denoiser"] = {args.denoiser: count_denoiser_params(args.denoiser)}
    else:
        info["denoiser_params"] = {n: count_denoiser_params(n) for n in list_denoiser_presets()}
    if args.model:
        from genhancer.encoders import load_encoder

        enc = load_encoder(args.model)
        info["model"] = {"family": enc.family, "image_size": enc.spec.size,
                         "vision_params": sum(p.numel() for p in enc.vision_tower.parameters()),
                         "text_params": sum(p.numel() for p in enc.text_tower.parameters()) if enc.has_text else 0,
                         "global_dim": enc.global_dim, "patch_tokens": enc.num_patches}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        if isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk:<22} {vv:,}" if isinstance(vv, int) else f"  {kk:<22} {vv}")
        elif isinstance(v, list):
            print(f"{k}: {', '.join(v)}")
        else:
            print(f"{k}: {v}")
    return 0


cmd_info.configure = _add_info


# ----------------------------------------------------------------------------- export

def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a stage-2 / e2e checkpoint directory or its run directory (its latest "
                   "checkpoint)")
    p.add_argument("out_dir", help="where to write the merged transformers checkpoint")
    p.add_argument("--vision-only", action="store_true", help="write only the vision model (CLIPVisionModel / "
                   "SiglipVisionModel) and its image processor")
    p.add_argument("--into-llava", metavar="LLAVA_DIR_OR_ID",
                   help="instead: write a copy of this transformers LLaVA checkpoint (LlavaForConditionalGeneration "
                        "/ LlavaNext) whose vision tower is the enhanced one; every other file and tensor is the "
                        "LLaVA's; refused when its vision config differs from the encoder's")
    p.add_argument("--card-metrics", metavar="COMPARE_JSON",
                   help="compare_summary.json of `genhancer eval compare`: its before / after table goes into the "
                        "model card (README.md); without it the card has no results table")
    p.add_argument("--best", action="store_true", help="export the checkpoint validation picked in that run "
                   "(val_best.json; train.val_every / train.val_data) instead of the latest")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")


@command("export", "merge LoRA into the vision tower and write a transformers checkpoint (or a LLaVA with it)")
def cmd_export(args) -> int:
    from genhancer.export import export

    out = export(args.checkpoint, args.out_dir, vision_only=args.vision_only, overwrite=args.overwrite,
                 into_llava=args.into_llava, card_metrics=args.card_metrics, best=args.best)
    what = "LLaVA with the enhanced vision tower" if args.into_llava else (
        "vision model" if args.vision_only else "merged model")
    print(f"wrote {what} and its model card (README.md) to {out}")
    if args.best:
        import json

        from genhancer.validation import SELECTION_FILE

        sel = json.loads((out / SELECTION_FILE).read_text())
        print(f"from step {sel['step']}, picked by validation ({sel['metric']} {sel['value']:.2f} on "
              f"{sel['val_data']}; {SELECTION_FILE})")
    return 0


cmd_export.configure = _add_export


def _add_tokenizer(p):
    sub = p.add_subparsers(dest="tok_cmd", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a small VQ tokenizer (the discrete variant's latent space)")
    t.add_argument("--data", required=True, help="image folder, CSV / JSONL file, or shard pattern")
    t.add_argument("--data-kind", default="folder", choices=("folder", "csv", "jsonl", "webdataset", "hf"))
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.add_argument("--image-size", type=int, default=64)
    t.add_argument("--max-images", type=int, default=4096, help="images read into memory for training")
    t.add_argument("--codebook-size", type=int, default=512)
    t.add_argument("--codebook-dim", type=int, default=32)
    t.add_argument("--downsample", type=int, default=4)
    t.add_argument("--mode", choices=("ema", "straight_through"), default="ema")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)


@command("tokenizer", "train a VQ tokenizer for the discrete denoiser")
def cmd_tokenizer(args) -> int:
    from genhancer.data.in_memory import load_image_tensor
    from genhancer.latents.vq_train import train_vq_tokenizer

    images, skipped = load_image_tensor(args.data_kind, args.data, args.image_size, args.max_images)
    m = train_vq_tokenizer(images, args.out, codebook_size=args.codebook_size, codebook_dim=args.codebook_dim,
                           downsample=args.downsample, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           mode=args.mode, seed=args.seed, progress=True)
    print(f"VQ tokenizer: PSNR {m['psnr']:.2f} dB, codebook usage {100 * m['usage']:.1f} %, perplexity "
          f"{m['perplexity']:.1f} on {len(images)} images ({skipped}) -> {args.out}")
    return 0


cmd_tokenizer.configure = _add_tokenizer


def _add_bench(p):
    p.add_argument("--out", default="runs/bench", help="directory for bench.json (default runs/bench)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes")
    p.add_argument("--presets", nargs="+", default=["tiny", "small"], help="flow_dit presets to time")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the denoiser")
    p.add_argument("--memory-recipe", metavar="PRESET",
                   help="instead: measure the peak GPU memory of a real optimizer step of this config preset "
                        "(e.g. paper-stage2) with random weights of --vision's shape and FLUX.1's VAE, next "
                        "to the analytic estimate (needs CUDA)")
    p.add_argument("--vision", default="ViT-L/14", help="encoder shape for --memory-recipe (default ViT-L/14)")
    p.add_argument("--image-size", type=int, default=224, help="encoder image size for --memory-recipe")
    p.add_argument("overrides", nargs="*", help="config overrides for --memory-recipe, e.g. data.batch_size=8")


@command("bench", "speed and memory on this machine: matmul ceiling, denoiser FLOP/s, cache, eval, memory")
def cmd_bench(args) -> int:
    import json
    from pathlib import Path

    import torch

    from genhancer.bench import build_random_recipe, format_memory_run, measure_recipe_memory, run_bench

    if args.memory_recipe:
        if not torch.cuda.is_available():
            raise ConfigError("--memory-recipe: needs a CUDA device (it reads torch.cuda.max_memory_allocated); "
                              "every bench run prints the analytic estimate")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        cfg = build_random_recipe(args.memory_recipe, out / "random-weights", args.vision, args.image_size,
                                  tuple(args.overrides))
        res = measure_recipe_memory(cfg)
        res["recipe"], res["vision"], res["image_size"] = args.memory_recipe, args.vision, args.image_size
        print(format_memory_run(res))
        (out / "memory.json").write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {out}/memory.json")
        return 0
    if args.overrides:
        raise ConfigError(f"bench: config overrides ({args.overrides[0]}) only go with --memory-recipe")
    run_bench(args.out, quick=args.quick, presets=tuple(args.presets), compile=args.compile)
    print(f"wrote {args.out}/bench.json")
    return 0


cmd_bench.configure = _add_bench


COMMANDS = (cmd_info, cmd_export, cmd_tokenizer, cmd_bench)
