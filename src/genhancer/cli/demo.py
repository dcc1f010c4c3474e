"""``genhancer demo`` / ``ablate`` / ``world`` / ``pretrain-clip``: the embedded testbed."""

from __future__ import annotations

from genhancer.cli.common import at_least, check_out_dir, command, dump
from genhancer.errors import ConfigError


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

    check_out_dir(args.out)
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


def _add_world(p):
    p.add_argument("--seed", type=int, help="world seed (each part adds its own offset); needed to write parts")
    p.add_argument("--out", help="directory to write the parts into (with --stats: the world folder to read)")
    p.add_argument("--stats", action="store_true",
                   help="print each benchmark category's cue share (the share of the reconstruction target "
                        "its attribute carries) for OUT/mmvp, written now or before")
    p.add_argument("--corpus", type=int, metavar="N", help="captioned training images -> OUT/corpus/")
    p.add_argument("--benchmark", action="store_true", help="MMVP-format pair benchmark -> OUT/mmvp/")
    p.add_argument("--pairs-per-category", type=int, default=15, help="benchmark pairs per category (default 15)")
    p.add_argument("--probe", type=int, metavar="N", help="images labelled with every fine attribute -> OUT/probe/")
    p.add_argument("--coarse", type=int, metavar="N", help="zero-shot images per kind -> OUT/coarse/")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--fine-caption-prob", type=float, default=0.15,
                   help="corpus: share of captions that name one fine attribute (default 0.15)")
    p.add_argument("--hard-negative-share", type=float, default=0.0,
                   help="corpus: share of images in hard-negative pairs (same coarse content, one fine "
                        "attribute differs, both captions name it; default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace parts that already exist")


@command("world", "write any part of the demo's synthetic world for any seed (corpus, benchmark, probe, coarse)")
def cmd_world(args) -> int:
    from pathlib import Path

    from genhancer.demo.world import PART_DIRS, WORLD_VERSION, write_world
    from genhancer.errors import ConfigError

    if args.out is None:
        raise ConfigError("world: --out DIR is required")
    writes = any(v is not None for v in (args.corpus, args.probe, args.coarse)) or args.benchmark
    if writes or not args.stats:
        if args.seed is None:
            raise ConfigError("world: --seed S is required to write parts")
        dirs = write_world(args.out, args.seed, corpus=args.corpus, benchmark=args.benchmark, probe=args.probe,
                           coarse=args.coarse, size=args.image_size, pairs_per_category=args.pairs_per_category,
                           overwrite=args.overwrite, fine_caption_prob=args.fine_caption_prob,
                           hard_negative_share=args.hard_negative_share)
        for name, d in dirs.items():
            print(f"{name}: {d}")
        print(f"world version {WORLD_VERSION}, seed {args.seed}")
    if args.stats:
        from genhancer.demo.world.stats import cue_shares, format_cue_shares

        bench = Path(args.out) / PART_DIRS["benchmark"]
        if not (bench / "pairs.jsonl").is_file():
            bench = Path(args.out)  # --out may name the benchmark folder itself
        shares = cue_shares(bench)
        print("cue share: squared TAEF2-latent distance of a pair / mean over random benchmark pairs")
        print(format_cue_shares(shares))
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
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                   help="bf16: forward under autocast (CPUs with AVX-512 BF16 run it ~1.7x faster)")
    p.add_argument("--overwrite", action="store_true")


@command("pretrain-clip", "pretrain a tiny CLIP contrastively on a captioned corpus (the demo's encoder)")
def cmd_pretrain(args) -> int:
    from genhancer.demo.pretrain import DEFAULT_STEPS, pretrain_clip

    at_least("--steps", args.steps)
    at_least("--batch-size", args.batch_size, 2)  # a contrastive batch needs negatives
    at_least("--image-size", args.image_size)
    check_out_dir(args.out)
    m = pretrain_clip(args.corpus, args.out, steps=DEFAULT_STEPS if args.steps is None else args.steps,
                      batch_size=args.batch_size, image_size=args.image_size, seed=args.seed,
                      overwrite=args.overwrite, init_from=args.init_from, mixed_precision=args.mixed_precision,
                      **({} if args.lr is None else {"lr": args.lr}))
    print(dump({k: v for k, v in m.items() if not isinstance(v, (list, dict))}))
    return 0


cmd_pretrain.configure = _add_pretrain


COMMANDS = (cmd_demo, cmd_ablate, cmd_world, cmd_pretrain)
