"""Subcommands beyond ``info`` / ``export``: train, cache, sample, eval, tokenizer, bench, demo."""

from __future__ import annotations

import argparse
import json

from genhancer.cli import command
from genhancer.errors import ConfigError


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="a preset name (see `genhancer info`) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="override any config field, e.g. train.steps=100 data.path=imgs/")


def _load(args):
    from genhancer.config import load_config

    return load_config(args.config, args.overrides)


def _at_least(flag: str, value, minimum: int = 1) -> None:
    """An int option (``None``: not given) must be >= ``minimum``."""
    if value is not None and value < minimum:
        raise ConfigError(f"{flag}: expected an int >= {minimum}, got {value}")


def _check_out_dir(out) -> None:
    """An output directory option may not name an existing file."""
    from pathlib import Path

    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out: '{out}' is a file, not a directory")


# ----------------------------------------------------------------------------- train

def _add_train(p):
    _config_args(p)
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint of train.output_dir (or the one given)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("train", "train stage 1, stage 2 or end-to-end (one loop; runs under `accelerate launch` too)")
def cmd_train(args) -> int:
    from genhancer.training import train

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
    p.add_argument("--with-pixels", action="store_true",
                   help="also store each crop's encoder view (uint8), so stage 2 / e2e can train from the cache")
    p.add_argument("--overwrite", action="store_true")


@command("cache", "precompute frozen-encoder global tokens and latents (and encoder views for stage 2)")
def cmd_cache(args) -> int:
    from genhancer.data.cache_build import build_cache

    _at_least("--augmentations", args.augmentations)
    _at_least("--rows-per-shard", args.rows_per_shard)
    _check_out_dir(args.out)
    meta = build_cache(_load(args), args.out, args.augmentations, args.rows_per_shard, args.overwrite,
                       pixels=args.with_pixels)
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
    from pathlib import Path

    from genhancer.sample import sample_grid

    for flag, v in (("--seeds", args.seeds), ("--steps", args.steps), ("--max-images", args.max_images)):
        _at_least(flag, v)
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


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)



# ----------------------------------------------------------------------------- eval

def _add_eval(p):
    sub = p.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    m = sub.add_parser("mmvp", help="MMVP-VLM pair accuracy (upstream protocol)")
    m.add_argument("--model", required=True, help="model directory or hub id (original or exported)")
    m.add_argument("--data", required=True, help="MMVP-VLM directory with Questions.csv and 'MLLM_VLM Images/'")
    m.add_argument("--allow-partial", action="store_true", help="score what exists and list what was skipped")
    z = sub.add_parser("zeroshot", help="zero-shot classification over an image folder (class = subfolder)")
    z.add_argument("--model", required=True)
    z.add_argument("--data", required=True)
    r = sub.add_parser("retrieval", help="image<->text recall@1/5/10 from a captions CSV / JSONL")
    r.add_argument("--model", required=True)
    r.add_argument("--data", required=True, help="CSV or JSONL with image paths (relative to it) and captions")
    r.add_argument("--image-column", default="image")
    r.add_argument("--caption-column", default="caption")
    r.add_argument("--allow-partial", action="store_true")
    pr = sub.add_parser("probe", help="linear probes of labelled attributes on the frozen global token")
    pr.add_argument("--model", required=True)
    pr.add_argument("--data", required=True, help="labels.jsonl with 'image' and 'label_ids' per row")
    pr.add_argument("--features", choices=("global", "patches"), default="global",
                    help="probe the global token (default) or the flattened patch tokens")
    c = sub.add_parser("compare", help="before / after table with paired uncertainty and a report")
    c.add_argument("--before", required=True)
    c.add_argument("--after", required=True)
    c.add_argument("--mmvp", help="MMVP-VLM directory")
    c.add_argument("--zeroshot", help="image folder for zero-shot classification")
    c.add_argument("--retrieval", help="captions CSV / JSONL")
    c.add_argument("--allow-partial", action="store_true")
    for sp in (m, z, r, pr, c):
        sp.add_argument("--out", default="runs/eval", help="output directory (default runs/eval)")
        sp.add_argument("--batch-size", type=int, default=32)
        sp.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")


@command("eval", "evaluate encoders: mmvp, zeroshot, retrieval, probe, compare")
def cmd_eval(args) -> int:
    from genhancer import eval as ev
    from genhancer.errors import DataError

    k, out = args.eval_kind, args.out
    _at_least("--batch-size", args.batch_size)
    _check_out_dir(out)
    if k == "compare":
        if not (args.mmvp or args.zeroshot or args.retrieval):
            raise DataError("eval compare: give at least one of --mmvp, --zeroshot, --retrieval")
        ev.run_compare(args.before, args.after, out, mmvp_data=args.mmvp, zeroshot_data=args.zeroshot,
                       retrieval_file=args.retrieval, batch_size=args.batch_size, device=args.device,
                       allow_partial=args.allow_partial, print_table=True)
        print(f"report: {out}/report.html")
        return 0
    if k == "mmvp":
        res = ev.run_mmvp(args.model, args.data, out, args.batch_size, args.allow_partial, args.device)
        for cat, score in res["categories"].items():
            print(f"  {cat:<36} {score if score is None else f'{score:5.1f}'}")
        print(f"MMVP-VLM average_score: {res['average_score']:.1f}  -> {out}")
    elif k == "zeroshot":
        res = ev.run_zeroshot(args.model, args.data, out, batch_size=args.batch_size, device=args.device)
        print(f"zero-shot top-1 {res['top1']:.1f}  top-5 {res['top5']:.1f}  -> {out}")
    elif k == "retrieval":
        res = ev.run_retrieval(args.model, args.data, out, args.image_column, args.caption_column,
                               args.batch_size, args.device, args.allow_partial)
        print(dump({k2: v for k2, v in res.items() if k2 != "items"}))
    else:
        from genhancer.eval.probe import run_probe

        res = run_probe(args.model, args.data, out, batch_size=args.batch_size, device=args.device,
                        features=args.features)
        for a, acc in res["per_attribute"].items():
            print(f"  {a:<16} {acc:5.1f}")
        print(f"mean probe accuracy {res['mean']:.1f}  -> {out}")
    return 0


cmd_eval.configure = _add_eval


# ----------------------------------------------------------------------------- demo

def _add_demo(p):
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--fresh", action="store_true", help="rebuild everything instead of reusing earlier steps")
    p.add_argument("--quick", action="store_true", help="a much smaller run (about 2 minutes) to check the setup")
    p.add_argument("--pretrain", action="store_true",
                   help="pretrain the tiny CLIP from scratch (about an hour on 2 cores) instead of installing "
                        "the shipped one")


@command("demo", "the embedded default: synthetic data, tiny CLIP, stage 1 + 2 + control, before/after report")
def cmd_demo(args) -> int:
    from dataclasses import replace

    from genhancer.demo.run import QUICK_DEMO, DemoSettings, run_demo

    _check_out_dir(args.out)
    settings = QUICK_DEMO if args.quick else DemoSettings()
    run_demo(args.out, replace(settings, pretrain=args.pretrain), fresh=args.fresh)
    return 0


cmd_demo.configure = _add_demo


def _add_ablate(p):
    from genhancer.ablate import VARIANT_NAMES, AblateSettings

    d = AblateSettings()
    p.add_argument("--demo-dir", default="runs/demo",
                   help="shared inputs (data, tiny CLIP, cache); built there when missing (default runs/demo)")
    p.add_argument("--out", default="runs/ablate", help="output directory (default runs/ablate)")
    p.add_argument("--variants", nargs="+", default=list(VARIANT_NAMES), metavar="NAME",
                   help=f"rows to run (default all): {', '.join(VARIANT_NAMES)}")
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds), help="training seeds (default 0 1 2)")
    p.add_argument("--stage1-steps", type=int, default=d.stage1_steps)
    p.add_argument("--stage2-steps", type=int, default=d.stage2_steps)
    p.add_argument("--batch-size", type=int, default=d.demo.batch_size)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (the quick demo's inputs, a few steps): checks the plumbing, not the method")


@command("ablate", "the paper's comparisons on the embedded testbed, mean +- std over seeds")
def cmd_ablate(args) -> int:
    from genhancer.ablate import AblateSettings, run_ablate
    from genhancer.demo.run import QUICK_DEMO, DemoSettings

    if min(args.stage1_steps, args.stage2_steps, args.batch_size) < 1:
        raise ConfigError("--stage1-steps, --stage2-steps and --batch-size must be >= 1")
    demo = QUICK_DEMO if args.quick else DemoSettings(batch_size=args.batch_size)
    s1, s2 = (10, 5) if args.quick else (args.stage1_steps, args.stage2_steps)
    run_ablate(args.demo_dir, args.out, AblateSettings(demo=demo, stage1_steps=s1, stage2_steps=s2,
                                                        seeds=tuple(args.seeds), variants=tuple(args.variants),
                                                        vq_steps=50 if args.quick else AblateSettings.vq_steps))
    return 0


cmd_ablate.configure = _add_ablate


# ----------------------------------------------------------------------------- tokenizer

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


def load_image_tensor(kind: str, path: str, size: int, limit: int):
    """Up to ``limit`` images of a data source, center-cropped to [N,3,size,size] in [-1,1]."""
    import torch

    from genhancer.config import DataConfig
    from genhancer.data.sources import build_source
    from genhancer.data.transforms import PairedViews

    src = build_source(DataConfig(kind=kind, path=path), shuffle=False)
    views = PairedViews(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size, train=False)
    out = []
    for item in src:
        out.append(views(item["image"])["gen_pixels"])
        if len(out) >= limit:
            break
    return torch.stack(out), src.skipped.summary()


@command("tokenizer", "train a VQ tokenizer for the discrete denoiser")
def cmd_tokenizer(args) -> int:
    from genhancer.tokenizers.vq import train_vq_tokenizer

    images, skipped = load_image_tensor(args.data_kind, args.data, args.image_size, args.max_images)
    m = train_vq_tokenizer(images, args.out, codebook_size=args.codebook_size, codebook_dim=args.codebook_dim,
                           downsample=args.downsample, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           mode=args.mode, seed=args.seed, progress=True)
    print(f"VQ tokenizer: PSNR {m['psnr']:.2f} dB, codebook usage {100 * m['usage']:.1f} %, perplexity "
          f"{m['perplexity']:.1f} on {len(images)} images ({skipped}) -> {args.out}")
    return 0


cmd_tokenizer.configure = _add_tokenizer


# ----------------------------------------------------------------------------- world

def _add_world(p):
    p.add_argument("--seed", type=int, required=True, help="world seed (each part adds its own offset)")
    p.add_argument("--out", required=True, help="directory to write the parts into")
    p.add_argument("--corpus", type=int, metavar="N", help="captioned training images -> OUT/corpus/")
    p.add_argument("--benchmark", action="store_true", help="MMVP-format pair benchmark -> OUT/mmvp/")
    p.add_argument("--pairs-per-category", type=int, default=15, help="benchmark pairs per category (default 15)")
    p.add_argument("--probe", type=int, metavar="N", help="images labelled with every fine attribute -> OUT/probe/")
    p.add_argument("--coarse", type=int, metavar="N", help="zero-shot images per kind -> OUT/coarse/")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--fine-caption-prob", type=float, default=0.15,
                   help="corpus: share of captions that name one fine attribute (default 0.15)")
    p.add_argument("--overwrite", action="store_true", help="replace parts that already exist")


@command("world", "write any part of the demo's synthetic world for any seed (corpus, benchmark, probe, coarse)")
def cmd_world(args) -> int:
    from genhancer.demo.world import WORLD_VERSION, write_world

    dirs = write_world(args.out, args.seed, corpus=args.corpus, benchmark=args.benchmark, probe=args.probe,
                       coarse=args.coarse, size=args.image_size, pairs_per_category=args.pairs_per_category,
                       overwrite=args.overwrite, fine_caption_prob=args.fine_caption_prob)
    for name, d in dirs.items():
        print(f"{name}: {d}")
    print(f"world version {WORLD_VERSION}, seed {args.seed}")
    return 0


cmd_world.configure = _add_world


# ----------------------------------------------------------------------------- pretrain-clip

def _add_pretrain(p):
    p.add_argument("corpus", help="directory with captions.jsonl ({'image': relpath, 'text': caption} rows)")
    p.add_argument("--out", required=True, help="directory for the tiny CLIP (save_pretrained layout)")
    p.add_argument("--steps", type=int, default=None, help="contrastive steps (default: the module's default)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3)")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="continue from an earlier pretrain-clip output instead of a random init")
    p.add_argument("--overwrite", action="store_true")


@command("pretrain-clip", "pretrain a tiny CLIP contrastively on a captioned corpus (the demo's encoder)")
def cmd_pretrain(args) -> int:
    from genhancer.demo.pretrain import DEFAULT_STEPS, pretrain_clip

    _at_least("--steps", args.steps)
    _at_least("--batch-size", args.batch_size, 2)  # a contrastive batch needs negatives
    _at_least("--image-size", args.image_size)
    _check_out_dir(args.out)
    m = pretrain_clip(args.corpus, args.out, steps=DEFAULT_STEPS if args.steps is None else args.steps,
                      batch_size=args.batch_size, image_size=args.image_size, seed=args.seed,
                      overwrite=args.overwrite, init_from=args.init_from,
                      **({} if args.lr is None else {"lr": args.lr}))
    print(dump({k: v for k, v in m.items() if not isinstance(v, (list, dict))}))
    return 0


cmd_pretrain.configure = _add_pretrain


# ----------------------------------------------------------------------------- bench

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
