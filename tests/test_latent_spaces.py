"""Latent spaces: patchify, pixels, TAEF2 (vendored weights), diffusers AutoencoderKL."""

from __future__ import annotations

import hashlib

import pytest
import torch

from genhancer.errors import ModelLoadError, ShapeError
from genhancer.latents import taef2 as taef2_mod
from genhancer.latents.patchify import patchify, unpatchify
from genhancer.latents.pixels import PixelSpace
from genhancer.latents.taef2 import TAEF2Space, load_taef2_state, taef2_decoder, taef2_encoder
from genhancer.latents.vae import FLUX_SCALE, FLUX_SHIFT, VAESpace

# ----------------------------------------------------------------------------- patchify


def test_patchify_round_trip_and_layout():
    z = torch.randn(2, 3, 4, 6)
    tok = patchify(z, 2)
    assert tok.shape == (2, 6, 12)
    # token 1 is grid cell (row 0, col 1); channels ordered (c, ph, pw)
    torch.testing.assert_close(tok[:, 1], z[:, :, 0:2, 2:4].reshape(2, 12))
    assert torch.equal(unpatchify(tok, 2, 4, 6, 3), z)
    assert torch.equal(unpatchify(patchify(z, 1), 1, 4, 6, 3), z)


def test_patchify_shape_errors():
    with pytest.raises(ShapeError, match="patch size 2"):
        patchify(torch.randn(1, 3, 5, 4), 2)
    with pytest.raises(ShapeError, match=r"\[B,6,12\]"):
        unpatchify(torch.randn(1, 5, 12), 2, 4, 6, 3)
    with pytest.raises(ShapeError, match="B,C,h,w"):
        patchify(torch.randn(3, 4, 4), 2)


# ----------------------------------------------------------------------------- pixels


def test_pixel_space_is_identity():
    space = PixelSpace()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert space.channels == 3 and space.downsample == 1 and not space.discrete
    assert torch.equal(space.encode(x), x) and torch.equal(space.decode(x), x)
    assert space.decode(x * 3).abs().max() <= 1
    with pytest.raises(ShapeError):
        space.encode(torch.rand(2, 1, 8, 8))


# ----------------------------------------------------------------------------- TAEF2


@pytest.fixture(scope="module")
def taef2():
    return TAEF2Space()


@pytest.fixture(scope="module")
def photos():
    data = pytest.importorskip("skimage.data")
    transform = pytest.importorskip("skimage.transform")
    out = []
    for f in (data.astronaut, data.coffee, data.chelsea):
        a = f()
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        a = transform.resize(a, (256, 256), anti_aliasing=True)
        out.append(torch.from_numpy(a).permute(2, 0, 1).float() * 2 - 1)
    return torch.stack(out)


def test_taef2_state_dict_keys_match_files_exactly():
    for half, build in (("encoder", taef2_encoder), ("decoder", taef2_decoder)):
        sd = load_taef2_state(half)
        model_sd = build().state_dict()
        assert list(model_sd) == list(sd)
        assert all(model_sd[k].shape == v.shape for k, v in sd.items())
        build().load_state_dict(sd, strict=True)


def test_taef2_frozen_and_buffers(taef2):
    assert taef2.channels == 32 and taef2.downsample == 8 and not taef2.discrete
    assert not any(p.requires_grad for p in taef2.parameters())
    taef2.train()
    assert not taef2.encoder.training and not taef2.decoder.training
    sd = taef2.state_dict()
    assert torch.equal(sd["latent_mean"], torch.zeros(32)) and torch.equal(sd["latent_std"], torch.ones(32))


def test_taef2_round_trip_psnr(taef2, photos):
    with torch.no_grad():
        z = taef2.encode(photos)
        rec = taef2.decode(z)
    assert z.shape == (3, 32, 32, 32) and rec.shape == photos.shape
    assert rec.min() >= -1 and rec.max() <= 1
    mse = ((rec - photos) / 2).pow(2).mean(dim=(1, 2, 3))
    psnr = 10 * torch.log10(1 / mse)
    assert (psnr >= 25).all(), psnr.tolist()


def test_taef2_fit_stats_standardises(photos):
    photos = torch.nn.functional.interpolate(photos, size=128, mode="area")  # keep it quick
    space = TAEF2Space()
    mean, std = space.fit_stats(photos, batch_size=2)
    assert mean.shape == std.shape == (32,) and not torch.equal(std, torch.ones(32))
    with torch.no_grad():
        z = space.encode(photos)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(32), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(32), atol=1e-3, rtol=0)
    # iterable of batches gives the same statistics; stats survive a state_dict round trip
    m2, s2 = TAEF2Space().fit_stats(iter([photos[:1], photos[1:]]))
    torch.testing.assert_close(m2, mean)
    other = TAEF2Space()
    other.load_state_dict(space.state_dict())
    torch.testing.assert_close(other.latent_std, std)
    # decode undoes the standardisation: same image as the unstandardised space
    with torch.no_grad():
        a = space.decode(z[:1])
        b = TAEF2Space().decode(z[:1] * std[None, :, None, None] + mean[None, :, None, None])
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_taef2_bad_input_and_bad_weights(taef2, monkeypatch, tmp_path):
    with pytest.raises(ShapeError, match="divisible"):
        taef2.encode(torch.zeros(1, 3, 20, 20))
    with pytest.raises(ShapeError, match="32"):
        taef2.decode(torch.zeros(1, 4, 2, 2))
    # a corrupted weight file fails the sha256 check with ModelLoadError
    bad = tmp_path / "taef2_encoder.pth"
    bad.write_bytes(b"not a checkpoint")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  taef2_encoder.pth\n")
    monkeypatch.setattr(taef2_mod, "_asset", lambda name: tmp_path / name)
    monkeypatch.setattr(taef2_mod, "_VERIFIED", set())
    with pytest.raises(ModelLoadError, match="sha256"):
        load_taef2_state("encoder")
    # right checksum but unreadable content: still a one-line ModelLoadError
    (tmp_path / "SHA256SUMS").write_text(f"{hashlib.sha256(bad.read_bytes()).hexdigest()}  taef2_encoder.pth\n")
    with pytest.raises(ModelLoadError, match="cannot be read"):
        load_taef2_state("encoder")


# ----------------------------------------------------------------------------- diffusers VAE


def _save_tiny_vae(path, latent_channels=4, **cfg):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4,
                        sample_size=16, **cfg)
    vae.save_pretrained(path)
    return vae


def test_vae_space_load_encode_decode(tmp_path):
    ref = _save_tiny_vae(tmp_path / "vae", scaling_factor=0.5, shift_factor=0.25).eval()
    space = VAESpace(str(tmp_path / "vae"), sample_posterior=False)
    assert (space.channels, space.downsample, space.shift, space.scale) == (4, 2, 0.25, 0.5)
    assert not any(p.requires_grad for p in space.parameters())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = space.encode(x)
        raw = ref.encode(x).latent_dist.mode()
        torch.testing.assert_close(z, (raw - 0.25) * 0.5)
        img = space.decode(z)
        torch.testing.assert_close(img, ref.decode(raw).sample.clamp(-1, 1))
    assert z.shape == (2, 4, 8, 8) and img.shape == x.shape
    # posterior sampling draws around the mode
    sampler = VAESpace(str(tmp_path / "vae"), sample_posterior=True)
    with torch.no_grad():
        zs = sampler.encode(x, generator=torch.Generator().manual_seed(0))
    assert zs.shape == z.shape and not torch.allclose(zs, z)
    with pytest.raises(ShapeError):
        space.decode(torch.zeros(1, 3, 4, 4))


def test_vae_space_defaults(tmp_path):
    _save_tiny_vae(tmp_path / "sd")  # diffusers default scaling 0.18215, no shift
    sd = VAESpace(str(tmp_path / "sd"))
    assert (sd.shift, sd.scale) == (0.0, 0.18215)
    _save_tiny_vae(tmp_path / "flux", latent_channels=16)
    flux = VAESpace(str(tmp_path / "flux"))
    assert (flux.shift, flux.scale) == (FLUX_SHIFT, FLUX_SCALE) == (0.1159, 0.3611)
    override = VAESpace(str(tmp_path / "flux"), shift=0.0, scale=1.0)
    assert (override.shift, override.scale) == (0.0, 1.0)


def test_vae_missing_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="does not exist"):
        VAESpace(str(tmp_path / "missing" / "vae"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="local dir"):
        VAESpace(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="hub id"):
        VAESpace("nobody-here/no-such-vae-xyz")
