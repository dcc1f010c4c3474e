"""VQ tokenizer, VQSpace loaders and tokenizer training."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from genhancer.denoisers.perceiver import PerceiverDenoiser, check_compatible
from genhancer.errors import CheckpointError, ConfigError, ModelLoadError, ShapeError
from genhancer.latents.vq import (
    VectorQuantizer,
    VQSpace,
    VQTokenizer,
    load_vq_space,
    train_vq_tokenizer,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are too small to split across threads; on a shared 2-core machine two
    # spinning OpenMP threads made the tokenizer run ~10x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def coloured_shapes(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Rectangles and ellipses of random colours on flat backgrounds, [N,3,H,W] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
            w, h = (int(v) for v in rng.integers(6, 16, 2))
            box = [x0, y0, min(size - 1, x0 + w), min(size - 1, y0 + h)]
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.rectangle if rng.integers(0, 2) else draw.ellipse)(box, fill=fill)
        out.append(torch.tensor(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / (a - b).pow(2).mean().item())


@pytest.fixture(scope="module")
def shapes():
    return coloured_shapes(64)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("vq") / "tok"
    metrics = train_vq_tokenizer(shapes, out, codebook_size=64, codebook_dim=16, downsample=4, steps=300,
                                 batch_size=8, lr=2e-3, channels=16, seed=0, progress=False)
    return out, metrics


@pytest.mark.parametrize("mode", ["ema", "straight_through"])
@pytest.mark.parametrize("ds", [4, 8])
def test_tokenizer_forward_shapes(mode, ds):
    tok = VQTokenizer(codebook_size=16, codebook_dim=8, downsample=ds, channels=8, mode=mode)
    out = tok(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out["recon"].shape == (2, 3, 32, 32)
    assert out["codes"].shape == (2, 32 // ds, 32 // ds) and out["codes"].dtype == torch.long
    assert out["loss"].ndim == 0 and torch.allclose(out["loss"], out["recon_loss"] + out["commit_loss"])
    assert 0 < out["usage"].item() <= 1
    out["loss"].backward()
    assert tok.encoder[0].weight.grad is not None
    if mode == "straight_through":
        assert tok.quantizer.embedding.grad is not None  # the codebook loss trains the codebook
    else:
        assert not tok.quantizer.embedding.requires_grad  # EMA moves it instead


def test_bad_tokenizer_config():
    with pytest.raises(ConfigError, match="power of two"):
        VQTokenizer(downsample=6)
    with pytest.raises(ConfigError, match="ema, straight_through"):
        VQTokenizer(mode="gumbel")


def test_ema_updates_only_in_training_and_encode_never_updates():
    torch.manual_seed(0)
    tok = VQTokenizer(codebook_size=16, codebook_dim=8, channels=8)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    tok.train()
    tok(x)
    assert bool(tok.quantizer.initialized)
    before = tok.quantizer.embedding.clone()
    tok.encode_indices(x)  # training mode, but encode is read-only
    assert torch.equal(before, tok.quantizer.embedding)
    tok(x)
    assert not torch.equal(before, tok.quantizer.embedding)
    tok.eval()
    after = tok.quantizer.embedding.clone()
    tok(x)
    assert torch.equal(after, tok.quantizer.embedding)


@pytest.mark.parametrize("mode", ["ema", "straight_through"])
def test_dead_codes_are_reseeded_from_encoder_outputs(mode):
    torch.manual_seed(0)
    q = VectorQuantizer(8, 4, mode=mode, dead_code_steps=3)
    q.train()
    z = torch.randn(2, 4, 4, 4)
    q(z)  # initialises the codebook from this batch
    far = torch.full((4,), 100.0)
    with torch.no_grad():
        q.embedding.data[5] = far  # code 5 can never win
    for _ in range(3):
        q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    # re-seeded: no longer the unreachable vector, and close to some encoder output
    assert not torch.allclose(q.embedding[5], far)
    assert torch.cdist(q.embedding[5:6].detach(), flat).min() < 0.5
    assert q.steps_unused[5] < 3


def test_training_beats_the_mean_image_and_uses_the_codebook(shapes, trained):
    out, metrics = trained
    baseline = psnr(shapes.mean(0, keepdim=True).expand_as(shapes), shapes)
    print(f"VQ tokenizer: psnr {metrics['psnr']:.2f} dB (mean-image baseline {baseline:.2f}), "
          f"usage {metrics['usage']:.2f}, perplexity {metrics['perplexity']:.1f}")
    assert metrics["psnr"] > baseline + 3.0
    assert metrics["usage"] > 0.5 and metrics["perplexity"] > 16
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["psnr"] == pytest.approx(metrics["psnr"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["tok"]  # no temp dirs left behind
    cfg = json.loads((out / "vq_config.json").read_text())
    assert cfg["kind"] == "genhancer-vq" and cfg["codebook_size"] == 64


def test_checkpoint_round_trip_gives_identical_codes(shapes, trained):
    out, metrics = trained
    space = load_vq_space(out)
    assert isinstance(space, VQSpace) and space.discrete and space.source == "genhancer"
    assert (space.codebook_size, space.downsample) == (64, 4)
    codes = space.encode(shapes[:8])
    assert codes.shape == (8, 8, 8) and codes.dtype == torch.long
    again = VQSpace.from_genhancer(out).encode(shapes[:8])
    assert torch.equal(codes, again)
    recon = space.decode(codes)
    assert recon.shape == (8, 3, 32, 32) and recon.min() >= -1 and recon.max() <= 1
    assert psnr(recon, shapes[:8]) > metrics["psnr"] - 3
    assert not any(p.requires_grad for p in space.parameters())  # the tokenizer is frozen
    assert not space.train().backend.training  # and stays in eval mode under a parent's .train()
    with pytest.raises(ShapeError, match="not divisible"):
        space.encode(torch.zeros(1, 3, 30, 30))


def test_rewriting_a_checkpoint_replaces_it(tmp_path):
    tok = VQTokenizer(codebook_size=8, codebook_dim=4, channels=8)
    tok.save(tmp_path / "ck", {"psnr": 1.0})
    tok.save(tmp_path / "ck", {"psnr": 2.0})
    assert json.loads((tmp_path / "ck" / "metrics.json").read_text())["psnr"] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_wrong_kind_checkpoint_is_a_checkpoint_error(tmp_path):
    (tmp_path / "vq_config.json").write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(CheckpointError) as e:
        VQSpace.from_genhancer(tmp_path)
    msg = str(e.value)
    assert "is not a genhancer VQ tokenizer checkpoint (expected vq_config.json with kind genhancer-vq)" in msg
    with pytest.raises(CheckpointError, match="is not a genhancer VQ tokenizer checkpoint"):
        load_vq_space(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="is not a VQ tokenizer"):
        load_vq_space(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vq_space(tmp_path / "missing" / "dir")


def test_weights_that_do_not_fit_the_config(tmp_path):
    VQTokenizer(codebook_size=8, codebook_dim=4, channels=8).save(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "vq_config.json").read_text())
    cfg["codebook_size"] = 16
    (tmp_path / "ck" / "vq_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit its vq_config.json"):
        load_vq_space(tmp_path / "ck")


def _tiny_diffusers_vq(path):
    from diffusers import VQModel

    torch.manual_seed(0)
    model = VQModel(block_out_channels=(16, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
                    latent_channels=4, num_vq_embeddings=32, sample_size=16)
    model.save_pretrained(path)
    return model


def test_diffusers_vqmodel_loads_and_round_trips(tmp_path):
    model = _tiny_diffusers_vq(tmp_path / "vq")
    space = load_vq_space(tmp_path / "vq")
    assert space.source == "diffusers" and space.codebook_size == 32 and space.downsample == 2
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = space.encode(x)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 32
    img = space.decode(codes)
    assert img.shape == (2, 3, 16, 16)
    # decoding our indices matches diffusers' own quantise-then-decode path
    with torch.no_grad():
        ref = model.decode(model.encode(x).latents).sample.clamp(-1, 1)
    assert torch.allclose(img, ref, atol=1e-5)


def test_diffusers_wrong_class_and_missing_hub_id(tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4).save_pretrained(tmp_path / "kl")
    with pytest.raises(ModelLoadError, match="expected a diffusers VQModel, got AutoencoderKL"):
        load_vq_space(tmp_path / "kl")
    with pytest.raises(ModelLoadError) as e:
        load_vq_space("nobody-here/no-such-vq-model")
    assert "cannot load a diffusers VQModel from 'nobody-here/no-such-vq-model'" in str(e.value)
    assert "\n" not in str(e.value)


def test_codebook_mismatch_between_tokenizer_and_denoiser(trained):
    space = load_vq_space(trained[0])
    check_compatible(PerceiverDenoiser(64, 64, 8, hidden_size=16, depth=1, num_heads=2), space, image_size=32)
    with pytest.raises(ConfigError) as e:
        check_compatible(PerceiverDenoiser(128, 64, 8, hidden_size=16, depth=1, num_heads=2), space)
    assert str(e.value) == "codebook size mismatch: tokenizer has 64 codes, denoiser expects 128"
    with pytest.raises(ShapeError, match="denoiser expects 64"):
        check_compatible(PerceiverDenoiser(64, 64, 8, hidden_size=16, depth=1, num_heads=2), space, image_size=64)


def test_training_accepts_datasets_and_iterators(tmp_path, shapes):
    ds = [(img, 0) for img in shapes[:10]]  # (image, label) items as a torchvision-style dataset yields
    m = train_vq_tokenizer(iter(ds), tmp_path / "a", codebook_size=8, codebook_dim=4, steps=2, batch_size=4,
                           channels=8, progress=False)
    assert m["eval_images"] == 10 and m["steps"] == 2
    # seeded: the same call writes the same weights
    again = train_vq_tokenizer(iter(ds), tmp_path / "a2", codebook_size=8, codebook_dim=4, steps=2, batch_size=4,
                               channels=8, progress=False)
    assert again["psnr"] == m["psnr"]
    assert (tmp_path / "a" / "vq_tokenizer.safetensors").read_bytes() == \
        (tmp_path / "a2" / "vq_tokenizer.safetensors").read_bytes()
    with pytest.raises(ShapeError, match=r"expected tensors \[3,H,W\]"):
        train_vq_tokenizer([torch.zeros(32, 32)], tmp_path / "b", steps=1, progress=False)
    assert not (tmp_path / "b").exists()
