"""Validation during training (train.val_every / train.val_data), `export --best`, and the
refusal to test an export on the set that picked it.

Runs are end-to-end (train.stage=e2e: LoRA trains without a stage-1 run) on the tiny
random CLIP in pixel space, a few steps each.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from test_train import assert_one_line_error, cli, images, make_cfg, overrides, weights  # noqa: F401

FAST = ["tokenizer.kind=pixels", "denoiser.patch_size=8", "train.stage=e2e", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def probe_set(tmp_path_factory) -> Path:
    from genhancer.demo.world import write_probe_set

    return write_probe_set(tmp_path_factory.mktemp("val") / "probe", 20, seed=7, size=32)


@pytest.fixture(scope="module")
def mmvp_set(tmp_path_factory) -> Path:
    from genhancer.demo.world import write_mmvp_benchmark

    return write_mmvp_benchmark(tmp_path_factory.mktemp("val") / "mmvp", 1, seed=7, size=32).parent


def val_rows(run: Path) -> list[dict]:
    with (run / "val.csv").open() as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the best step and export --best

@pytest.fixture(scope="module")
def scripted_run(tiny_clip_dir, images, probe_set, tmp_path_factory):  # noqa: F811
    """6 steps, validation every 2, scores scripted 50 / 60 / 55 / 60 for steps 0 / 2 / 4 / 6:
    step 2 is the best (the tie at 6 keeps the earlier step), off the checkpoint schedule
    (5 and the last), and keep_last=1 would prune it were it not the pick."""
    import genhancer.validation as v

    run = tmp_path_factory.mktemp("scripted") / "run"
    scripted = {0: 50.0, 2: 60.0, 4: 55.0, 6: 60.0}
    seen = []

    def fake_score(encoder, vs, seed=0):
        from genhancer.lora import has_lora

        assert has_lora(encoder.model)  # the encoder being trained, its LoRA applied (unmerged)
        seen.append(encoder.training)
        encoder.eval()  # as run_probe does: the loop must put training mode back
        return scripted[len(seen) * 2 - 2]

    cfg = make_cfg(tiny_clip_dir, images, run, *FAST, "train.steps=6", "train.val_every=2",
                   f"train.val_data={probe_set.parent}", "train.checkpoint_every=5", "train.keep_last=1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(v, "score", fake_score)
        from genhancer.training import train

        train(cfg, progress=False)
    assert seen[2:] == [True, True]  # each measurement put the encoder back into training mode
    return run


def test_val_csv_rows_best_step_and_its_checkpoint(scripted_run):
    from genhancer.checkpoint import list_checkpoints

    rows = val_rows(scripted_run)
    assert [(int(r["step"]), r["metric"], float(r["value"])) for r in rows] == \
        [(0, "probe", 50.0), (2, "probe", 60.0), (4, "probe", 55.0), (6, "probe", 60.0)]
    best = json.loads((scripted_run / "val_best.json").read_text())
    assert best["step"] == 2 and best["value"] == 60.0 and best["metric"] == "probe" and best["initial"] == 50.0
    # Step 2 got a checkpoint because it improved, and keep_last=1 kept it; 5 was pruned, 4 never written.
    assert [c.name for c in list_checkpoints(scripted_run)] == ["step-00000002", "step-00000006"]
    assert (scripted_run / best["checkpoint"] / "model.safetensors").is_file()


def test_export_best_is_the_best_steps_checkpoint(scripted_run, probe_set, tmp_path, capsys):
    from genhancer.validation import best_checkpoint

    ck = scripted_run / "checkpoints"
    rc, out, _ = cli(capsys, "export", str(scripted_run), str(tmp_path / "best"), "--best")
    assert rc == 0 and "from step 2" in out
    assert cli(capsys, "export", str(ck / "step-00000002"), str(tmp_path / "direct"))[0] == 0
    a, b = weights(tmp_path / "best" / "model.safetensors"), weights(tmp_path / "direct" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # ... and not the last step's (which is what an export without --best takes).
    w2, w6 = weights(ck / "step-00000002" / "model.safetensors"), weights(ck / "step-00000006" / "model.safetensors")
    assert any(not torch.equal(w2[k], w6[k]) for k in w2 if "lora_" in k)
    sel = json.loads((tmp_path / "best" / "selection.json").read_text())
    assert sel["step"] == 2 and Path(sel["val_data"]) == probe_set.resolve()
    # A checkpoint of the run stands for the run.
    assert best_checkpoint(ck / "step-00000006")[0] == ck / "step-00000002"

    # The export cannot be tested on the set that picked it; on another set it can.
    rc, _, err = cli(capsys, "eval", "probe", "--model", str(tmp_path / "best"), "--data", str(probe_set),
                     "--out", str(tmp_path / "eval"))
    assert rc == 2
    line = assert_one_line_error(err)
    assert "validation set that picked" in line and "step 2" in line
    assert not (tmp_path / "eval").exists()


def test_export_best_without_validation_is_one_line_and_writes_nothing(tiny_clip_dir, tmp_path, capsys):
    from test_export import _fake_stage2_checkpoint

    run = tmp_path / "run"
    _fake_stage2_checkpoint(tiny_clip_dir, run / "checkpoints" / "step-00000003")
    for extra in (None, "val.csv"):
        if extra:
            (run / extra).write_text("step,metric,value\n")  # a log, but no pick
        rc, _, err = cli(capsys, "export", str(run), str(tmp_path / "out"), "--best")
        assert rc == 2
        line = assert_one_line_error(err)
        assert "--best" in line and "val_best.json" in line and "without validation" in line
        assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- a wrong validation set

def test_bad_val_data_is_one_line_before_training(tiny_clip_dir, images, probe_set, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    broken = tmp_path / "broken"
    broken.mkdir()
    rows = probe_set.read_text().splitlines()
    (broken / "labels.jsonl").write_text("\n".join(rows) + "\n")  # rows whose images are not there
    cases = {f"train.val_data={images}": "neither",              # a folder of images: no labels, no Questions.csv
             f"train.val_data={tmp_path / 'nope'}": "does not exist",
             f"train.val_data={broken}": "does not exist",
             "train.val_data=": "train.val_data is empty"}
    for item, words in cases.items():
        rc, _, err = cli(capsys, "train", "-c", "tiny", *overrides(tiny_clip_dir, images, run, *FAST, "train.steps=1",
                                                                   "train.val_every=1", item), "--no-progress")
        assert rc == 2, item
        line = assert_one_line_error(err)
        assert "train.val_" in line and words in line, (item, line)
        assert not run.exists(), item


# ----------------------------------------------------------------------------- real scores, resume

def test_mmvp_validation_and_resume_truncates_val_csv(tiny_clip_dir, images, mmvp_set, tmp_path):  # noqa: F811
    from genhancer.training import train

    run = tmp_path / "run"
    extra = [*FAST, "train.val_every=2", f"train.val_data={mmvp_set}", "train.checkpoint_every=3"]
    train(make_cfg(tiny_clip_dir, images, run, "train.steps=3", *extra), progress=False)
    rows = val_rows(run)
    assert [int(r["step"]) for r in rows] == [0, 2, 3] and {r["metric"] for r in rows} == {"mmvp"}
    assert all(0.0 <= float(r["value"]) <= 100.0 for r in rows)
    # A killed run validated step 4 and died before its checkpoint: that row is measured again.
    with (run / "val.csv").open("a") as f:
        f.write("4,mmvp,100.000000\n")
    train(make_cfg(tiny_clip_dir, images, run, "train.steps=5", *extra), resume=True, progress=False)
    rows = val_rows(run)
    assert [int(r["step"]) for r in rows] == [0, 2, 3, 4, 5]
    best = json.loads((run / "val_best.json").read_text())
    later = [(int(r["step"]), float(r["value"])) for r in rows if int(r["step"]) >= 1]
    want = max(later, key=lambda sv: (sv[1], -sv[0]))
    assert (best["step"], best["value"]) == pytest.approx(want)
    assert (run / best["checkpoint"] / "model.safetensors").is_file()


def test_probe_score_is_in_range_repeatable_and_leaves_the_rng(tiny_clip_dir, probe_set):
    from genhancer.encoders import load_encoder
    from genhancer.validation import open_val_set, score

    vs = open_val_set(probe_set.parent)
    assert vs.kind == "probe" and vs.path == probe_set
    enc = load_encoder(str(tiny_clip_dir))
    torch.manual_seed(3)
    a = score(enc, vs, seed=1)
    after = torch.rand(1)
    torch.manual_seed(3)
    assert score(enc, vs, seed=1) == a and 0.0 <= a <= 100.0
    assert torch.equal(torch.rand(1), after)


# ----------------------------------------------------------------------------- the demo

def test_demo_validates_stage2_on_its_own_world_seed(tmp_path):
    from genhancer.demo.run import DemoSettings, demo_config
    from genhancer.errors import ConfigError

    s = DemoSettings()
    s2 = demo_config(tmp_path, s, "2")
    assert s2.train.val_every == s.val_every > 0
    assert s2.train.val_data == str(tmp_path / "data" / "val-probe" / "labels.jsonl")
    assert demo_config(tmp_path, s, "1").train.val_every == 0
    assert demo_config(tmp_path, s, "e2e").train.val_every == s.val_every
    with pytest.raises(ConfigError, match="val_world_seed 0 is the evaluation world seed"):
        demo_config(tmp_path, DemoSettings(val_world_seed=0), "2")
