"""The oracle condition (cond.source=patches) and the attribute-fidelity judge of samples."""

from __future__ import annotations

import pytest
import torch

from test_train import images, make_cfg, train_capture  # noqa: F401  (fixture)


def test_oracle_condition_reads_every_patch_token(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.enhancer import Enhancer

    enh = Enhancer(make_cfg(tiny_clip_dir, images, tmp_path / "r", "cond.source=patches"))
    assert enh.needs_patches and enh.projector.oracle is not None
    px = torch.randn(3, 3, enh.encoder.spec.size, enh.encoder.spec.size)
    g, patches = enh.encoder.encode_image(px)
    cond, tokens = enh.condition(g, patches)
    assert tokens is None and cond.shape[0] == 3
    # The global token plays no part; every patch does.
    assert torch.equal(cond, enh.condition(torch.zeros_like(g), patches)[0])
    bumped = patches.clone()
    bumped[:, -1] += 1.0
    assert not torch.allclose(cond, enh.condition(g, bumped)[0])
    with torch.no_grad():  # zero-init modulation ignores cond at first; make it listen
        for p in enh.denoiser.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    out = enh({"pixel_values": px, "gen_pixels": torch.rand(3, 3, enh.gen_size, enh.gen_size) * 2 - 1})
    out["loss"].backward()
    assert enh.projector.oracle[1].weight.grad is not None and enh.projector.oracle[1].weight.grad.abs().sum() > 0
    from genhancer.errors import ConfigError

    with pytest.raises(ConfigError, match="needs patch tokens"):
        enh.condition(g, None)


def test_oracle_stage1_trains_and_a_token_cache_is_refused(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.data.cache_build import build_cache
    from genhancer.errors import DataError
    from genhancer.training import train

    res, enh, _ = train_capture(make_cfg(tiny_clip_dir, images, tmp_path / "s1", "cond.source=patches",
                                         "train.steps=3"))
    assert enh.cond_source == "patches"
    # A cache of tokens only cannot serve it (no patch tokens); a --with-pixels cache can.
    build_cache(make_cfg(tiny_clip_dir, images, tmp_path / "c"), tmp_path / "tok")
    with pytest.raises(DataError, match="cond.source=patches need patch tokens"):
        train(make_cfg(tiny_clip_dir, images, tmp_path / "s1b", "cond.source=patches", "train.steps=2",
                       "data.kind=cache", f"data.path={tmp_path / 'tok'}"), progress=False)
    build_cache(make_cfg(tiny_clip_dir, images, tmp_path / "c2"), tmp_path / "pix", pixels=True)
    train(make_cfg(tiny_clip_dir, images, tmp_path / "s1c", "cond.source=patches", "train.steps=2",
                   "data.kind=cache", f"data.path={tmp_path / 'pix'}"), progress=False)
    assert (tmp_path / "s1c" / "checkpoints").is_dir()


def test_judge_scores_real_images_and_samples(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.demo.world import write_probe_set
    from genhancer.encoders import load_encoder
    from genhancer.eval.drawability import Judge, sample_fidelity

    enc = load_encoder(str(tiny_clip_dir))
    labels = write_probe_set(tmp_path / "probe", 40, seed=0, size=enc.spec.size)
    judge = Judge(enc, labels)
    assert judge.n_train == 28 and set(judge.real) == set(judge.attributes)
    assert all(0.0 <= v <= 100.0 for v in judge.real.values())
    # Scoring the real held-out images again gives the judge's own accuracy on them.
    from genhancer.eval.drawability import _images_u8

    again = judge.score(_images_u8(judge.heldout_paths(), judge.size))
    assert again == pytest.approx(judge.real)
    # Samples of a (barely) trained stage 1: a score per attribute, in range.
    train_capture(make_cfg(tiny_clip_dir, images, tmp_path / "s1", "train.steps=2"))
    fid = sample_fidelity(judge, tmp_path / "s1", n_images=6, steps=2)
    assert set(fid) == set(judge.attributes) and all(0.0 <= v <= 100.0 for v in fid.values())
