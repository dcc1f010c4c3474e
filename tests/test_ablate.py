"""`genhancer ablate`: variant selection, the mean ± std summary, and a real miniature run."""

from __future__ import annotations

import json
import math

import pytest

from genhancer.ablate import (
    METRICS,
    VARIANT_NAMES,
    AblateSettings,
    format_markdown,
    run_ablate,
    select_variants,
    summarize,
)
from genhancer.cli import main
from genhancer.demo.run import DemoSettings, demo_config
from genhancer.errors import ConfigError


def test_every_paper_comparison_has_a_row():
    # The list: local tokens 10 / 50 %, two-stage vs e2e, logit-normal vs uniform,
    # denoiser tiny / small / base, continuous vs discrete.
    overrides = {v.name: v.overrides for v in select_variants(VARIANT_NAMES)}
    assert "cond.local_token_fraction=0.1" in overrides["local-10"]
    assert "cond.local_token_fraction=0.5" in overrides["local-50"]
    assert "objective.timestep_sampler=uniform" in overrides["uniform-t"]
    assert {"denoiser.preset=tiny", "denoiser.preset=base"} <= set(overrides["denoiser-tiny"] + overrides["denoiser-base"])
    assert "denoiser.kind=perceiver" in overrides["discrete"]
    assert select_variants(["end-to-end"])[0].e2e


def test_unknown_variant_is_one_line_exit_2(capsys):
    with pytest.raises(ConfigError, match="nope"):
        select_variants(["default", "nope"])
    assert main(["ablate", "--variants", "nope", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_summary_is_mean_std_and_delta_to_baseline():
    base = {"mmvp": 40.0, "probe": 50.0, "zeroshot": 90.0}
    runs = [{"variant": "default", "seed": k, "mmvp": 40.0 + 2 * k, "probe": 60.0, "zeroshot": 88.0 + k}
            for k in range(3)]
    runs.append({"variant": "uniform-t", "seed": 0, "mmvp": 30.0, "probe": 45.0, "zeroshot": 91.0})
    rows = summarize(base, runs, select_variants(["default", "uniform-t", "local-10"]))
    assert [r["variant"] for r in rows] == ["baseline", "default", "uniform-t"]  # no runs -> no row
    d = rows[1]
    assert d["n"] == 3
    assert d["mmvp"] == pytest.approx(42.0) and d["mmvp_std"] == pytest.approx(2.0)
    assert d["mmvp_delta"] == pytest.approx(2.0) and d["probe_delta"] == pytest.approx(10.0)
    assert d["zeroshot_delta"] == pytest.approx(-1.0)
    assert rows[2]["mmvp_std"] == 0.0 and rows[2]["mmvp_delta"] == pytest.approx(-10.0)
    md = format_markdown(rows, AblateSettings())
    assert "| default |" in md and "42.0 ± 2.0 (+2.0)" in md and "30.0 ± 0.0 (-10.0)" in md


def test_e2e_and_uncached_configs(tmp_path):
    s = DemoSettings(stage1_steps=30, stage2_steps=20)
    e2e = demo_config(tmp_path, s, "e2e", ["objective.timestep_sampler=uniform"], run_dir=tmp_path / "r")
    assert e2e.train.stage == "e2e" and e2e.train.steps == 50 and e2e.train.init_from == ""
    assert e2e.train.output_dir == str(tmp_path / "r" / "stage2")
    assert e2e.objective.timestep_sampler == "uniform"
    s1 = demo_config(tmp_path, s, "1", run_dir=tmp_path / "r", cached=False)
    assert s1.data.kind == "jsonl" and s1.train.output_dir == str(tmp_path / "r" / "stage1")
    assert demo_config(tmp_path, s, "1").data.kind == "cache"
    s2 = demo_config(tmp_path, s, "2", run_dir=tmp_path / "r")
    assert s2.train.init_from == str(tmp_path / "r" / "stage1")


def test_miniature_ablation_runs_resumes_and_reports(tmp_path, monkeypatch):
    demo = DemoSettings(image_size=32, corpus_images=96, probe_images=40, coarse_per_class=2, pretrain=True,
                        pretrain_corpus_images=96, pretrain_steps=2, batch_size=4, denoiser="tiny", diag_every=1)
    s = AblateSettings(demo=demo, stage1_steps=2, stage2_steps=2, seeds=(0, 1),
                       variants=("default", "shuffled-condition", "end-to-end"))
    res = run_ablate(tmp_path / "demo", tmp_path / "ablate", s)
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == {"baseline", "default", "shuffled-condition", "end-to-end"}
    # The control reused the default's stage 1 (same seed, same config) and shuffled in stage 2 only.
    ctrl = tmp_path / "ablate" / "shuffled-condition" / "seed0"
    assert not (ctrl / "stage1").exists()
    assert "shuffle: true" in (ctrl / "stage2" / "config.yaml").read_text()
    assert "shuffle: false" in (tmp_path / "ablate" / "default" / "seed0" / "stage1" / "config.yaml").read_text()
    for r in res["runs"]:
        for m in METRICS:
            assert 0.0 <= r[m] <= 100.0 and math.isfinite(r[m])
    assert sorted(r["seed"] for r in res["runs"] if r["variant"] == "default") == [0, 1]
    out = tmp_path / "ablate"
    assert (out / "default" / "seed1" / "metrics.json").is_file()
    assert not list(out.glob("*/seed*/stage*/checkpoints"))  # weights dropped, logs kept
    assert (out / "default" / "seed0" / "stage1" / "log.csv").is_file()
    # Stage 2 was validated on the demo's validation probe set, whose pick was evaluated.
    picked = json.loads((out / "default" / "seed0" / "stage2" / "val_best.json").read_text())
    assert picked["val_data"].endswith("val-probe/labels.jsonl") and picked["step"] >= 1
    assert (out / "ablate.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "ablation.json").read_text() == (out / "ablate.json").read_text()  # for the report
    saved = json.loads((out / "ablate.json").read_text())
    assert saved["rows"][1]["mmvp"] == pytest.approx(rows[saved["rows"][1]["variant"]]["mmvp"])

    # A re-run reuses every finished run: training must not be called again.
    import genhancer.training as train_mod

    def boom(*a, **k):
        raise AssertionError("train() called for a finished run")

    monkeypatch.setattr(train_mod, "train", boom)
    (tmp_path / "demo" / "report.html").write_text("stale")
    again = run_ablate(tmp_path / "demo", tmp_path / "ablate", s)
    assert again["runs"] == res["runs"]
    report = (tmp_path / "demo" / "report.html").read_text()  # a demo report gains the ablation table
    assert "Ablations" in report and "<th>end-to-end</th>" in report and "<th>shuffled-condition</th>" in report



def test_versus_control_is_per_seed_and_pooled_paired():
    from genhancer.ablate import format_versus_control, versus_control

    runs = []
    for seed, (dp, cp) in enumerate([(45.0, 44.0), (46.0, 44.0), (44.0, 44.0)]):
        cats = ["a"] * 4 + ["b"] * 4
        runs.append({"variant": "default", "seed": seed, "probe": dp, "mmvp": 10.0, "zeroshot": 90.0,
                     "mmvp_large": 50.0, "mmvp_large_correct": [1, 1, 0, 1, 0, 1, 1, 0],
                     "mmvp_large_pair_categories": cats})
        runs.append({"variant": "shuffled-condition", "seed": seed, "probe": cp, "mmvp": 10.0, "zeroshot": 91.0,
                     "mmvp_large": 40.0, "mmvp_large_correct": [1, 0, 0, 1, 0, 1, 0, 0],
                     "mmvp_large_pair_categories": cats})
    vc = versus_control(runs)
    assert vc["seeds"] == [0, 1, 2]
    assert vc["probe"]["per_seed"] == [1.0, 2.0, 0.0] and vc["probe"]["mean"] == pytest.approx(1.0)
    assert vc["zeroshot"]["mean"] == pytest.approx(-1.0)
    pooled = vc["mmvp_large_pooled"]
    assert pooled["n_items"] == 24 and pooled["delta"] == pytest.approx(25.0)
    assert pooled["ci_low"] <= 25.0 <= pooled["ci_high"]
    assert "paired 95 % CI" in format_versus_control(vc)
    assert versus_control([r for r in runs if r["variant"] == "default"]) is None
    # A row read against its own control, and the per-attribute table naming that control.
    from genhancer.ablate import format_attribute_table

    attrs = {"probe_per_attribute": {"direction": 50.0, "hole": 60.0},
             "mmvp_large_categories": {"Orientation and Direction": 10.0, "Presence of Specific Features": 20.0}}
    own = [dict(r, variant="contrastive", **attrs) if r["variant"] == "default" else
           dict(r, variant="contrastive-shuffled", **{k: {a: v - 1.0 for a, v in d.items()} for k, d in attrs.items()})
           for r in runs]
    vc2 = versus_control(own, "contrastive", control="contrastive-shuffled")
    assert vc2["control"] == "contrastive-shuffled" and vc2["probe"]["mean"] == pytest.approx(1.0)
    assert vc2["probe_per_attribute"] == {"direction": 1.0, "hole": 1.0}
    assert "minus contrastive-shuffled control" in format_versus_control(vc2)
    table = format_attribute_table([vc2])
    assert "| contrastive − contrastive-shuffled | +1.0 / +1.0 | +1.0 / +1.0 |" in table
    assert versus_control(own, "contrastive") is None  # no shuffled-condition rows in `own`


def test_the_demo_runs_are_adopted_only_for_the_same_recipe(tmp_path):
    from dataclasses import asdict, replace

    from genhancer.ablate import adopt_demo_runs

    demo, out = tmp_path / "demo", tmp_path / "ablate"
    (demo / "eval").mkdir(parents=True)
    s = AblateSettings(variants=("default", "shuffled-condition"), seeds=(0, 1))
    (demo / "settings.json").write_text(json.dumps(asdict(s.demo)))
    (demo / "eval" / "results.json").write_text(json.dumps(
        {"enhanced": {"probe": 50.0, "mmvp": 10.0, "zeroshot": 90.0}, "control": {"probe": 49.0, "mmvp": 9.0,
                                                                                 "zeroshot": 91.0}}))
    # Another recipe (shorter stage 2): nothing is adopted.
    assert adopt_demo_runs(demo, out, replace(s, stage2_steps=s.stage2_steps - 1)) == []
    assert adopt_demo_runs(demo, out, s) == ["default", "shuffled-condition"]
    m = json.loads((out / "default" / "seed0" / "metrics.json").read_text())
    assert m["probe"] == 50.0 and m["variant"] == "default" and m["seed"] == 0
    assert json.loads((out / "shuffled-condition" / "seed0" / "metrics.json").read_text())["probe"] == 49.0
    assert adopt_demo_runs(demo, out, s) == []  # already there: never overwritten
