"""Every export writes README.md, a Hugging Face model card: front matter, the recipe read
from the checkpoint, the table `eval compare` measured when given, never numbers otherwise."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import save_file

from genhancer.checkpoint import atomic_dir, load_checkpoint_config
from genhancer.cli import main
from genhancer.config import load_config
from genhancer.eval import run_compare
from genhancer.model_card import base_license, render_card
from test_export import _fake_stage2_checkpoint


def _meta(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_clip_dir):
    """A base model with a licensed card, a stage-1 checkpoint and the stage-2 one made from it."""
    root = tmp_path_factory.mktemp("card")
    base = root / "base"
    shutil.copytree(tiny_clip_dir, base)
    (base / "README.md").write_text("---\nlicense: mit\ntags: [clip]\n---\n# a tiny CLIP\n")
    s1_cfg = load_config("tiny", [f"encoder.name_or_path={base}", "train.steps=500", f"data.path={root}/images"])

    def write_s1(d):
        save_file({"projector.net.1.weight": torch.zeros(2, 2)}, str(d / "model.safetensors"))
        s1_cfg.save(d / "config.yaml")
        (d / "state.json").write_text(json.dumps({"step": 500}))

    s1 = atomic_dir(root / "s1", write_s1)
    s2 = _fake_stage2_checkpoint(base, root / "s2")
    cfg = load_checkpoint_config(s2)
    cfg.train.init_from, cfg.train.steps, cfg.data.path = str(s1), 40, f"{root}/images"
    cfg.save(s2 / "config.yaml")
    (s2 / "state.json").write_text(json.dumps({"step": 40}))
    return {"root": root, "base": base, "s2": s2}


def test_card_without_metrics(run, tmp_path):
    out = tmp_path / "full"
    assert main(["export", str(run["s2"]), str(out)]) == 0
    card = (out / "README.md").read_text()
    meta = _meta(card)
    assert meta["library_name"] == "transformers" and meta["license"] == "mit"
    assert {"genhancer", "clip"} <= set(meta["tags"]) and meta["pipeline_tag"] == "zero-shot-image-classification"
    assert "base_model" not in meta            # a local path is no Hub repository to link
    assert f"`{run['base']}` (a local checkpoint)" in card
    assert "| | stage 1 | stage 2 |" in card.replace("|  |", "| |")
    assert "| steps reached / configured | 500 / 500 | 40 / 40 |" in card
    assert "| LoRA | - | r 4, alpha 16, dropout 0.1 |" in card
    assert "stage 1: config.yaml" in card and "stage 2: config.yaml" in card
    assert "## Results" not in card and "| metric |" not in card   # nothing measured, nothing shown
    assert "CLIPModel.from_pretrained" in card and "--into-llava" in card

    assert main(["export", str(run["s2"]), str(tmp_path / "vision"), "--vision-only"]) == 0
    vcard = (tmp_path / "vision" / "README.md").read_text()
    assert _meta(vcard)["pipeline_tag"] == "image-feature-extraction" and "CLIPVisionModel.from_pretrained" in vcard


def _mmvp(root):
    from test_sources import write_mmvp

    return write_mmvp(root, n_pairs=4, second="a blue circle", step=60)


def test_card_with_compare_metrics(run, tmp_path):
    full = tmp_path / "full"
    assert main(["export", str(run["s2"]), str(full)]) == 0
    run_compare(str(run["base"]), str(full), tmp_path / "cmp", mmvp_data=_mmvp(tmp_path / "mmvp"),
                allow_partial=True, n_resamples=50, print_table=False)
    out = tmp_path / "with-metrics"
    assert main(["export", str(run["s2"]), str(out), "--card-metrics", str(tmp_path / "cmp" / "compare_summary.json")]) == 0
    card = (out / "README.md").read_text()
    assert "## Results" in card and f"before = `{run['base']}`, after = `{full}`" in card
    # The very rows compare wrote into its own report, number for number.
    report_rows = [line for line in (tmp_path / "cmp" / "report.md").read_text().splitlines()
                   if line.startswith("| ") and not line.startswith("| metric")]
    assert len(report_rows) == 12       # MMVP average, 9 categories, blind pairs, pair cosine
    for line in report_rows:
        assert line in card, line


@pytest.mark.parametrize("content, needle", [
    ("{not json", "is not readable JSON"),
    (json.dumps({"before": "a", "after": "b"}), "no 'rows' list"),
    (json.dumps({"before": "a", "after": "b", "rows": [{"metric": "m", "before": "high"}]}),
     "rows[0].before is 'high'; expected a finite number or null"),
])
def test_bad_card_metrics_refused(run, tmp_path, capsys, content, needle):
    bad = tmp_path / "compare.json"
    bad.write_text(content)
    out = tmp_path / "out"
    assert main(["export", str(run["s2"]), str(out), "--card-metrics", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and needle in err, err
    assert not out.exists()


def test_card_front_matter_for_hub_bases(tmp_path):
    cfg = load_config("tiny", ["encoder.name_or_path=org/clip-base:sub/dir", "train.stage=2"])
    card = render_card(kind="full", family="clip", encoder_base=cfg.encoder.name_or_path,
                       stages=[{"cfg": cfg, "step": None, "source": "x"}])
    meta = _meta(card)
    assert meta["base_model"] == "org/clip-base" and meta["base_model_relation"] == "finetune"
    assert "license" not in meta and "`org/clip-base:sub/dir`" in card
    assert "| steps reached / configured | unknown / 20 |" in card and "records no `train.init_from`" in card
    llava = _meta(render_card(kind="llava", family="clip", encoder_base="org/clip-base", stages=[], llava_base="org/llava"))
    assert llava["base_model"] == "org/llava" and llava["pipeline_tag"] == "image-text-to-text"
    (tmp_path / "config.json").write_text(json.dumps({"license": "apache-2.0"}))
    assert base_license(str(tmp_path)) == "apache-2.0"


def test_recipe_names_the_fields_objectives():
    from genhancer.config import load_config
    from genhancer.model_card import _objective_text

    o = load_config("tiny", ["objective.kind=contrastive_rf", "objective.num_negatives=3"]).objective
    assert _objective_text(o) == "contrastive_rf, t logit_normal, InfoNCE tau 0.1, 3 negatives"
    o = load_config("tiny", ["train.stage=2", "objective.contrastive_weight=0.5", "objective.preserve_weight=1"]).objective
    assert _objective_text(o) == "rectified_flow, t logit_normal, InfoNCE tau 0.1 x 0.5, all negatives, preserve 1"
    assert _objective_text(load_config("tiny").objective) == "rectified_flow, t logit_normal"
