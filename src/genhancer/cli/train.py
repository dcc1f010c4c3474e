"""``genhancer train`` / ``cache`` / ``sample``: training runs and what they read and write."""

from __future__ import annotations

from genhancer.cli.common import at_least, check_out_dir, command, config_args, load_config_args
from genhancer.errors import ConfigError


def _add_train(p):
    config_args(p)
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint of train.output_dir (or the one given)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("train", "train stage 1, stage 2 or end-to-end (one loop; runs under `accelerate launch` too)")
def cmd_train(args) -> int:
    from genhancer.training import train

    cfg = load_config_args(args)
    res = train(cfg, resume=args.resume, progress=False if args.no_progress else None)
    skipped = sum(res.skipped_images.values()) if res.skipped_images else 0
    print(f"stage {cfg.train.stage}: {res.steps} steps, final loss {res.final_loss:.4f}, "
          f"{res.samples_per_s:.1f} samples/s, {skipped} images skipped -> {res.run_dir}")
    from genhancer.checkpoint import VAL_BEST_FILE

    best = res.run_dir / VAL_BEST_FILE
    if cfg.train.val_every and best.is_file():
        import json

        b = json.loads(best.read_text())
        print(f"validation: best {b['metric']} {b['value']:.2f} at step {b['step']} ({best}; export it with "
              "`genhancer export RUN OUT --best`)")
    return 0


cmd_train.configure = _add_train


# ----------------------------------------------------------------------------- cache

def _add_cache(p):
    config_args(p, required=False)  # required unless --verify (checked in cmd_cache)
    p.add_argument("--out", help="cache directory to write")
    p.add_argument("--verify", metavar="DIR", help="instead: check the sizes and sha256 checksums of cache DIR's "
                   "shards against its meta.json; exit 0 when intact, 2 (naming the shard) when not")
    p.add_argument("--augmentations", "-k", type=int, default=1, help="random crops per image (default 1)")
    p.add_argument("--rows-per-shard", type=int, default=4096)
    p.add_argument("--with-pixels", action="store_true",
                   help="also store each crop's encoder view (uint8), so stage 2 / e2e can train from the cache")
    p.add_argument("--overwrite", action="store_true")


@command("cache", "precompute frozen-encoder global tokens and latents (and encoder views for stage 2)")
def cmd_cache(args) -> int:
    from genhancer.data.cache_build import build_cache

    if args.verify is not None:
        return _verify_cache(args)
    if not args.config or not args.out:
        raise ConfigError("cache: --config and --out are required to build a cache (or --verify DIR to check one)")
    at_least("--augmentations", args.augmentations)
    at_least("--rows-per-shard", args.rows_per_shard)
    check_out_dir(args.out)
    meta = build_cache(load_config_args(args), args.out, args.augmentations, args.rows_per_shard, args.overwrite,
                       pixels=args.with_pixels)
    print(f"cached {meta['rows']} rows in {meta['shards']} shards -> {args.out} "
          f"(skipped images: {sum(meta['skipped_images'].values()) if meta['skipped_images'] else 0})")
    return 0


cmd_cache.configure = _add_cache


def _verify_cache(args) -> int:
    from genhancer.data.cache import verify_cache

    if args.config or args.out or args.overrides:
        raise ConfigError("cache --verify DIR: takes no --config, --out or overrides")
    res = verify_cache(args.verify)
    print(f"cache '{args.verify}' is intact: {res['files']} files, {res['bytes']:,} bytes, sizes and sha256 "
          "checksums match meta.json")
    return 0


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
    from pathlib import Path

    from genhancer.sample import sample_grid

    for flag, v in (("--seeds", args.seeds), ("--steps", args.steps), ("--max-images", args.max_images)):
        at_least(flag, v)
    target = Path(args.out)
    if target.is_dir():
        raise ConfigError(f"--out: '{target}' is a directory; expected the path of the PNG grid to write")
    if target.parent.exists() and not target.parent.is_dir():
        raise ConfigError(f"--out: '{target.parent}' is a file, not a directory")
    created = not target.parent.exists()
    out = sample_grid(args.checkpoint, args.images, args.out, seeds=args.seeds, steps=args.steps,
                      max_images=args.max_images)
    if created:
        print(f"created directory {target.parent}")
    print(f"wrote {out}")
    return 0


cmd_sample.configure = _add_sample


COMMANDS = (cmd_train, cmd_cache, cmd_sample)
