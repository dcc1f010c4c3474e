"""Subcommands beyond ``info`` / ``export``: train, cache, sample, eval, tokenizer, bench, demo."""

from __future__ import annotations

import argparse
import json

from genhancer.cli import command


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="a preset name (see `genhancer info`) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="override any config field, e.g. train.steps=100 data.path=imgs/")


def _load(args):
    from genhancer.config import load_config

    return load_config(args.config, args.overrides)


# ----------------------------------------------------------------------------- train

def _add_train(p):
    _config_args(p)
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint of train.output_dir (or the one given)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("train", "train stage 1, stage 2 or end-to-end (one loop; runs under `accelerate launch` too)")
def cmd_train(args) -> int:
    from genhancer.train import train

    cfg = _load(args)
    res = train(cfg, resume=args.resume, progress=False if args.no_progress else None)
    skipped = sum(res.skipped_images.values()) if res.skipped_images else 0
    print(f"stage {cfg.train.stage}: {res.steps} steps, final loss {res.final_loss:.4f}, "
          f"{res.samples_per_s:.1f} samples/s, {skipped} images skipped -> {res.run_dir}")
    return 0


cmd_train.configure = _add_train


# ----------------------------------------------------------------------------- cache

def _add_cache(p):
    _config_args(p)
    p.add_argument("--out", required=True, help="cache directory to write")
    p.add_argument("--augmentations", "-k", type=int, default=1, help="random crops per image (default 1)")
    p.add_argument("--rows-per-shard", type=int, default=4096)
    p.add_argument("--overwrite", action="store_true")


@command("cache", "precompute frozen-encoder global tokens and latents for stage 1")
def cmd_cache(args) -> int:
    from genhancer.cache import build_cache

    meta = build_cache(_load(args), args.out, args.augmentations, args.rows_per_shard, args.overwrite)
    print(f"cached {meta['rows']} rows in {meta['shards']} shards -> {args.out} "
          f"(skipped images: {sum(meta['skipped_images'].values()) if meta['skipped_images'] else 0})")
    return 0


cmd_cache.configure = _add_cache


# ----------------------------------------------------------------------------- sample

def _add_sample(p):
    p.add_argument("checkpoint", help="a checkpoint directory or run directory")
    p.add_argument("images", nargs="+", help="image files or folders to reconstruct")
    p.add_argument("--out", default="samples.png", help="PNG grid to write")
    p.add_argument("--seeds", type=int, default=3, help="reconstructions per image (different noise seeds)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: objective.sample_steps)")
    p.add_argument("--max-images", type=int, default=8)


@command("sample", "reconstruct images from their global token alone; writes a PNG grid")
def cmd_sample(args) -> int:
    from genhancer.sample import sample_grid

    out = sample_grid(args.checkpoint, args.images, args.out, seeds=args.seeds, steps=args.steps,
                      max_images=args.max_images)
    print(f"wrote {out}")
    return 0


cmd_sample.configure = _add_sample


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)

