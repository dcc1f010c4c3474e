"""Round trip: a stage-2 checkpoint -> `genhancer export` -> transformers loads it unchanged."""

import pytest
import torch
from safetensors.torch import save_file

from genhancer.checkpoint import atomic_dir
from genhancer.cli import main
from genhancer.config import load_config
from genhancer.encoders import load_encoder
from genhancer.export import load_enhanced_encoder
from genhancer.lora import apply_lora


def _fake_stage2_checkpoint(model_dir, ckpt_dir, seed=0):
    """What the trainer writes after stage 2: trainable LoRA weights named as in Enhancer."""
    cfg = load_config("tiny", [f"encoder.name_or_path={model_dir}", "train.stage=2", "lora.r=4"])
    enc = load_encoder(str(model_dir))
    apply_lora(enc.vision_tower, cfg.lora)
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for n, p in enc.named_parameters():
        if "lora_" in n:  # lora_B starts at zero: give it values so the merge changes something
            weights["encoder." + n] = torch.randn(p.shape, generator=g) * 0.05

    def write(d):
        save_file(weights, str(d / "model.safetensors"))
        cfg.save(d / "config.yaml")

    atomic_dir(ckpt_dir, write)
    return ckpt_dir


@pytest.mark.parametrize("fixture, family", [("tiny_clip_dir", "clip"), ("tiny_siglip_dir", "siglip")])
def test_export_roundtrip(request, tmp_path, fixture, family):
    import transformers

    model_dir = request.getfixturevalue(fixture)
    ckpt = _fake_stage2_checkpoint(model_dir, tmp_path / "ckpt")
    merged = load_enhanced_encoder(ckpt)
    base = load_encoder(str(model_dir))
    px = torch.randn(2, 3, merged.spec.size, merged.spec.size)
    with torch.no_grad():
        want = merged.encode_image(px)[0]
        assert not torch.allclose(want, base.encode_image(px)[0], atol=1e-4), "merge must change the tower"

    assert main(["export", str(ckpt), str(tmp_path / "full")]) == 0
    full_cls = transformers.CLIPModel if family == "clip" else transformers.SiglipModel
    full = full_cls.from_pretrained(tmp_path / "full").eval()
    with torch.no_grad():
        got = full.get_image_features(pixel_values=px)
        got = getattr(got, "pooler_output", got)
        assert torch.allclose(got, want, atol=1e-5)
        # The text tower is exactly the original one.
        toks = base.tokenize(["a red star"])
        t_full = full.get_text_features(**toks)
        t_base = base.model.get_text_features(**toks)
        t_full, t_base = (getattr(t, "pooler_output", t) for t in (t_full, t_base))
        assert torch.equal(t_full, t_base)

    assert main(["export", str(ckpt), str(tmp_path / "vision"), "--vision-only"]) == 0
    vis_cls = transformers.CLIPVisionModel if family == "clip" else transformers.SiglipVisionModel
    vis = vis_cls.from_pretrained(tmp_path / "vision").eval()
    with torch.no_grad():
        ref = merged.vision_tower(pixel_values=px).last_hidden_state
        assert torch.allclose(vis(pixel_values=px).last_hidden_state, ref, atol=1e-5)
    # What LLaVA-style code does: a CLIPVisionModel from the *full* export.
    if family == "clip":
        vis2 = transformers.CLIPVisionModel.from_pretrained(tmp_path / "full").eval()
        with torch.no_grad():
            assert torch.allclose(vis2(pixel_values=px).last_hidden_state, ref, atol=1e-5)


def test_export_refuses_non_empty_dir_and_keeps_it(tmp_path, tiny_clip_dir, capsys):
    ckpt = _fake_stage2_checkpoint(tiny_clip_dir, tmp_path / "ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["export", str(ckpt), str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    assert main(["export", str(ckpt), str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_export_stage1_checkpoint_is_refused(tmp_path, tiny_clip_dir, capsys):
    cfg = load_config("tiny", [f"encoder.name_or_path={tiny_clip_dir}"])

    def write(d):
        save_file({"projector.net.1.weight": torch.zeros(2, 2)}, str(d / "model.safetensors"))
        cfg.save(d / "config.yaml")

    atomic_dir(tmp_path / "s1", write)
    assert main(["export", str(tmp_path / "s1"), str(tmp_path / "o")]) == 2
    assert "no LoRA weights" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
