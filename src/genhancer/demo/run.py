"""The embedded default: the whole method, offline, on a CPU, in minutes.

    world data -> tiny CLIP (shipped, or pretrained with --pretrain) -> cache (tokens,
    latents, encoder views) -> stage 1 -> stage 2 and the shuffled-condition control
    -> export -> evaluation of baseline / control / enhanced -> report.html

Every step writes into ``out/`` and is skipped on a re-run when its output exists, so a
second ``genhancer demo`` only redoes what is missing (``--fresh`` redoes everything).

The evaluation sets (MMVP-format pairs, probe images, zero-shot folder) come from world
seed ``world_seed`` (default 0); the demo's recipe was tuned on world seed 100's sets, so
the numbers the demo reports are on data nobody tuned on.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from genhancer.config import Config, load_config
from genhancer.demo.evaluate import evaluate_encoder
from genhancer.errors import Preempted

# The shipped tiny CLIP was pretrained with these (genhancer.demo.clip_asset, asset.json).
PRETRAIN_CORPUS_IMAGES = 30000
PRETRAIN_STEPS = 5000
PRETRAIN_HARD_NEGATIVE_SHARE = 0.25


@dataclass
class DemoSettings:
    """Sizes chosen so the whole demo fits in ~15 minutes on a slow 2-core CPU."""

    image_size: int = 64
    corpus_images: int = 6000           # training corpus (the cache is built from it: its cost scales)
    probe_images: int = 1200
    coarse_per_class: int = 30
    world_seed: int = 0                 # evaluation sets; the recipe was tuned on world seed 100
    pretrain: bool = False              # pretrain the tiny CLIP here instead of installing the shipped one
    pretrain_corpus_images: int = PRETRAIN_CORPUS_IMAGES
    pretrain_steps: int = PRETRAIN_STEPS
    hard_negative_share: float = PRETRAIN_HARD_NEGATIVE_SHARE  # corpus images in hard-negative pairs
    pretrain_mixed_precision: str = "bf16"
    cache_augmentations: int = 1
    stage1_steps: int = 500
    stage1_lr: float = 1e-4
    stage2_steps: int = 300
    stage2_lr: float = 2e-4             # 1e-3 cost 8 zero-shot points (16 for the control); see README
    batch_size: int = 32
    denoiser: str = "small"
    seed: int = 0                       # training seed
    control: bool = True                # also train the shuffled-condition control stage 2
    oracle: bool = True                 # also train stage 1 on the oracle condition (the drawability ceiling)
    large_pairs_per_category: int = 50  # the large benchmark (data/mmvp-large): paired CIs vs the control
    drawability_images: int = 120       # held-out probe images whose reconstructions the judge scores
    diag_every: int = 50
    # Stage 2's checkpoint is picked on a validation probe set of its own world seed
    # (data/val-probe), never on the evaluation sets (world_seed); 0 = export the last step.
    val_every: int = 50
    val_world_seed: int = 200
    val_probe_images: int = 300


# `genhancer demo --quick`: about 2 minutes; checks the setup, says nothing about the method.
QUICK_DEMO = DemoSettings(corpus_images=1500, probe_images=300, coarse_per_class=8, pretrain_corpus_images=1500,
                          pretrain_steps=60, stage1_steps=40, stage2_steps=20, denoiser="tiny", diag_every=20,
                          large_pairs_per_category=16, drawability_images=40)


def demo_config(out: Path, s: DemoSettings, stage: str, extra: Sequence[str] = (), run_dir: Path | None = None,
                cached: bool = True, name: str | None = None) -> Config:
    """The demo's train config for one stage (``"1"``, ``"2"`` or ``"e2e"``).

    ``out`` holds the shared inputs (data, tiny CLIP, cache); the run itself is written
    under ``run_dir`` (default ``out``): ``stage1/`` and ``stage2/`` (an e2e run also writes
    ``stage2/``, so that the enhanced encoder is always exported from there); ``name``
    renames the stage-2 directory (the control's). ``cached=False`` reads images instead of
    the cache (needed for local tokens and the discrete space, which the TAEF2 cache does
    not serve). ``extra`` overrides come last: this is what ``genhancer ablate`` varies.
    """
    run_dir = Path(run_dir or out)
    clip, corpus = out / "clip", out / "data" / "corpus" / "captions.jsonl"
    common = [f"encoder.name_or_path={clip}", "tokenizer.kind=taef2", f"denoiser.preset={s.denoiser}",
              f"data.batch_size={s.batch_size}", f"train.seed={s.seed}", "train.log_every=10",
              "projector.hidden_dim=256", f"train.diag_data={out / 'data' / 'probe' / 'images'}",
              f"train.diag_every={s.diag_every}"]
    data = ["data.kind=cache", f"data.path={out / 'cache'}"] if cached else ["data.kind=jsonl", f"data.path={corpus}"]
    stage2_dir = run_dir / (name or "stage2")
    val = _val_overrides(out, s)
    if stage == "1":
        over = common + data + ["train.stage=1", f"train.steps={s.stage1_steps}", f"train.lr={s.stage1_lr}",
                                f"train.checkpoint_every={s.stage1_steps}", f"train.output_dir={run_dir / 'stage1'}"]
    elif stage == "2":
        over = common + data + ["train.stage=2", f"train.steps={s.stage2_steps}", f"train.lr={s.stage2_lr}",
                                f"train.checkpoint_every={s.stage2_steps}", f"train.init_from={run_dir / 'stage1'}",
                                f"train.output_dir={stage2_dir}", *val]
    elif stage == "e2e":
        # Same total number of updates as the two stages together; one learning rate.
        steps = s.stage1_steps + s.stage2_steps
        over = common + data + ["train.stage=e2e", f"train.steps={steps}", f"train.lr={s.stage2_lr}",
                                f"train.checkpoint_every={steps}", f"train.output_dir={stage2_dir}", *val]
    else:
        raise ValueError(f"stage must be '1', '2' or 'e2e', got {stage!r}")
    return load_config("tiny", over + list(extra))


def _val_overrides(out: Path, s: DemoSettings) -> list[str]:
    """Validation of stage 2 / e2e on data/val-probe; refused when it would be an evaluation set."""
    if not s.val_every:
        return []
    if s.val_world_seed == s.world_seed:
        from genhancer.errors import ConfigError

        raise ConfigError(f"demo: val_world_seed {s.val_world_seed} is the evaluation world seed, so the validation "
                          "probe set would be the test probe set; choose another val_world_seed")
    return [f"train.val_every={s.val_every}", f"train.val_data={out / 'data' / 'val-probe' / 'labels.jsonl'}"]


def _step(name: str, done: Path, fn, log: dict) -> None:
    t0 = time.perf_counter()
    if done.exists():
        print(f"[demo] {name}: reusing {done}")
        log[name] = {"seconds": 0.0, "reused": True}
        return
    print(f"[demo] {name} ...", flush=True)
    fn()
    log[name] = {"seconds": round(time.perf_counter() - t0, 1), "reused": False}
    print(f"[demo] {name}: {log[name]['seconds']} s", flush=True)


def _train_step(name: str, cfg: Config, timing: dict) -> None:
    """One training stage as a demo step: done once its last step is checkpointed. A stage
    a signal stopped (it left an earlier checkpoint) continues from there."""
    from genhancer.checkpoint import list_checkpoints
    from genhancer.training import train

    run = Path(cfg.train.output_dir)
    final = run / "checkpoints" / f"step-{cfg.train.steps:08d}"
    _step(name, final, lambda: train(cfg, resume=bool(list_checkpoints(run))), timing)


def pretrain_demo_clip(out: Path, s: DemoSettings) -> dict:
    """The tiny CLIP from scratch, as the shipped one was made: its own corpus (world seed 0,
    ``pretrain_corpus_images``; the training corpus is a prefix of it) and
    ``pretrain_steps`` contrastive steps."""
    from genhancer.demo import world
    from genhancer.demo.pretrain import pretrain_clip

    corpus = out / "data" / "clip-world" / "corpus"
    if not (corpus / "captions.jsonl").is_file():
        world.write_world(corpus.parent, seed=0, corpus=s.pretrain_corpus_images, size=s.image_size, overwrite=True,
                          hard_negative_share=s.hard_negative_share)
    return pretrain_clip(corpus, out / "clip", steps=s.pretrain_steps, batch_size=128, image_size=s.image_size,
                         seed=0, mixed_precision=s.pretrain_mixed_precision)


def prepare_inputs(out: Path, s: DemoSettings, timing: dict) -> None:
    """Data, tiny CLIP and cache under ``out`` (each reused when present)."""
    from genhancer.demo import world

    data = out / "data"

    def generate():
        # Training corpus: world seed 0 (a prefix of the shipped CLIP's pretraining corpus).
        world.write_world(data, seed=0, corpus=s.corpus_images, size=s.image_size, overwrite=True,
                          hard_negative_share=s.hard_negative_share)
        world.write_world(data, seed=s.world_seed, benchmark=True, probe=s.probe_images, coarse=s.coarse_per_class,
                          size=s.image_size, overwrite=True)
        if s.large_pairs_per_category:
            from genhancer.demo.evaluate import LARGE_BENCHMARK

            # Its own seed stream: no pair of the MMVP-sized benchmark reappears in it.
            world.write_mmvp_benchmark(data / LARGE_BENCHMARK, s.large_pairs_per_category,
                                       seed=s.world_seed + world.PART_SEED_OFFSETS["benchmark-large"],
                                       size=s.image_size)
        (data / "world.json").write_text(json.dumps({"world_version": world.WORLD_VERSION, "corpus_seed": 0,
                                                     "eval_world_seed": s.world_seed}, indent=1))

    _step("generate data", data / "world.json", generate, timing)
    if s.val_every:  # its own step: a demo directory from before validation gains it on a re-run
        _step("generate the validation probe set", data / "val-probe" / "labels.jsonl",
              lambda: world.write_probe_set(data / "val-probe", s.val_probe_images, size=s.image_size,
                                            seed=s.val_world_seed + world.PART_SEED_OFFSETS["probe"]), timing)

    def clip():
        if s.pretrain:
            pretrain_demo_clip(out, s)
        else:
            from genhancer.demo.clip_asset import install_clip

            install_clip(out / "clip")

    _step("pretrain tiny CLIP" if s.pretrain else "install the shipped tiny CLIP", out / "clip", clip, timing)

    def cache():
        from genhancer.data.cache_build import build_cache

        cfg = demo_config(out, s, "2", cached=False)  # reads images: the cache is built from the raw corpus
        build_cache(cfg, out / "cache", augmentations=s.cache_augmentations, pixels=True)

    _step("cache tokens, latents and encoder views", out / "cache", cache, timing)


def run_demo(out: str | Path = "runs/demo", settings: DemoSettings | None = None, fresh: bool = False) -> dict:
    """The whole demo into ``out``, which stays locked (``genhancer.runlock``) while it runs."""
    from genhancer.runlock import hold

    out = Path(out)
    if out.exists() and not out.is_dir():
        from genhancer.errors import DataError

        raise DataError(f"--out: '{out}' exists and is not a directory")
    with hold(out) as lock:
        try:
            return _run_demo(out, settings or DemoSettings(), fresh, lock.path)
        except Preempted as e:  # not train's --resume: the demo continues its stopped stage itself
            raise Preempted(e.where, e.exit_code, "run the same `genhancer demo` again to continue") from None


def _run_demo(out: Path, s: DemoSettings, fresh: bool, lock_path: Path) -> dict:
    if fresh:  # everything but the lock this run holds
        for p in out.iterdir():
            if p == lock_path:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    (out / "settings.json").write_text(json.dumps(asdict(s), indent=1))
    data = out / "data"
    timing: dict = {}
    t_start = time.perf_counter()
    prepare_inputs(out, s, timing)

    from genhancer.export import export

    _train_step("stage 1", demo_config(out, s, "1"), timing)
    if s.oracle:
        _train_step("oracle stage 1 (condition: every patch token)",
                    demo_config(out, s, "1", ["cond.source=patches"], run_dir=out / "oracle"), timing)
    _train_step("stage 2", demo_config(out, s, "2"), timing)
    _step("export merged encoder", out / "enhanced",
          lambda: export(out / "stage2", out / "enhanced", best=bool(s.val_every)), timing)
    if s.control:
        _train_step("control: stage 2 with shuffled conditions",
                    demo_config(out, s, "2", ["cond.shuffle=true"], name="control"), timing)
        _step("export control encoder", out / "control-enhanced",
              lambda: export(out / "control", out / "control-enhanced", best=bool(s.val_every)), timing)

    def evaluate():
        from genhancer.eval.compare import run_compare

        res = {"baseline": evaluate_encoder(str(out / "clip"), data, patches=True),
               "enhanced": evaluate_encoder(str(out / "enhanced"), data)}
        if s.control:
            res["control"] = evaluate_encoder(str(out / "control-enhanced"), data)
        cmp = run_compare(out / "clip", out / "enhanced", out / "eval", mmvp_data=data / "mmvp",
                          zeroshot_data=data / "coarse", print_table=True)
        res["compare_rows"] = cmp["rows"]
        (out / "eval" / "results.json").write_text(json.dumps(res, indent=1, default=str))

    _step("evaluate baseline / control / enhanced", out / "eval" / "results.json", evaluate, timing)

    def per_attribute():
        from genhancer.demo.attributes import analyse

        analyse(out, s.drawability_images)

    _step("per-attribute analysis (large benchmark, drawability)", out / "eval" / "attributes.json",
          per_attribute, timing)

    def grids():
        from genhancer.sample import sample_grid

        imgs = [str(p) for p in sorted((data / "mmvp" / "MLLM_VLM Images").rglob("*.jpg"))[::30][:6]]
        sample_grid(out / "stage1", imgs, out / "recon_stage1.png", seeds=2)
        sample_grid(out / "stage2", imgs, out / "recon_stage2.png", seeds=2)

    _step("reconstruction grids", out / "recon_stage2.png", grids, timing)
    timing["total_seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    from genhancer.demo.report import write_report

    report = write_report(out)
    print(f"[demo] report: {report}")
    return {"report": str(report), "timing": timing}
