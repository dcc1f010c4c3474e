"""``genhancer ablate``: the paper's comparisons on the embedded testbed, over seeds.

Every variant is the demo's two-stage recipe with one thing changed (the overrides below),
trained from the same pretrained tiny CLIP on the same corpus, then judged like the demo:

* ``mmvp``   — MMVP-VLM average (%) on the held-out pair benchmark (135 pairs);
* ``probe``  — mean linear-probe accuracy (%) of the 9 fine attributes on the global token
  (1,200 held-out images; finer-grained than pair scores, so the most sensitive number);
* ``zeroshot`` — top-1 zero-shot accuracy (%) on the coarse-class folder (must not drop).

Shared inputs (data, pretrained CLIP, stage-1 cache, VQ tokenizer) live in the demo
directory and are built there when missing. Each (variant, seed) run writes
``<out>/<variant>/seed<k>/metrics.json`` and is skipped on a re-run when that file exists,
so an interrupted ablation resumes where it stopped. The summary (``ablate.md``,
``ablate.json``, ``ablate.png``) reports mean ± sample std over seeds and the delta of each
mean to the untrained baseline.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from genhancer.demo.evaluate import METRIC_LABELS, METRICS, evaluate_encoder
from genhancer.demo.run import DemoSettings, demo_config, prepare_inputs
from genhancer.errors import ConfigError, Preempted


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: the default recipe plus ``overrides``."""

    name: str
    question: str                       # which of the paper's comparisons this row answers
    overrides: tuple[str, ...] = ()
    stage2_overrides: tuple[str, ...] = ()  # stage 2 only (the control)
    e2e: bool = False                   # one joint run instead of stage 1 -> stage 2
    cached: bool = True                 # may read the TAEF2 cache (tokens, latents, encoder views)
    discrete: bool = False              # needs the VQ tokenizer
    stage1_from: str | None = None      # reuse this variant's stage 1 of the same seed (identical config)
    control: str | None = None          # its own control row, read beside the shuffled-condition one


# DCR contrasts each anchor with all 15 other images of a batch of 16; the ablation's batch is
# 32, and 3 negatives keep a stage-2 step at 5 denoiser forwards per image instead of 33
# (`genhancer bench` on a quiet machine: 7 negatives made the step 5.7x the MSE step, all 31 34x).
ABLATE_NEGATIVES = 3
# Picked on the validation world (seed 200) from 0.1 / 1 / 10, seed 0: best validation probe 51.98 / 52.72
# / 52.96 (README, "The field's recipes").
PRESERVE_WEIGHT = 10.0

VARIANTS: tuple[Variant, ...] = (
    Variant("default", "reference: global token, two-stage, logit-normal, small MM-DiT"),
    Variant("shuffled-condition", "control: stage 2 reconstructs each image from another image's global token",
            stage2_overrides=("cond.shuffle=true",), stage1_from="default"),
    Variant("adapter-attn-mlp", "stage 2: LoRA on attention + MLP only, no biases, visual projection frozen "
            "(the default adapts the projection and biases as upstream does)",
            stage2_overrides=("lora.visual_projection=false", "lora.bias=none"), stage1_from="default"),
    Variant("oracle-condition", "ceiling: the condition is every patch token (what the tower sees), not the "
            "global token; its stage 1 measures what the denoiser can draw",
            ("cond.source=patches",)),
    # The field's recipes (issue 27), each on the default's stage 1; read against the control.
    Variant("contrastive", "objective (DCR): stage 2 trains on InfoNCE over the denoiser's predictions "
            f"({ABLATE_NEGATIVES} negatives, augmented-view and true-target positives) instead of the MSE",
            stage2_overrides=("objective.kind=contrastive_rf", f"objective.num_negatives={ABLATE_NEGATIVES}"),
            stage1_from="default", control="contrastive-shuffled"),
    Variant("contrastive-shuffled", "control of `contrastive`: the same objective, each image's condition made "
            "from another image's global token", stage2_overrides=(
                "objective.kind=contrastive_rf", f"objective.num_negatives={ABLATE_NEGATIVES}", "cond.shuffle=true"),
            stage1_from="default"),
    Variant("contrastive+mse", f"objective: stage 2 trains on MSE + 1.0 x DCR's InfoNCE ({ABLATE_NEGATIVES} negatives)",
            stage2_overrides=("objective.contrastive_weight=1.0", f"objective.num_negatives={ABLATE_NEGATIVES}"),
            stage1_from="default"),
    Variant("preserve", f"drift regulariser: stage 2 adds {PRESERVE_WEIGHT} x (1 - cos(global token, the "
            "original's)); weight from a sweep on the validation world", stage2_overrides=(
                f"objective.preserve_weight={PRESERVE_WEIGHT}",), stage1_from="default"),
    Variant("local-10", "condition: +10% local patch tokens", ("cond.local_token_fraction=0.1",), cached=False),
    Variant("local-50", "condition: +50% local patch tokens", ("cond.local_token_fraction=0.5",), cached=False),
    Variant("end-to-end", "training: one joint stage instead of two", e2e=True),
    Variant("uniform-t", "timesteps: uniform instead of logit-normal", ("objective.timestep_sampler=uniform",)),
    Variant("denoiser-tiny", "capacity: tiny MM-DiT (0.27 M)", ("denoiser.preset=tiny",)),
    Variant("denoiser-base", "capacity: base MM-DiT (146 M)", ("denoiser.preset=base",)),
    Variant("discrete", "denoiser kind: Perceiver on masked VQ codes",
            ("tokenizer.kind=vq", "denoiser.kind=perceiver", "denoiser.preset=small",
             "objective.kind=masked_tokens"), cached=False, discrete=True),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


@dataclass
class AblateSettings:
    """Per-run sizes: the demo's recipe by default, so the default row is the demo's run over
    seeds (about 9 minutes a seed for default + control on 2 cores; --stage1-steps,
    --stage2-steps and --batch-size shorten it)."""

    demo: DemoSettings = field(default_factory=DemoSettings)
    stage1_steps: int = DemoSettings.stage1_steps
    stage2_steps: int = DemoSettings.stage2_steps
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = VARIANT_NAMES
    vq_steps: int = 800


def select_variants(names: Sequence[str]) -> list[Variant]:
    by_name = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"ablate: unknown variant(s) {', '.join(unknown)}; expected some of: "
                          f"{', '.join(VARIANT_NAMES)}")
    return [by_name[n] for n in names]


def _evaluate(encoder, demo_dir: Path) -> dict:
    return evaluate_encoder(encoder, demo_dir / "data")


def _ensure_vq(demo_dir: Path, s: AblateSettings) -> Path:
    """The discrete variant's VQ tokenizer, trained once on the corpus and shared by all seeds."""
    from genhancer.data.in_memory import load_image_tensor
    from genhancer.latents.vq_train import train_vq_tokenizer

    vq = demo_dir / "vq"
    if not (vq / "metrics.json").is_file():
        print(f"[ablate] training the VQ tokenizer ({s.vq_steps} steps) -> {vq}", flush=True)
        images, _ = load_image_tensor("jsonl", str(demo_dir / "data" / "corpus" / "captions.jsonl"),
                                      s.demo.image_size, 4096)
        train_vq_tokenizer(images, vq, steps=s.vq_steps, batch_size=32, seed=s.demo.seed)
    return vq


def run_one(demo_dir: Path, out: Path, v: Variant, seed: int, s: AblateSettings) -> dict:
    """Train and evaluate one (variant, seed); returns (and writes) its metrics."""
    from genhancer.export import load_enhanced_encoder
    from genhancer.training import train
    from genhancer.validation import best_checkpoint

    run_dir = out / v.name / f"seed{seed}"
    done = run_dir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run_dir.exists():  # an interrupted run: start it over rather than mix two half-runs
        shutil.rmtree(run_dir)
    print(f"[ablate] {v.name} seed {seed}", flush=True)
    ds = replace(s.demo, seed=seed, stage1_steps=s.stage1_steps, stage2_steps=s.stage2_steps)
    extra = list(v.overrides)
    if v.discrete:
        extra.append(f"tokenizer.name_or_path={_ensure_vq(demo_dir, s)}")
    t0 = time.perf_counter()
    if v.e2e:
        train(demo_config(demo_dir, ds, "e2e", extra, run_dir=run_dir, cached=v.cached))
    elif v.stage1_from:  # another row's stage 1 (the same config): reuse it, or rebuild it once where all find it
        shared = _shared_stage1(demo_dir, out, v, seed, s)
        if shared is None:
            home = out / v.stage1_from / f"seed{seed}" / "shared"
            train(demo_config(demo_dir, ds, "1", extra, run_dir=home, cached=v.cached))
            shared = home / "stage1"
        train(demo_config(demo_dir, ds, "2", [*extra, *v.stage2_overrides, f"train.init_from={shared}"],
                          run_dir=run_dir, cached=v.cached))
    else:
        train(demo_config(demo_dir, ds, "1", extra, run_dir=run_dir, cached=v.cached))
        train(demo_config(demo_dir, ds, "2", extra + list(v.stage2_overrides), run_dir=run_dir, cached=v.cached))
    seconds = time.perf_counter() - t0
    picked = best_checkpoint(run_dir / "stage2")[0] if ds.val_every else run_dir / "stage2"  # validation's pick
    metrics = {"variant": v.name, "seed": seed, **_evaluate(load_enhanced_encoder(picked), demo_dir),
               "train_seconds": round(seconds, 1)}
    # Keep the metrics and logs, drop the weights: 27 runs of checkpoints add up. A stage 1
    # another variant reuses (the control's) stays until the ablation ends.
    shared = {w.stage1_from for w in VARIANTS if w.stage1_from}
    for ckpts in run_dir.glob("stage*/checkpoints"):
        if not (v.name in shared and ckpts.parent.name == "stage1"):
            shutil.rmtree(ckpts)
    done.write_text(json.dumps(metrics, indent=2))
    return metrics


def _shared_stage1(demo_dir: Path, out: Path, v: Variant, seed: int, s: AblateSettings) -> Path | None:
    """The stage-1 run ``v`` reuses: its ``stage1_from`` variant's of the same seed while its
    weights are kept, else the demo's own stage 1 when the demo trained this seed with the same
    recipe (the default's stage 1 is the demo's); None = train one."""
    for mine in (out / v.stage1_from / f"seed{seed}" / "stage1", out / v.stage1_from / f"seed{seed}" / "shared" / "stage1"):
        if (mine / "checkpoints").is_dir():
            return mine
    if v.stage1_from == "default" and _demo_matches(demo_dir, s, seed) and (demo_dir / "stage1" / "checkpoints").is_dir():
        return demo_dir / "stage1"
    return None


def _demo_matches(demo_dir: Path, s: AblateSettings, seed: int | None = None) -> bool:
    """The demo in ``demo_dir`` trained with this ablation's recipe (and seed, when given)."""
    settings = demo_dir / "settings.json"
    if not settings.is_file():
        return False
    ran = json.loads(settings.read_text())
    want = asdict(replace(s.demo, stage1_steps=s.stage1_steps, stage2_steps=s.stage2_steps))
    keys = ("stage1_steps", "stage1_lr", "stage2_steps", "stage2_lr", "batch_size", "denoiser", "corpus_images",
            "cache_augmentations", "image_size", "world_seed")
    return all(ran.get(k) == want[k] for k in keys) and (seed is None or ran.get("seed") == seed)


def baseline(demo_dir: Path, out: Path) -> dict:
    """The pretrained tiny CLIP before any enhancement (deterministic: one run)."""
    from genhancer.encoders import load_encoder

    path = out / "baseline" / "metrics.json"
    if path.is_file():
        return json.loads(path.read_text())
    metrics = {"variant": "baseline", "seed": None, **_evaluate(load_encoder(str(demo_dir / "clip")).eval(), demo_dir)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
    return metrics


def adopt_demo_runs(demo_dir: Path, out: Path, s: AblateSettings) -> list[str]:
    """The demo's own stage 2 and control are the ``default`` and ``shuffled-condition`` runs of
    its training seed when the ablation asks for the same recipe: take their metrics instead of
    training them again (8 minutes on 2 cores). Returns the variants adopted."""
    settings, results = demo_dir / "settings.json", demo_dir / "eval" / "results.json"
    if not (results.is_file() and _demo_matches(demo_dir, s)):
        return []
    ran = json.loads(settings.read_text())
    if ran.get("seed") != s.demo.seed or ran["seed"] not in s.seeds:
        return []
    res = json.loads(results.read_text())
    adopted = []
    for name, key in (("default", "enhanced"), ("shuffled-condition", "control")):
        path = out / name / f"seed{ran['seed']}" / "metrics.json"
        if name in s.variants and key in res and not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"variant": name, "seed": ran["seed"], **res[key],
                                        "adopted_from": str(demo_dir)}, indent=2))
            adopted.append(name)
    return adopted


CONTROL = "shuffled-condition"


def versus_control(runs: list[dict], variant: str = "default", control: str = CONTROL) -> dict | None:
    """``variant`` minus ``control`` (the shuffled-condition row by default), seed by seed (same stage 1): mean and
    std over seeds of each metric's difference and of each attribute's (probe accuracy and the
    large benchmark's category score), and a paired bootstrap 95 % CI of the large benchmark's
    difference pooled over seeds (pairs resampled within category and seed)."""
    from genhancer.eval.stats import paired_bootstrap_ci

    by = {(r["variant"], r["seed"]): r for r in runs}
    seeds = sorted(sd for v, sd in by if v == variant and (control, sd) in by)
    if not seeds or variant == control:
        return None
    out: dict = {"variant": variant, "control": control, "seeds": seeds}
    for m in [*METRICS, "mmvp_large"]:
        diffs = [by[variant, sd][m] - by[control, sd][m] for sd in seeds
                 if m in by[variant, sd] and m in by[control, sd]]
        if diffs:
            mean, std = _mean_std(diffs)
            out[m] = {"mean": mean, "std": std, "per_seed": diffs}
    for key in ("probe_per_attribute", "mmvp_large_categories"):
        if all(key in by[v, sd] for sd in seeds for v in (variant, control)):
            names = by[variant, seeds[0]][key]
            out[key] = {a: statistics.fmean(by[variant, sd][key][a] - by[control, sd][key][a] for sd in seeds)
                        for a in names}
    if all("mmvp_large_correct" in by[v, sd] for sd in seeds for v in (variant, control)):
        before, after, strata = [], [], []
        for sd in seeds:
            before += by[control, sd]["mmvp_large_correct"]
            after += by[variant, sd]["mmvp_large_correct"]
            strata += [(sd, c) for c in by[variant, sd]["mmvp_large_pair_categories"]]
        ci = paired_bootstrap_ci(before, after, strata=strata)
        out["mmvp_large_pooled"] = {"delta": 100 * ci.estimate, "ci_low": 100 * ci.low, "ci_high": 100 * ci.high,
                                    "n_items": len(after)}
    return out


def format_versus_control(vc: dict) -> str:
    lines = [f"{vc.get('variant', 'default')} minus {vc.get('control', CONTROL)} control, seeds "
             f"{' '.join(map(str, vc['seeds']))} (mean ± std of the per-seed difference):"]
    for m in [*METRICS, "mmvp_large"]:
        if m in vc:
            label = METRIC_LABELS.get(m, "MMVP-format, large benchmark")
            lines.append(f"- {label}: {vc[m]['mean']:+.1f} ± {vc[m]['std']:.1f}")
    if "mmvp_large_pooled" in vc:
        p = vc["mmvp_large_pooled"]
        lines.append(f"- large benchmark, pooled over seeds ({p['n_items']} pair scores): {p['delta']:+.1f}, "
                     f"paired 95 % CI [{p['ci_low']:+.1f}, {p['ci_high']:+.1f}]")
    return "\n".join(lines)


def format_attribute_table(vcs: list[dict]) -> str:
    """Per attribute, each variant minus the control (mean over seeds): large-benchmark category
    score / probe accuracy, in points."""
    vcs = [vc for vc in vcs if "mmvp_large_categories" in vc and "probe_per_attribute" in vc]
    if not vcs:
        return ""
    from genhancer.demo.world import MMVP_CATEGORIES

    pairs = [(c, a) for c, a in MMVP_CATEGORIES if c in vcs[0]["mmvp_large_categories"]
             and a in vcs[0]["probe_per_attribute"]]
    lines = ["per attribute, minus the shuffled-condition control unless named (mean over seeds; large-benchmark category / probe accuracy):", "",
             "| variant | " + " | ".join(a for _, a in pairs) + " |", "|---|" + "---|" * len(pairs)]
    for vc in vcs:
        cells = [f"{vc['mmvp_large_categories'][c]:+.1f} / {vc['probe_per_attribute'][a]:+.1f}" for c, a in pairs]
        name = vc["variant"] + ("" if vc.get("control", CONTROL) == CONTROL else f" − {vc['control']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(base: dict, runs: list[dict], variants: Sequence[Variant]) -> list[dict]:
    """One row per variant: mean, std and n over seeds, and the mean's delta to the baseline."""
    rows = [{"variant": "baseline", "question": "pretrained tiny CLIP, no enhancement", "n": 1,
             **{m: base[m] for m in METRICS}, **{f"{m}_std": 0.0 for m in METRICS},
             **{f"{m}_delta": 0.0 for m in METRICS}}]
    for v in variants:
        mine = [r for r in runs if r["variant"] == v.name]
        if not mine:
            continue
        row = {"variant": v.name, "question": v.question, "n": len(mine)}
        for m in METRICS:
            mean, std = _mean_std([r[m] for r in mine])
            row.update({m: mean, f"{m}_std": std, f"{m}_delta": mean - base[m]})
        rows.append(row)
    return rows


def format_markdown(rows: list[dict], s: AblateSettings) -> str:
    head = "| variant | what changes | seeds | " + " | ".join(METRIC_LABELS[m] for m in METRICS) + " |"
    lines = [head, "|" + "---|" * (3 + len(METRICS))]
    for r in rows:
        cells = []
        for m in METRICS:
            if r["variant"] == "baseline":
                cells.append(f"{r[m]:.1f}")
            else:
                cells.append(f"{r[m]:.1f} ± {r[m + '_std']:.1f} ({r[m + '_delta']:+.1f})")
        lines.append(f"| {r['variant']} | {r['question']} | {r['n']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"mean ± std over seeds (delta of the mean to the baseline); stage 1 {s.stage1_steps} steps, "
                 f"stage 2 {s.stage2_steps} steps (e2e: {s.stage1_steps + s.stage2_steps}), batch "
                 f"{s.demo.batch_size}, {s.demo.image_size} px.")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """One panel per metric: bars = change of the mean vs the baseline, whiskers = std over seeds.

    Deltas rather than raw scores: the variants differ by fractions of a point, which bars
    that start at 0 % would hide."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(METRICS), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    variants = [r for r in rows if r["variant"] != "baseline"]
    base = rows[0]
    for k, m in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), k + 1)
        xs = range(len(variants))
        deltas = [r[m + "_delta"] for r in variants]
        ax.bar(xs, deltas, yerr=[r[m + "_std"] for r in variants], capsize=3,
               color=["#2b6cb0" if d >= 0 else "#dd6b20" for d in deltas])
        ax.axhline(0.0, color="#4a5568", linewidth=1)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["variant"] for r in variants], rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{METRIC_LABELS[m]} (baseline {base[m]:.1f} %)", fontsize=9)
        ax.set_ylabel("change vs baseline (points)")
    fig.tight_layout()
    fig.savefig(path)
    return path


def run_ablate(demo_dir: str | Path = "runs/demo", out: str | Path = "runs/ablate",
               settings: AblateSettings | None = None) -> dict:
    s = settings or AblateSettings()
    demo_dir, out = Path(demo_dir), Path(out)
    variants = select_variants(s.variants)
    if not s.seeds:
        raise ConfigError("ablate: give at least one seed")
    from genhancer.runlock import hold

    with hold(out):  # one ablation per output directory (its demo_dir inputs are shared, not locked)
        try:
            return _run_ablate(demo_dir, out, s, variants)
        except Preempted as e:
            raise Preempted(e.where, e.exit_code, "run the same `genhancer ablate` again: it keeps the finished "
                            "runs and starts this one over") from None


def _run_ablate(demo_dir: Path, out: Path, s: AblateSettings, variants: list[Variant]) -> dict:
    from tqdm.auto import tqdm

    prepare_inputs(demo_dir, s.demo, {})
    base = baseline(demo_dir, out)
    adopted = adopt_demo_runs(demo_dir, out, s)
    if adopted:
        print(f"[ablate] {', '.join(adopted)}: the demo's own runs of this seed (same recipe)", flush=True)
    # Seed-major: an interrupted ablation leaves whole seeds of every variant, not some variants.
    jobs = [(v, seed) for seed in s.seeds for v in variants]
    runs = []
    for v, seed in tqdm(jobs, desc="ablate", unit="run"):
        runs.append(run_one(demo_dir, out, v, seed, s))
    # Stage-1 weights kept for a variant that reuses them are not needed any more.
    for ckpts in [*out.glob("*/seed*/stage*/checkpoints"), *out.glob("*/seed*/shared/stage1/checkpoints")]:
        shutil.rmtree(ckpts)
    rows = summarize(base, runs, variants)
    md = format_markdown(rows, s)
    vq_metrics = demo_dir / "vq" / "metrics.json"
    if any(v.discrete for v in variants) and vq_metrics.is_file():
        m = json.loads(vq_metrics.read_text())
        md += (f"\ndiscrete: own VQ tokenizer ({s.vq_steps} steps on 4,096 corpus images), PSNR {m['psnr']:.1f} dB, "
               f"codebook usage {100 * m['usage']:.0f} %.")
    vcs = [vc for vc in (versus_control(runs, v.name) for v in variants) if vc]
    vcs += [vc for vc in (versus_control(runs, v.name, v.control) for v in variants if v.control) if vc]
    for vc in vcs:
        md += "\n\n" + format_versus_control(vc)
    if vcs:
        md += "\n\n" + format_attribute_table(vcs)
    vc = next((x for x in vcs if x["variant"] == "default"), None)
    note = md.split("\n\n", 1)[1] if "\n\n" in md else ""
    (out / "ablate.md").write_text(md + "\n")
    (out / "ablate.json").write_text(json.dumps({"rows": rows, "runs": runs, "note": note, "versus_control": vc,
                                                 "versus_control_all": vcs}, indent=2))
    plot(rows, out / "ablate.png")
    # The demo report shows the latest ablation on its inputs.
    shutil.copyfile(out / "ablate.json", demo_dir / "ablation.json")
    shutil.copyfile(out / "ablate.png", demo_dir / "ablation.png")
    if (demo_dir / "report.html").is_file():
        from genhancer.demo.report import write_report

        write_report(demo_dir)
    print(md)
    return {"rows": rows, "runs": runs, "table": md}
