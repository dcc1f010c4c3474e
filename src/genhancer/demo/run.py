"""The embedded default: the whole method, offline, on a CPU, in minutes.

    world data -> tiny CLIP pretraining -> stage-1 cache -> stage 1 -> stage 2 -> export
    -> before / after evaluation (MMVP-format pairs, zero-shot, linear probes) -> report.html

Every step writes into ``out/`` and is skipped on a re-run when its output exists, so a
second ``genhancer demo`` only redoes what is missing (``--fresh`` redoes everything).
"""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from genhancer.config import Config, load_config


@dataclass
class DemoSettings:
    """Sizes chosen so the whole demo fits in ~15 minutes on 2 CPU cores."""

    image_size: int = 64
    corpus_images: int = 12000
    probe_images: int = 1200
    coarse_per_class: int = 30
    pretrain_steps: int | None = None       # None: pretrain_clip's own default
    stage1_steps: int = 600
    stage2_steps: int = 300
    stage2_lr: float = 1e-3  # 1e-4 left the encoder unchanged in 300 steps (probe -0.2 pt); see README
    batch_size: int = 32
    denoiser: str = "small"
    seed: int = 0


# `genhancer demo --quick`: about 2 minutes; checks the setup, says nothing about the method.
QUICK_DEMO = DemoSettings(corpus_images=1500, probe_images=300, coarse_per_class=8, pretrain_steps=60,
                          stage1_steps=40, stage2_steps=20, denoiser="tiny")


def demo_config(out: Path, s: DemoSettings, stage: str, extra: Sequence[str] = (), run_dir: Path | None = None,
                cached: bool = True) -> Config:
    """The demo's train config for one stage (``"1"``, ``"2"`` or ``"e2e"``).

    ``out`` holds the shared inputs (data, pretrained CLIP, stage-1 cache); the run itself is
    written under ``run_dir`` (default ``out``): ``stage1/`` and ``stage2/`` (an e2e run also
    writes ``stage2/``, so that the enhanced encoder is always exported from there).
    ``cached=False`` makes stage 1 read images (needed for local tokens and the discrete
    space, which the TAEF2 cache does not serve). ``extra`` overrides come last: this is
    what ``genhancer ablate`` varies.
    """
    run_dir = Path(run_dir or out)
    clip, corpus = out / "clip", out / "data" / "corpus" / "captions.jsonl"
    common = [f"encoder.name_or_path={clip}", "tokenizer.kind=taef2", f"denoiser.preset={s.denoiser}",
              f"data.batch_size={s.batch_size}", f"train.seed={s.seed}", "train.log_every=10",
              "projector.hidden_dim=256"]
    images = ["data.kind=jsonl", f"data.path={corpus}"]
    if stage == "1":
        data = ["data.kind=cache", f"data.path={out / 'cache'}"] if cached else images
        over = common + data + ["train.stage=1", f"train.steps={s.stage1_steps}",
                                f"train.checkpoint_every={s.stage1_steps}", f"train.output_dir={run_dir / 'stage1'}"]
    elif stage == "2":
        over = common + images + ["train.stage=2", f"train.steps={s.stage2_steps}", f"train.lr={s.stage2_lr}",
                                  f"train.checkpoint_every={s.stage2_steps}", f"train.init_from={run_dir / 'stage1'}",
                                  f"train.output_dir={run_dir / 'stage2'}"]
    elif stage == "e2e":
        # Same total number of updates as the two stages together; one learning rate.
        steps = s.stage1_steps + s.stage2_steps
        over = common + images + ["train.stage=e2e", f"train.steps={steps}", f"train.lr={s.stage2_lr}",
                                  f"train.checkpoint_every={steps}", f"train.output_dir={run_dir / 'stage2'}"]
    else:
        raise ValueError(f"stage must be '1', '2' or 'e2e', got {stage!r}")
    return load_config("tiny", over + list(extra))


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


def prepare_inputs(out: Path, s: DemoSettings, timing: dict) -> None:
    """Data, pretrained tiny CLIP and stage-1 cache under ``out`` (each reused when present)."""
    from genhancer.demo import world

    data = out / "data"
    _step("generate data", data / "coarse", lambda: (
        world.write_corpus(data / "corpus", s.corpus_images, seed=s.seed, size=s.image_size),
        world.write_mmvp_benchmark(data / "mmvp", seed=s.seed + 1000, size=s.image_size),
        world.write_probe_set(data / "probe", s.probe_images, seed=s.seed + 2000, size=s.image_size),
        world.write_coarse_folder(data / "coarse", s.coarse_per_class, seed=s.seed + 3000, size=s.image_size)),
        timing)

    def pretrain():
        from genhancer.demo.pretrain import pretrain_clip

        kw = {"steps": s.pretrain_steps} if s.pretrain_steps else {}
        pretrain_clip(data / "corpus", out / "clip", image_size=s.image_size, seed=s.seed, **kw)

    _step("pretrain tiny CLIP", out / "clip", pretrain, timing)

    def cache():
        from genhancer.cache import build_cache

        cfg = demo_config(out, s, "2")  # reads images: the cache is built from the raw corpus
        build_cache(cfg, out / "cache")

    _step("cache stage-1 inputs", out / "cache", cache, timing)


def run_demo(out: str | Path = "runs/demo", settings: DemoSettings | None = None, fresh: bool = False) -> dict:
    s = settings or DemoSettings()
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    timing: dict = {}
    t_start = time.perf_counter()
    prepare_inputs(out, s, timing)

    from genhancer.train import train

    _step("stage 1", out / "stage1" / "checkpoints", lambda: train(demo_config(out, s, "1")), timing)
    _step("stage 2", out / "stage2" / "checkpoints", lambda: train(demo_config(out, s, "2")), timing)

    def export():
        from genhancer.export import export as do_export

        do_export(out / "stage2", out / "enhanced")

    _step("export merged encoder", out / "enhanced", export, timing)

    def evaluate():
        from genhancer.eval.compare import run_compare
        from genhancer.eval.probe import run_probe

        res = run_compare(out / "clip", out / "enhanced", out / "eval", mmvp_data=data / "mmvp",
                          zeroshot_data=data / "coarse", print_table=True)
        probes = {"before": run_probe(out / "clip", data / "probe" / "labels.jsonl", out / "eval" / "probe_before"),
                  "after": run_probe(out / "enhanced", data / "probe" / "labels.jsonl", out / "eval" / "probe_after")}
        (out / "eval" / "probes.json").write_text(json.dumps(probes, indent=2))
        (out / "eval" / "compare.json").write_text(json.dumps(res.get("rows", res), indent=2, default=str))

    _step("evaluate before / after", out / "eval" / "probes.json", evaluate, timing)

    def grid():
        from genhancer.sample import sample_grid

        imgs = sorted((data / "mmvp" / "MLLM_VLM Images").rglob("*.jpg"))[::30][:6]
        sample_grid(out / "stage1", [str(p) for p in imgs], out / "reconstructions.png", seeds=2)

    _step("reconstruction grid", out / "reconstructions.png", grid, timing)
    timing["total_seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "timing.json").write_text(json.dumps(timing, indent=1))
    report = write_report(out)
    print(f"[demo] report: {report}")
    return {"report": str(report), "timing": timing}


def _img(path: Path, alt: str, width: int = 480) -> str:
    if not path.is_file():
        return f"<p><em>{html.escape(alt)}: missing</em></p>"
    from genhancer.eval.plots import png_data_uri

    return f'<figure><img src="{png_data_uri(path)}" width="{width}" alt="{html.escape(alt)}">' \
           f"<figcaption>{html.escape(alt)}</figcaption></figure>"


def write_report(out: Path) -> Path:
    """One self-contained HTML page: tables, charts, reconstructions, loss curves.

    When ``genhancer ablate`` has run on these inputs it leaves ``ablation.md`` / ``.png``
    here, and the page gains the ablation table (incl. the continuous vs discrete row).
    """
    ev = out / "eval"
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else {}
    parts = ["<!doctype html><meta charset='utf-8'><title>genhancer demo</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}figure{display:inline-block}</style>",
             "<h1>genhancer embedded demo</h1>",
             "<p>A tiny CLIP pretrained on a synthetic world is enhanced with the two-stage GenHancer recipe "
             "(continuous MM-DiT on TAEF2 latents, conditioned on the global token only) and evaluated before / "
             "after.</p>"]
    md = ev / "report.md"
    if md.is_file():
        parts.append("<h2>Before / after</h2><pre>" + html.escape(md.read_text()) + "</pre>")
    probes = ev / "probes.json"
    if probes.is_file():
        p = json.loads(probes.read_text())
        rows = "".join(f"<tr><th>{html.escape(a)}</th><td>{p['before']['per_attribute'][a]:.1f}</td>"
                       f"<td>{p['after']['per_attribute'][a]:.1f}</td>"
                       f"<td>{p['after']['per_attribute'][a] - p['before']['per_attribute'][a]:+.1f}</td></tr>"
                       for a in p["before"]["per_attribute"])
        parts.append("<h2>Linear probes of fine attributes on the global token (accuracy %)</h2>"
                     "<table><tr><th>attribute</th><th>before</th><th>after</th><th>delta</th></tr>" + rows +
                     f"<tr><th>mean</th><td>{p['before']['mean']:.1f}</td><td>{p['after']['mean']:.1f}</td>"
                     f"<td>{p['after']['mean'] - p['before']['mean']:+.1f}</td></tr></table>")
    for png in sorted(ev.glob("*.png")):
        parts.append(_img(png, png.stem.replace("_", " ")))
    parts.append("<h2>Reconstructions from the global token (stage 1)</h2>")
    parts.append(_img(out / "reconstructions.png", "left: original; right: generated from the global token", 400))
    parts.append("<h2>Training</h2>")
    for st in ("stage1", "stage2"):
        for name in ("loss_curve.png", "loss_by_t.png"):
            parts.append(_img(out / st / name, f"{st} {name[:-4].replace('_', ' ')}", 360))
    if (out / "ablation.md").is_file():
        parts.append("<h2>Ablations (genhancer ablate; mean ± std over seeds, delta to the baseline)</h2><pre>"
                     + html.escape((out / "ablation.md").read_text()) + "</pre>")
        parts.append(_img(out / "ablation.png", "ablations: bars = mean, whiskers = std, dashed = baseline", 900))
    parts.append("<h2>Timing (s)</h2><pre>" + html.escape(json.dumps(timing, indent=1)) + "</pre>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
