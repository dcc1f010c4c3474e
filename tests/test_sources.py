"""Any published checkpoint in: REPO:SUBFOLDER / --subfolder, and vision-only checkpoints
scored with the text tower of their base (--text-from), on a local folder laid out like a
hub repository (subfolders written by save_pretrained, some vision-only)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

from genhancer.cli import main
from genhancer.encoders import ModelRef, load_encoder, parse_model_ref
from genhancer.errors import ModelLoadError
from genhancer.export import _vision_model


def _vision_only(model_dir, out, seed):
    """What upstream publishes for some backbones: the vision tower alone, here with its
    weights moved so that it is told apart from the base's."""
    enc = load_encoder(str(model_dir))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.vision_tower.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    _vision_model(enc).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_clip_dir, tiny_siglip_dir):
    from genhancer.encoders.tiny import build_tiny_clip

    root = tmp_path_factory.mktemp("hub_like")
    build_tiny_clip(root / "OpenAICLIP" / "full", seed=0)          # a full CLIPModel in a nested subfolder
    _vision_only(tiny_clip_dir, root / "OpenAICLIP" / "vision", seed=1)
    _vision_only(tiny_siglip_dir, root / "SigLIP" / "vision", seed=2)
    other = build_tiny_clip(tmp_path_factory.mktemp("other_base"), width=48, seed=3)
    return {"root": root, "other": other}


def write_mmvp(root, n_pairs=3, second="a blue circle with a small notch", step=40):
    """A tiny MMVP-VLM folder (one type "t"), for the tests of this file and test_model_card."""
    root.mkdir(parents=True)
    with open(root / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Question ID", "Type", "Statement"])
        for i in range(n_pairs):
            w.writerow([2 * i + 1, "t", "a red star"])
            w.writerow([2 * i + 2, "t", second])
            (root / "MLLM_VLM Images" / "t").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (step * i, 0, 0)).save(root / "MLLM_VLM Images" / "t" / f"{2 * i + 1}.jpg")
            Image.new("RGB", (32, 32), (0, step * i, 200)).save(root / "MLLM_VLM Images" / "t" / f"{2 * i + 2}.jpg")
    return root


def test_parse_model_ref(tmp_path):
    assert parse_model_ref("org/repo:Sub/dir") == ModelRef("org/repo", "Sub/dir")
    assert parse_model_ref("org/repo", "Sub") == ModelRef("org/repo", "Sub")
    ref = parse_model_ref("org/repo:v", text_from="org/base")
    assert ref.text_from == ModelRef("org/base") and str(ref) == "org/repo:v (text tower from org/base)"
    odd = tmp_path / "a:b"   # a path that exists is never split at its colon
    odd.mkdir()
    assert parse_model_ref(str(odd)) == ModelRef(str(odd))
    with pytest.raises(ModelLoadError, match="give it one way"):
        parse_model_ref("org/repo:a", "b")
    with pytest.raises(ModelLoadError, match="relative path"):
        parse_model_ref("org/repo:../x")


def test_subfolder_both_spellings(repo, tiny_clip_dir):
    root = repo["root"]
    a = load_encoder(f"{root}:OpenAICLIP/full")
    b = load_encoder(ModelRef(str(root), "OpenAICLIP/full"))
    ref = load_encoder(str(tiny_clip_dir))   # same seed and sizes: the same weights
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.encode_image(px)[0], ref.encode_image(px)[0])
        assert torch.equal(b.encode_image(px)[0], ref.encode_image(px)[0])
    with pytest.raises(ModelLoadError, match="has no subfolder 'nope'"):
        load_encoder(f"{root}:nope")


@pytest.mark.parametrize("family, sub", [("clip", "OpenAICLIP/vision"), ("siglip", "SigLIP/vision")])
def test_vision_only_with_text_from(repo, tiny_clip_dir, tiny_siglip_dir, family, sub):
    import transformers

    base_dir = tiny_clip_dir if family == "clip" else tiny_siglip_dir
    enc = load_encoder(parse_model_ref(f"{repo['root']}:{sub}", text_from=str(base_dir)))
    base = load_encoder(str(base_dir))
    vis_cls = transformers.CLIPVisionModel if family == "clip" else transformers.SiglipVisionModel
    vis = vis_cls.from_pretrained(repo["root"] / sub).eval()
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # Vision: the published tower; text, tokenizer and logit scale: the base's.
        assert torch.allclose(enc.encode_image(px)[1], vis(pixel_values=px).last_hidden_state[:, 1 if family == "clip" else 0:],
                              atol=1e-6)
        assert not torch.allclose(enc.encode_image(px)[0], base.encode_image(px)[0], atol=1e-4)
        toks = base.tokenize(["a red star"])
        assert torch.equal(enc.encode_text(**toks), base.encode_text(**toks))
    assert "text tower from" in enc.source


def test_cli_vision_only(repo, tiny_clip_dir, tmp_path, capsys):
    data = write_mmvp(tmp_path / "mmvp")
    vision = f"{repo['root']}:OpenAICLIP/vision"
    out = tmp_path / "ok"
    assert main(["eval", "mmvp", "--model", vision, "--text-from", str(tiny_clip_dir), "--data", str(data),
                 "--allow-partial", "--out", str(out)]) == 0
    assert json.loads((out / "mmvp_summary.json").read_text())["n_pairs"] == 3
    assert main(["eval", "mmvp", "--model", str(repo["root"]), "--subfolder", "OpenAICLIP/full",
                 "--data", str(data), "--allow-partial", "--out", str(tmp_path / "sub")]) == 0
    assert capsys.readouterr().out.count("blind pairs (global-token cosine > 0.95)") == 2

    def refused(args, *needles):
        bad_out = tmp_path / "never"
        assert main(args + ["--data", str(data), "--allow-partial", "--out", str(bad_out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
        assert not bad_out.exists()

    refused(["eval", "mmvp", "--model", vision], "vision-only", "--text-from")
    refused(["eval", "mmvp", "--model", vision, "--text-from", str(repo["other"])],
            "vision_config.hidden_size is 48 there but 64")
    refused(["eval", "mmvp", "--model", f"{repo['root']}:SigLIP/vision", "--text-from", str(tiny_clip_dir)],
            "siglip_vision_model", "CLIPModel")
    refused(["eval", "mmvp", "--model", str(tiny_clip_dir), "--text-from", str(tiny_clip_dir)], "own text tower")


def test_cli_compare_upstream_style(repo, tiny_clip_dir, tmp_path, capsys):
    """Upstream's vision-only release against a full model, one --text-from for the side that needs it."""
    data = write_mmvp(tmp_path / "mmvp")
    out = tmp_path / "cmp"
    assert main(["eval", "compare", "--before", str(repo["root"]), "--before-subfolder", "OpenAICLIP/vision",
                 "--after", f"{repo['root']}:OpenAICLIP/full", "--text-from", str(tiny_clip_dir),
                 "--mmvp", str(data), "--allow-partial", "--out", str(out)]) == 0
    summary = json.loads((out / "compare_summary.json").read_text())
    assert "text tower from" in summary["before"] and summary["after"] == f"{repo['root']}:OpenAICLIP/full"
    assert "blind pairs (cos > 0.95)" in capsys.readouterr().out
