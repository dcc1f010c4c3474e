"""DCR's contrastive objective, its augmented view, and the drift regulariser."""

from __future__ import annotations

import json

import pytest
import torch

from test_train import images, make_cfg, train_capture  # noqa: F401  (fixture)


def _dcr_reference(anchor, target, positive, negatives, tau):
    """DCR's own arithmetic (train_OpenAICLIP_stage2.py), written out with exp / log."""
    n = lambda x: torch.nn.functional.normalize(x.flatten(1), dim=1)  # noqa: E731
    a, g, p = n(anchor), n(target), n(positive)
    neg = torch.nn.functional.normalize(negatives.flatten(2), dim=2)
    s_neg = torch.einsum("bd,bkd->bk", a, neg) / tau
    s_p, s_g = (a * p).sum(1) / tau, (a * g).sum(1) / tau
    denom = s_p.exp() + s_g.exp() + s_neg.exp().sum(1)
    return 0.5 * (-(s_p.exp() / denom).log() - (s_g.exp() / denom).log())


def _term(**kw):
    from genhancer.objectives.contrastive import ContrastiveTerm

    return ContrastiveTerm(**kw)


def test_info_nce_is_dcrs_formula():
    g = torch.Generator().manual_seed(0)
    b, k, shape = 5, 4, (6, 3)
    anchor, target, positive = (torch.randn(b, *shape, generator=g) for _ in range(3))
    negatives = torch.randn(b, k, *shape, generator=g)
    got = _term(temperature=0.1).info_nce(anchor, target, positive, negatives)
    torch.testing.assert_close(got, _dcr_reference(anchor, target, positive, negatives, 0.1), rtol=1e-5, atol=1e-5)
    # Anchor equal to both positives and far from the negatives: the loss approaches its floor log 2.
    low = _term(temperature=0.01).info_nce(target, target, target, -target[:, None].expand(b, k, *shape))
    assert torch.allclose(low, torch.full_like(low, torch.log(torch.tensor(2.0)).item()), atol=1e-4)


def test_negatives_are_other_images():
    g = torch.Generator().manual_seed(1)
    every = _term(num_negatives=0).negative_index(5, g, "cpu")
    assert every.shape == (5, 4)
    some = _term(num_negatives=2).negative_index(6, g, "cpu")
    assert some.shape == (6, 2)
    for idx in (every, some):
        rows = torch.arange(idx.shape[0])[:, None]
        assert (idx != rows).all()
        assert all(len(set(r)) == len(r) for r in idx.tolist())


def test_batch_of_one_is_refused():
    from genhancer.config import load_config
    from genhancer.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        load_config("tiny", ["objective.kind=contrastive_rf", "data.batch_size=1"])
    with pytest.raises(ConfigError, match="batch of 1"):
        _term().negative_index(1, None, "cpu")


def test_predictions_put_each_condition_on_its_own_latent():
    """Negative (i, k) is the denoiser on image i's noisy latent under image neg[i, k]'s condition."""
    from genhancer.denoisers.flow_dit import build_flow_dit
    from genhancer.objectives.contrastive import NoisyBatch

    torch.manual_seed(0)
    den = build_flow_dit("tiny", 12, 8).eval()
    with torch.no_grad():
        for p in den.parameters():  # zero-init gates would make the condition irrelevant
            p.normal_(0, 0.1)
    b = 4
    noisy = NoisyBatch(torch.randn(b, 4, 12), torch.rand(b), torch.randn(b, 4, 12))
    cond, cond_aug = torch.randn(b, 8), torch.randn(b, 8)
    term = _term(num_negatives=2)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        anchor, pos, negs = term.predictions(den, noisy, cond, cond_aug, None, (2, 2), g)
        neg = term.negative_index(b, torch.Generator().manual_seed(3), "cpu")
        one = lambda i, c: den(noisy.x_t[i:i + 1], noisy.t[i:i + 1], c[None], grid=(2, 2))[0]  # noqa: E731
        for i in range(b):
            torch.testing.assert_close(anchor[i], one(i, cond[i]), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(pos[i], one(i, cond_aug[i]), atol=1e-5, rtol=1e-5)
            for kk in range(2):
                torch.testing.assert_close(negs[i, kk], one(i, cond[neg[i, kk]]), atol=1e-5, rtol=1e-5)
    assert term.forwards_per_image(b) == 4 and _term().forwards_per_image(b) == 5


def test_augmented_view_is_a_nearby_normalised_image():
    from genhancer.data.augment import augmented_view

    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    g = torch.Generator().manual_seed(0)
    unit = torch.rand(8, 3, 32, 32, generator=g)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = (unit - m) / s
    a = augmented_view(x, mean, std, torch.Generator().manual_seed(5))
    b = augmented_view(x, mean, std, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and torch.equal(a, b)
    back = a * s + m
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5   # still an image in [0, 1]
    assert not torch.allclose(a, x)
    # Flips and a 90-100 % crop keep the image's mean colour close.
    assert (back.mean(dim=(2, 3)) - unit.mean(dim=(2, 3))).abs().max() < 0.15


def test_contrastive_stage2_trains_lora_and_logs_its_terms(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.training import train

    run1 = tmp_path / "s1"
    train(make_cfg(tiny_clip_dir, images, run1, "train.steps=2"), progress=False)
    run2 = tmp_path / "s2"
    cfg = make_cfg(tiny_clip_dir, images, run2, "train.stage=2", f"train.init_from={run1}", "train.steps=2",
                   "objective.kind=contrastive_rf", "objective.num_negatives=2", "train.warmup_steps=0")
    res, enh, init = train_capture(cfg)
    assert enh.objective.contrastive is not None and enh.objective.contrastive.only
    lora = [n for n in init if "lora_" in n]
    assert lora and any(not torch.equal(init[n], enh.trainable_state_dict()[n]) for n in lora)
    diag = json.loads((run2 / "diagnostics.json").read_text())
    assert diag["mse"] > 0 and diag["contrastive"] > 0


def test_mixed_loss_is_mse_plus_weighted_contrastive(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.enhancer import Enhancer

    cfg = make_cfg(tiny_clip_dir, images, tmp_path / "r", "objective.contrastive_weight=0.5")
    enh = Enhancer(cfg)
    batch = {"global_token": torch.randn(4, enh.encoder.global_dim),
             "latents": torch.randn(4, enh.space.channels, *[g * enh.patch for g in enh.grid])}
    out = enh(batch, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["loss"], out["mse"] + 0.5 * out["contrastive"], rtol=1e-5, atol=1e-6)


def test_preserve_is_zero_until_the_encoder_drifts(tiny_clip_dir, images, tmp_path):  # noqa: F811
    from genhancer.enhancer import Enhancer

    cfg = make_cfg(tiny_clip_dir, images, tmp_path / "r", "train.stage=2", "objective.preserve_weight=0.5")
    enh = Enhancer(cfg)
    enh.set_trainable(lora=True, projector=False, denoiser=False)
    enh.eval()  # no LoRA dropout: the same input gives the same token
    px = torch.randn(4, 3, enh.encoder.spec.size, enh.encoder.spec.size)
    g, _ = enh.encode(px)
    assert enh.preserve_loss(g, px).item() == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity
    with torch.no_grad():
        for n, p in enh.encoder.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    g, _ = enh.encode(px)
    drift = enh.preserve_loss(g, px)
    assert drift.item() > 1e-3
    # A cached original token (the stage-1 cache holds it) is used as given.
    assert enh.preserve_loss(g, px, original=g.detach()).item() == pytest.approx(0.0, abs=1e-6)
    z = torch.randn(4, enh.space.channels, *[s * enh.patch for s in enh.grid])
    out = enh({"pixel_values": px, "latents": z}, generator=torch.Generator().manual_seed(0))
    assert out["preserve"].item() == pytest.approx(drift.item(), rel=1e-4)
    # The reference copy is not part of the model: nothing of it is trained or saved.
    assert not any("reference" in n for n in enh.state_dict())
