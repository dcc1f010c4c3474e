"""Condition usage (own vs shuffled condition) and the shuffled-condition control."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from test_train import images, make_cfg  # noqa: F401  (fixture)


def _enhancer(cfg):
    from genhancer.enhancer import Enhancer

    return Enhancer(cfg)


def test_shuffled_global_is_a_derangement():
    from genhancer.diagnostics import shuffled_global

    g = torch.arange(5.0)[:, None].expand(5, 3)
    s = shuffled_global(g)
    assert sorted(s[:, 0].tolist()) == g[:, 0].tolist()
    assert (s[:, 0] != g[:, 0]).all()


def test_usage_is_zero_when_the_condition_is_constant(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.diagnostics import condition_usage, load_heldout_batch

    enh = _enhancer(make_cfg(tiny_clip_dir, images, tmp_path / "r"))
    batch = load_heldout_batch(images, enh, 8)
    assert batch["pixel_values"].shape[0] == 8
    with torch.no_grad():
        for p in enh.projector.parameters():
            p.zero_()  # cond = 0 for every image: nothing to listen to
    res = condition_usage(enh, batch, seed=3)
    assert res["own"] == res["shuffled"] and res["usage"] == 0.0
    assert sum(b["n"] for b in res["bins"]) == 8


def test_usage_is_positive_when_the_denoiser_reads_the_condition(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.diagnostics import condition_usage, load_heldout_batch

    enh = _enhancer(make_cfg(tiny_clip_dir, images, tmp_path / "r"))
    batch = load_heldout_batch(images, enh, 8)
    # Same noise and t for both halves: any difference is the condition's.
    a = condition_usage(enh, batch, seed=1)
    b = condition_usage(enh, batch, seed=1)
    assert a == b
    with torch.no_grad():  # make the modulation depend on cond (zero-init makes it identity)
        for p in enh.denoiser.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    res = condition_usage(enh, batch, seed=1)
    assert res["own"] != res["shuffled"]


def test_shuffle_condition_feeds_another_images_token(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.diagnostics import load_heldout_batch, shuffled_global

    cfg = make_cfg(tiny_clip_dir, images, tmp_path / "r", "cond.shuffle=true")
    enh = _enhancer(cfg).eval()
    batch = load_heldout_batch(images, enh, 6)
    with torch.no_grad():
        for p in enh.denoiser.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
        out = enh(batch, generator=torch.Generator().manual_seed(0))["loss"]
        g, patches = enh.encoder.encode_image(batch["pixel_values"])
        z = enh.target(batch["gen_pixels"])
        want = enh.loss_from(shuffled_global(g), patches, z, torch.Generator().manual_seed(0))["loss"]
        own = enh.loss_from(g, patches, z, torch.Generator().manual_seed(0))["loss"]
    assert torch.equal(out, want)
    assert not torch.equal(out, own)


def test_train_logs_condition_usage_and_resume_truncates(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.training import train

    run = tmp_path / "run"
    extra = ["tokenizer.kind=pixels", "denoiser.patch_size=8", f"train.diag_data={images}", "train.diag_images=4",
             "train.diag_every=2", "train.checkpoint_every=3"]
    train(make_cfg(tiny_clip_dir, images, run, "train.steps=3", *extra), progress=False)
    rows = list(csv.DictReader((run / "condition_usage.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 2, 3]
    assert (run / "condition_usage.json").is_file()
    train(make_cfg(tiny_clip_dir, images, run, "train.steps=5", *extra), resume=True, progress=False)
    rows = list(csv.DictReader((run / "condition_usage.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 2, 3, 4, 5]


def test_diag_data_must_be_a_folder(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.errors import DataError
    from genhancer.training import train

    cfg = make_cfg(tiny_clip_dir, images, tmp_path / "r", "tokenizer.kind=pixels", "denoiser.patch_size=8",
                   f"train.diag_data={tmp_path / 'nope'}", "train.steps=1")
    with pytest.raises(DataError, match="diag_data"):
        train(cfg, progress=False)
    assert not Path(tmp_path / "r" / "checkpoints").exists()
