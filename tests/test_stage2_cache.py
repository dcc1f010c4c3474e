"""The stage-2 cache: encoder views as uint8 next to the latents, so stage 2 skips the autoencoder."""

from __future__ import annotations

import json

import pytest
import torch

from test_train import (  # noqa: F401  (fixtures)
    N_IMAGES,
    assert_one_line_error,
    cli,
    images,
    make_cfg,
    overrides,
    weights,
)


@pytest.fixture(scope="module")
def pixel_cache(tiny_clip_dir, images, tmp_path_factory):  # noqa: F811
    from genhancer.cli import main

    cache = tmp_path_factory.mktemp("pcache") / "cache"
    rc = main(["cache", "-c", "tiny", f"encoder.name_or_path={tiny_clip_dir}", f"data.path={images}",
               "data.batch_size=4", "--out", str(cache), "--with-pixels"])
    assert rc == 0
    return cache


@pytest.fixture(scope="module")
def cached_stage1(tiny_clip_dir, pixel_cache, tmp_path_factory):
    from genhancer.training import train

    run = tmp_path_factory.mktemp("s1") / "run"
    train(make_cfg(tiny_clip_dir, pixel_cache, run, "data.kind=cache", "train.steps=2",
                   "train.checkpoint_every=2"), progress=False)
    return run


def test_cached_views_equal_the_image_path(tiny_clip_dir, images, pixel_cache, tmp_path):  # noqa: F811
    from genhancer.data.cache import to_uint8
    from genhancer.data.transforms import PairedViews, pil_to_tensor
    from genhancer.encoders import load_encoder

    meta = json.loads((pixel_cache / "meta.json").read_text())
    assert meta["pixels"] is True and meta["rows"] == N_IMAGES
    shard = weights(pixel_cache / "shard-00000.safetensors")
    assert shard["pixel_u8"].dtype == torch.uint8 and shard["pixel_u8"].shape[1:] == (3, 32, 32)
    # uint8 round trip of a normalised view is exact.
    spec = load_encoder(str(tiny_clip_dir)).spec
    views = PairedViews.from_spec(spec, train=False)
    from PIL import Image

    im = Image.open(sorted(images.glob("*.png"))[0]).convert("RGB")
    v = views(im)["pixel_values"]
    assert torch.equal(to_uint8(views.unnormalize(v)), (pil_to_tensor(im) * 255).round().to(torch.uint8))


def test_stage2_trains_lora_from_the_pixel_cache_and_resumes_exactly(tiny_clip_dir, pixel_cache, cached_stage1,
                                                                     tmp_path):
    import genhancer.training.loop as gt

    calls = {"n": 0}
    real = gt.build_for_training

    def spy(cfg, *a, **k):
        enh = real(cfg, *a, **k)
        orig = enh.space.encode

        def counting(x):
            calls["n"] += 1
            return orig(x)

        enh.space.encode = counting
        return enh

    common = ["data.kind=cache", "train.stage=2", f"train.init_from={cached_stage1}", "train.warmup_steps=0"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gt, "build_for_training", spy)
        full = gt.train(make_cfg(tiny_clip_dir, pixel_cache, tmp_path / "full", *common, "train.steps=4",
                                 "train.checkpoint_every=4"), progress=False)
    assert calls["n"] == 0, "stage 2 on a pixel cache ran the autoencoder"
    ck = weights(tmp_path / "full" / "checkpoints" / "step-00000004" / "model.safetensors")
    assert any("lora_" in k for k in ck)
    # 12 rows, batch 4: the resume point (step 3) is an epoch boundary.
    part = gt.train(make_cfg(tiny_clip_dir, pixel_cache, tmp_path / "part", *common, "train.steps=3",
                             "train.checkpoint_every=3"), progress=False)
    rest = gt.train(make_cfg(tiny_clip_dir, pixel_cache, tmp_path / "part", *common, "train.steps=4",
                             "train.checkpoint_every=4"), resume=True, progress=False)
    assert part.losses + rest.losses == full.losses
    a = weights(tmp_path / "part" / "checkpoints" / "step-00000004" / "model.safetensors")
    assert all(torch.equal(a[k], ck[k]) for k in ck)


def test_stage2_on_a_token_cache_is_refused(tiny_clip_dir, images, cached_stage1, tmp_path, capsys):  # noqa: F811
    rc, _, err = cli(capsys, "cache", "-c", "tiny", f"encoder.name_or_path={tiny_clip_dir}", f"data.path={images}",
                     "data.batch_size=4", "--out", str(tmp_path / "tok"))
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(tiny_clip_dir, tmp_path / "tok", tmp_path / "r", "data.kind=cache", "train.stage=2",
                                f"train.init_from={cached_stage1}", "train.steps=1"), "--no-progress")
    assert rc == 2
    assert "--with-pixels" in assert_one_line_error(err)


def test_stage2_cache_with_other_preprocessing_or_space_is_refused(tiny_clip_dir, pixel_cache, cached_stage1,
                                                                    tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(pixel_cache, bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["preprocessing"]["mean"] = [0.5, 0.5, 0.5]
    (bad / "meta.json").write_text(json.dumps(meta))
    args = ["data.kind=cache", "train.stage=2", f"train.init_from={cached_stage1}", "train.steps=1"]
    rc, _, err = cli(capsys, "train", "-c", "tiny", *overrides(tiny_clip_dir, bad, tmp_path / "r1", *args),
                     "--no-progress")
    assert rc == 2 and "preprocessing mean" in assert_one_line_error(err)

    from safetensors.torch import save_file

    other = tmp_path / "other"
    shutil.copytree(pixel_cache, other)
    space = weights(other / "space.safetensors")
    save_file({k: v + 1.0 for k, v in space.items()}, str(other / "space.safetensors"))
    rc, _, err = cli(capsys, "train", "-c", "tiny", *overrides(tiny_clip_dir, other, tmp_path / "r2", *args),
                     "--no-progress")
    assert rc == 2 and "other statistics" in assert_one_line_error(err)
