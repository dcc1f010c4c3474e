"""Image-only encoders (DINOv2, DINOv2 with registers, ViT) behind ``encode_image``: loading,
the global token, LoRA targets per family, stages 1 and 2, export, and the evaluations that
need a text tower refusing them in one line while the image-only ones run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genhancer.cli import main
from genhancer.config import LoraConfig, load_config
from genhancer.encoders import VisionEncoder, VisionLanguageEncoder, load_encoder
from genhancer.errors import ConfigError, ModelLoadError
from test_finegrained import write_pairs  # an MMVP-format folder: pair i without / with a green mark

KINDS = ("dinov2", "dinov2_with_registers", "vit")
PIXELS = ["tokenizer.kind=pixels", "denoiser.patch_size=8"]


@pytest.fixture(scope="module")
def vision_dirs(tmp_path_factory) -> dict[str, Path]:
    from genhancer.encoders.tiny import build_tiny_vision

    return {k: build_tiny_vision(tmp_path_factory.mktemp(k), k) for k in KINDS}


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def write_labels(root: Path, n: int = 20) -> Path:
    root.mkdir(parents=True)
    rng, colours, rows = random.Random(0), [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)], []
    for i in range(n):
        Image.new("RGB", (36, 36), colours[i % 4]).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "label_ids": {"hue": i % 4, "coin": rng.randrange(2)}})
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "labels.jsonl"


def write_classes(root: Path) -> Path:
    for name, colour in (("red", (200, 0, 0)), ("green", (0, 200, 0))):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (36, 36), colour).save(root / name / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- loading, global token

@pytest.mark.parametrize("kind", KINDS)
def test_load_gives_cls_after_final_norm(vision_dirs, kind):
    enc = load_encoder(str(vision_dirs[kind])).eval()
    assert isinstance(enc, VisionEncoder) and not enc.has_text and enc.family == kind
    assert (enc.global_dim, enc.patch_dim, enc.num_patches, enc.spec.size) == (64, 64, 16, 32)
    assert enc.spec.resize_shortest == (kind != "vit")   # DINOv2: shortest edge + crop; ViT: square resize
    px = torch.randn(2, 3, 32, 32)
    seen = {}
    hook = enc.model.layernorm.register_forward_hook(lambda m, args, out: seen.update(pre=args[0]))
    with torch.no_grad():
        g, p = enc.encode_image(px)
        out = enc.model(pixel_values=px)
    hook.remove()
    assert g.shape == (2, 64) and p.shape == (2, 16, 64)
    by_hand = torch.nn.functional.layer_norm(seen["pre"], (64,), enc.model.layernorm.weight,
                                             enc.model.layernorm.bias, enc.model.config.layer_norm_eps)
    assert torch.allclose(g, by_hand[:, 0], atol=1e-6)
    prefix = 1 + (2 if kind == "dinov2_with_registers" else 0)      # CLS (+ registers) dropped
    assert torch.allclose(p, by_hand[:, prefix:], atol=1e-6)
    if kind == "vit":   # the tanh pooler is not the global token
        assert not torch.allclose(g, out.pooler_output, atol=1e-3)
    # preprocessing follows the checkpoint's own processor
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8))
    ref = enc.image_processor(images=[im], return_tensors="pt")["pixel_values"]
    assert torch.allclose(enc.preprocess([im]), ref, atol=1e-4)


def test_other_resolution_and_refusals(vision_dirs):
    vit = load_encoder(str(vision_dirs["vit"]), image_size=48)
    with torch.no_grad():
        g, p = vit.encode_image(torch.randn(1, 3, 48, 48))   # position embeddings interpolated
    assert vit.num_patches == 36 and p.shape == (1, 36, 64) and g.shape == (1, 64)
    d = str(vision_dirs["dinov2"])
    enc = load_encoder(d)
    for call in (lambda: enc.tokenize(["a"]), lambda: enc.encode_text(torch.zeros(1, 2, dtype=torch.long)),
                 lambda: enc.logits(torch.ones(1, 4), torch.ones(1, 4))):
        with pytest.raises(ConfigError, match="Dinov2Model without a text tower.*image-only evaluations"):
            call()
    with pytest.raises(ModelLoadError, match="without a text tower; load it with load_encoder"):
        VisionLanguageEncoder.from_pretrained(d)
    with pytest.raises(ModelLoadError, match="--text-from.*Dinov2Model"):
        from genhancer.encoders import ModelRef

        load_encoder(ModelRef(d, text_from=ModelRef(d)))
    assert isinstance(load_encoder(d).fingerprint(), str) and enc.fingerprint() != vit.fingerprint()


# ----------------------------------------------------------------------------- LoRA

@pytest.mark.parametrize("kind", ["dinov2", "vit"])
def test_lora_targets_resolved_per_family(vision_dirs, kind):
    from peft.tuners.lora import LoraLayer

    from genhancer.lora import apply_vision_lora, is_lora_param

    enc = load_encoder(str(vision_dirs[kind]))
    cfg = LoraConfig(r=4)   # the default target list: CLIP / SigLIP names
    apply_vision_lora(enc, cfg)
    wrapped = [n for n, m in enc.model.named_modules() if isinstance(m, LoraLayer)]
    assert len(wrapped) == 6 * 2, wrapped          # q, k, v, o, fc1, fc2 in each of 2 layers
    assert not any("pooler" in n for n in wrapped)
    assert all(p.requires_grad == is_lora_param(n, cfg) for n, p in enc.model.named_parameters())
    g, _ = enc.encode_image(torch.randn(2, 3, 32, 32))
    g.square().sum().backward()
    grads = [p.grad for n, p in enc.model.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and any(gr.abs().sum() > 0 for gr in grads)

    explicit = load_encoder(str(vision_dirs[kind]))   # a list the user wrote is used as given
    apply_vision_lora(explicit, LoraConfig(r=4, target_modules=["q_proj"]))
    assert sum(isinstance(m, LoraLayer) for m in explicit.model.modules()) == 2
    with pytest.raises(ConfigError, match="out_proj match no linear layer.*available: .*o_proj"):
        apply_vision_lora(load_encoder(str(vision_dirs[kind])), LoraConfig(target_modules=["q_proj", "out_proj"]))


def test_lora_targets_of_older_transformers_names():
    """transformers 4 named ViT's linears query / key / value / output.dense / intermediate.dense."""
    from types import SimpleNamespace

    from torch import nn

    from genhancer.lora import resolve_targets

    def block():
        attn = nn.ModuleDict({"attention": nn.ModuleDict({n: nn.Linear(4, 4) for n in ("query", "key", "value")}),
                              "output": nn.ModuleDict({"dense": nn.Linear(4, 4)})})
        return nn.ModuleDict({"attention": attn, "intermediate": nn.ModuleDict({"dense": nn.Linear(4, 8)}),
                              "output": nn.ModuleDict({"dense": nn.Linear(8, 4)})})

    tower = nn.ModuleDict({"layer": nn.ModuleList([block()]), "pooler": nn.ModuleDict({"dense": nn.Linear(4, 4)})})
    tower.config = SimpleNamespace(model_type="vit")
    assert resolve_targets(tower, LoraConfig()) == ["query", "key", "value", "output.dense", "intermediate.dense"]


# ----------------------------------------------------------------------------- training, export

@pytest.fixture(scope="module")
def dinov2_stage2(vision_dirs, tmp_path_factory):
    """Stage 1 (2 steps) then stage 2 (2 steps) with a DINOv2 encoder, pixel space."""
    from genhancer.checkpoint import list_checkpoints
    from genhancer.training import train

    root = tmp_path_factory.mktemp("dino_train")
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    common = [f"encoder.name_or_path={vision_dirs['dinov2']}", f"data.path={imgs}", "data.batch_size=4", *PIXELS]
    cfg1 = load_config("tiny", [*common, f"train.output_dir={root / 'run1'}", "train.steps=2"])
    assert train(cfg1, progress=False).steps == 2
    cfg2 = load_config("tiny", [*common, f"train.output_dir={root / 'run2'}", "train.stage=2",
                                f"train.init_from={root / 'run1'}", "train.steps=2", "train.warmup_steps=0"])
    assert train(cfg2, progress=False).steps == 2
    return list_checkpoints(root / "run2")[-1]


def test_stage2_trains_lora_and_export_round_trips(dinov2_stage2, tmp_path, capsys):
    import transformers
    from safetensors.torch import load_file

    from genhancer.export import load_enhanced_encoder

    ck = load_file(str(dinov2_stage2 / "model.safetensors"))
    lora = [k for k in ck if "lora_" in k]
    assert lora and all(k.startswith("encoder.model.encoder.layer.") for k in lora)
    assert any(ck[k].abs().sum() > 0 for k in lora if "lora_B" in k), "LoRA did not train"

    merged = load_enhanced_encoder(dinov2_stage2)
    px = torch.randn(2, 3, 32, 32)
    assert main(["export", str(dinov2_stage2), str(tmp_path / "out")]) == 0
    back = load_encoder(str(tmp_path / "out")).eval()
    plain = transformers.Dinov2Model.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        want = merged.encode_image(px)
        got = back.encode_image(px)
        assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)
        assert torch.allclose(plain(pixel_values=px).pooler_output, want[0], atol=1e-5)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "DINOv2 enhanced with GenHancer" in card and "Dinov2Model.from_pretrained" in card
    assert "pipeline_tag: image-feature-extraction" in card
    assert main(["export", str(dinov2_stage2), str(tmp_path / "vis"), "--vision-only"]) == 0
    line = one_line_error(capsys, ["export", str(dinov2_stage2), str(tmp_path / "llava"), "--into-llava",
                                   str(tmp_path / "no-llava")])
    assert "--into-llava" in line and "Dinov2Model" in line and "CLIP / SigLIP" in line


def test_vit_export_round_trip(vision_dirs, tmp_path):
    from safetensors.torch import save_file

    from genhancer.checkpoint import atomic_dir
    from genhancer.export import load_enhanced_encoder
    from genhancer.lora import apply_vision_lora

    cfg = load_config("tiny", [f"encoder.name_or_path={vision_dirs['vit']}", "train.stage=2", "lora.r=4"])
    enc = load_encoder(str(vision_dirs["vit"]))
    apply_vision_lora(enc, cfg.lora)
    g = torch.Generator().manual_seed(0)
    weights = {"encoder." + n: torch.randn(p.shape, generator=g) * 0.05 for n, p in enc.named_parameters()
               if "lora_" in n}

    def write(d):
        save_file(weights, str(d / "model.safetensors"))
        cfg.save(d / "config.yaml")

    ckpt = atomic_dir(tmp_path / "ckpt", write)
    merged = load_enhanced_encoder(ckpt)
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 0
    back = load_encoder(str(tmp_path / "out")).eval()
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back.encode_image(px)[0], merged.encode_image(px)[0], atol=1e-5)
        assert not torch.allclose(merged.encode_image(px)[0], load_encoder(str(vision_dirs["vit"])).encode_image(px)[0],
                                  atol=1e-4), "the merge must change the model"


# ----------------------------------------------------------------------------- evaluations

def test_text_evaluations_refuse_in_one_line(vision_dirs, tmp_path, capsys):
    model = str(vision_dirs["dinov2"])
    mmvp = write_pairs(tmp_path / "mmvp")
    classes = write_classes(tmp_path / "classes")
    (tmp_path / "caps.csv").write_text("image,caption\nclasses/red/0.png,a red square\n")
    for argv in (["mmvp", "--data", str(mmvp)], ["zeroshot", "--data", str(classes)],
                 ["retrieval", "--data", str(tmp_path / "caps.csv")]):
        line = one_line_error(capsys, ["eval", argv[0], "--model", model, *argv[1:], "--out", str(tmp_path / "o")])
        assert "Dinov2Model without a text tower" in line and "probe, --knn, blind pairs" in line, line
    line = one_line_error(capsys, ["eval", "compare", "--before", model, "--after", model, "--zeroshot",
                                   str(classes), "--out", str(tmp_path / "c")])
    assert "without a text tower" in line


def test_image_only_evaluations_run(vision_dirs, tmp_path, capsys):
    from genhancer.demo.evaluate import evaluate_encoder
    from genhancer.eval.finegrained import run_knn

    model = str(vision_dirs["vit"])
    data = tmp_path / "data"
    mmvp, labels = write_pairs(data / "mmvp"), write_labels(data / "probe")
    write_classes(data / "coarse")
    assert main(["eval", "probe", "--model", model, "--data", str(labels), "--out", str(tmp_path / "p")]) == 0
    assert run_knn(model, labels, k=3)["n_test"] == 6
    assert main(["eval", "compare", "--before", model, "--after", str(vision_dirs["dinov2"]), "--mmvp", str(mmvp),
                 "--knn", str(labels), "--knn-k", "3", "--out", str(tmp_path / "c")]) == 0
    rows = [r["metric"] for r in json.loads((tmp_path / "c" / "compare_summary.json").read_text())["rows"]]
    assert any(m.startswith("blind pairs") for m in rows) and any(m.startswith("k-NN") for m in rows)
    assert not any(m.startswith("MMVP-VLM") for m in rows)
    res = evaluate_encoder(model, data)     # text-scored metrics absent, not 0
    assert res["mmvp"] is None and res["zeroshot"] is None and res["mmvp_categories"] is None
    assert res["mmvp_blind"] is not None and res["probe"] is not None
    capsys.readouterr()
    assert main(["info", "--model", model, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["model"]
    assert info["family"] == "vit" and info["text_params"] == 0


def test_siglip2_naflex_is_refused_in_one_line(tmp_path):
    from transformers import Siglip2Config

    Siglip2Config().save_pretrained(tmp_path)   # the config alone: refused before any weights are read
    with pytest.raises(ModelLoadError, match="SigLIP 2 NaFlex model.*model_type siglip"):
        load_encoder(str(tmp_path))


def test_mmvp_validation_set_is_refused_for_a_textless_encoder(vision_dirs, tmp_path):
    from types import SimpleNamespace

    from genhancer.validation import Validation, ValSet

    enhancer = SimpleNamespace(encoder=load_encoder(str(vision_dirs["dinov2"])))
    with pytest.raises(ConfigError, match="MMVP-format set.*Dinov2Model has none; validate on a probe"):
        Validation(load_config("tiny"), enhancer, tmp_path, 0, None, ValSet("mmvp", tmp_path))


def test_preserve_keeps_a_real_reference_for_a_vision_only_model(vision_dirs):
    """DINOv2 is its own vision tower: the drift regulariser's reference must not share its
    modules with the adapted model (it would pick up the LoRA and always read zero drift)."""
    from genhancer.config import load_config
    from genhancer.enhancer import Enhancer

    cfg = load_config("tiny", [f"encoder.name_or_path={vision_dirs['dinov2']}", "train.stage=2",
                               "objective.preserve_weight=1.0"])
    enh = Enhancer(cfg)
    enh.set_trainable(lora=True, projector=False, denoiser=False)
    enh.eval()
    with torch.no_grad():
        for n, p in enh.encoder.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    px = torch.randn(2, 3, enh.encoder.spec.size, enh.encoder.spec.size)
    assert enh.preserve_loss(enh.encode(px)[0], px).item() > 1e-3
