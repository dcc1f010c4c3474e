"""Encoders, vision-only LoRA, merged export and the CLI's error contract."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from genhancer.config import LoraConfig
from genhancer.encoders import load_encoder
from genhancer.errors import ConfigError, ModelLoadError
from genhancer.lora import apply_lora, apply_vision_lora, has_lora, merge_lora


def _images(n=3, size=40):
    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(size, size + 7, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


@pytest.mark.parametrize("fixture, family, tlen", [("tiny_clip_dir", "clip", 77), ("tiny_siglip_dir", "siglip", 64)])
def test_encoder_contract(request, fixture, family, tlen):
    enc = load_encoder(str(request.getfixturevalue(fixture)))
    assert enc.family == family and enc.text_max_length == tlen
    px = enc.preprocess(_images())
    # Our preprocessing must equal the checkpoint's own image processor.
    ref = enc.image_processor(images=_images(), return_tensors="pt")["pixel_values"]
    assert torch.allclose(px, ref, atol=1e-5)
    # Fast paths (image already SxS, a grey or RGBA image) must agree with the processor too.
    side = enc.spec.size
    odd = [_images(1, side)[0].crop((0, 0, side, side)), _images(1)[0].convert("L"), _images(1)[0].convert("RGBA")]
    ref_odd = enc.image_processor(images=[im.convert("RGB") for im in odd], return_tensors="pt")["pixel_values"]
    assert torch.allclose(enc.preprocess(odd), ref_odd, atol=1e-5)
    assert torch.allclose(enc.preprocess_one(odd[1]), ref_odd[1], atol=1e-5)
    g, patches = enc.encode_image(px)
    assert g.shape == (3, enc.global_dim) and patches.shape == (3, enc.num_patches, enc.patch_dim)
    ref_global = enc.model.get_image_features(pixel_values=px)
    ref_global = getattr(ref_global, "pooler_output", ref_global)
    assert torch.allclose(g, ref_global, atol=1e-5), "global token must be the embedding used for contrast"
    toks = enc.tokenize(["a red star", "two markers"])
    assert toks["input_ids"].shape == (2, tlen)
    assert enc.encode_text(**toks).shape == (2, enc.global_dim)


def test_encoder_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_encoder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_encoder(str(tmp_path / "empty"))
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="unsupported model type 'bert'"):
        load_encoder(str(bad))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_encoder("someone/not-cached-model")


@pytest.mark.parametrize("upstream", [True, False])
def test_lora_trains_vision_only_text_bit_identical(tiny_clip_dir, upstream):
    # upstream: the default (visual projection adapted, wrapped biases train, as upstream's
    # peft all-linear + bias='lora_only'); else the narrow adapter (attention + MLP, no bias).
    enc = load_encoder(str(tiny_clip_dir))
    text_before = {k: v.clone() for k, v in enc.model.state_dict().items()
                   if not k.startswith(("vision_model", "visual_projection"))}
    vision_before = {k: v.clone() for k, v in enc.model.state_dict().items()
                     if k.startswith(("vision_model", "visual_projection"))}
    for p in enc.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=4, alpha=4, dropout=0.0) if upstream else \
        LoraConfig(r=4, alpha=4, dropout=0.0, visual_projection=False, bias="none")
    apply_vision_lora(enc, cfg)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("vision_model" in n or "visual_projection" in n for n in trainable)
    assert any("visual_projection.lora_A" in n for n in trainable) == upstream
    assert any(n.endswith("base_layer.bias") for n in trainable) == upstream
    assert all("lora_" in n or (upstream and n.endswith("base_layer.bias")) for n in trainable)
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-2)
    px = enc.preprocess(_images(4))
    toks = enc.tokenize(["a", "b", "c", "d"])
    for _ in range(3):
        img, txt = enc.encode_image(px)[0], enc.encode_text(**toks)
        loss = torch.nn.functional.cross_entropy(enc.logits(img, txt), torch.arange(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    merge_lora(enc.model)
    assert not has_lora(enc.model)
    after = enc.model.state_dict()
    assert set(after) == set(text_before) | set(vision_before)  # plain modules again, same names
    for k, v in text_before.items():
        assert torch.equal(after[k], v), f"{k} changed"
    changed = [k for k, v in vision_before.items() if not torch.equal(after[k], v)]
    assert any("q_proj.weight" in k for k in changed), "LoRA training must change merged vision weights"
    assert ("visual_projection.weight" in changed) == upstream
    assert any(k.endswith("q_proj.bias") for k in changed) == upstream


def test_lora_target_that_matches_nothing(tiny_clip_dir):
    enc = load_encoder(str(tiny_clip_dir))
    with pytest.raises(ConfigError, match="nope match no linear layer"):
        apply_lora(enc.vision_tower, LoraConfig(target_modules=["nope"]))


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "genhancer.cli", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def test_cli_help_info_and_one_line_errors(tmp_path, tiny_clip_dir):
    r = _cli("--help")
    assert r.returncode == 0 and "export" in r.stdout and "info" in r.stdout
    r = _cli("info", "--json", "--model", str(tiny_clip_dir))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["model"]["family"] == "clip" and "tiny" in info["presets"]
    r = _cli("export", str(tmp_path / "nock"), str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr
