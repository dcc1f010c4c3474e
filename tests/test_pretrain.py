"""Contrastive pretraining of the demo's tiny CLIP (genhancer.demo.pretrain)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from genhancer.demo.pretrain import pretrain_clip
from genhancer.errors import ConfigError, DataError, GenHancerError

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 230), "yellow": (235, 220, 30)}
SIZE = 32
# Small enough for ~15 s on two shared cores, large enough to learn 16 captions.
TINY = dict(steps=60, batch_size=64, lr=2e-3, image_size=SIZE, patch_size=8, width=32, layers=2, heads=2,
            text_layers=1, projection_dim=16, seed=0, val_fraction=0.25)


def _draw(shape: str, rgb, rng: random.Random) -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    d = ImageDraw.Draw(im)
    r = rng.randint(7, 10)
    cx, cy = rng.randint(r + 1, SIZE - r - 2), rng.randint(r + 1, SIZE - r - 2)
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=rgb)
    else:
        w = max(r // 3, 2)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=rgb)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=rgb)
    return im


def _corpus(root: Path, n: int = 200, seed: int = 0, corrupt: int = 0) -> Path:
    """``n`` coloured shapes at random places and sizes, captioned with colour + shape."""
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        shape, colour = SHAPES[i % 4], list(COLOURS)[(i // 4) % 4]
        rel = f"img/{i:04d}.png"
        _draw(shape, COLOURS[colour], rng).save(root / rel)
        rows.append({"image": rel, "text": f"a {colour} {shape}"})
    for k in range(corrupt):
        rel = f"img/bad{k}.png"
        (root / rel).write_bytes(b"this is not a png")
        rows.append({"image": rel, "text": "a red circle"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    corpus = _corpus(root / "corpus", corrupt=1)
    out = root / "clip"
    metrics = pretrain_clip(corpus, out, progress=False, **TINY)
    return corpus, out, metrics


def test_contrastive_loss_falls_and_retrieval_beats_chance(trained):
    _, out, m = trained
    # Untrained, the loss is about log(batch) = 4.2; with ~4 copies of each of the 16
    # captions per batch its floor is about log(4) = 1.4. Seeds 0-2 end at 0.50-0.57x.
    assert m["final_loss"] < 0.65 * m["initial_loss"], m
    # Held-out images (never trained on) pick their own caption among a batch of others;
    # seeds 0-2 reach 3.5-4.5x chance on image->text, 5.5-9x on text->image.
    assert 45 <= m["val_images"] <= 50
    assert 0.05 < m["val_chance"] < 0.15
    assert m["val_i2t_top1"] > 2.5 * m["val_chance"], m
    assert m["val_t2i_top1"] > 2.5 * m["val_chance"], m
    assert m["skipped_images"] == {"corrupt": 1}
    assert m["train_images"] + m["val_images"] == 200  # the corrupt row is in neither
    on_disk = json.loads((out / "pretrain_metrics.json").read_text())
    assert on_disk["val_i2t_top1"] == pytest.approx(m["val_i2t_top1"])
    log = (out / "pretrain_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,lr,logit_scale" and len(log) == TINY["steps"] + 1
    # Written atomically: nothing but the output dir itself is left beside it.
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip", "corpus"]


def test_output_loads_with_load_encoder_and_reproduces_retrieval(trained):
    from genhancer.encoders.hf import load_encoder

    corpus, out, m = trained
    enc = load_encoder(str(out)).eval()
    assert enc.family == "clip" and enc.spec.size == SIZE
    rows = [json.loads(line) for line in (corpus / "captions.jsonl").read_text().splitlines()][:200]
    # Through the public path a user takes (PIL -> preprocess, 77-token padding), the
    # trained encoder retrieves captions far above chance on the whole corpus.
    hits, chance = 0.0, 0.0
    with torch.no_grad():
        for s in range(0, 200, 64):
            chunk = rows[s:s + 64]
            pix = enc.preprocess([Image.open(corpus / r["image"]) for r in chunk])
            texts = [r["text"] for r in chunk]
            img, _ = enc.encode_image(pix)
            txt = enc.encode_text(**enc.tokenize(texts))
            pred = enc.logits(img, txt).argmax(1).tolist()
            hits += sum(texts[p] == t for p, t in zip(pred, texts))
            chance += sum(texts.count(t) / len(texts) for t in texts)
    assert hits / 200 > 3 * chance / 200


def test_output_loads_with_plain_transformers(trained):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from genhancer.encoders.hf import load_encoder

    corpus, out, _ = trained
    model = CLIPModel.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    proc = CLIPImageProcessor.from_pretrained(out)
    assert model.config.vision_config.image_size == SIZE
    assert model.config.vision_config.hidden_size == TINY["width"]
    # The tokenizer was trained on the captions: a caption word is a single token.
    assert len(tok("circle", add_special_tokens=False)["input_ids"]) == 1
    enc = load_encoder(str(out)).eval()
    im = Image.open(corpus / "img/0000.png")
    with torch.no_grad():
        ours, _ = enc.encode_image(enc.preprocess([im]))
        theirs = model.get_image_features(pixel_values=proc(images=[im], return_tensors="pt")["pixel_values"])
        theirs = getattr(theirs, "pooler_output", theirs)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_missing_captions_is_a_data_error(tmp_path):
    (tmp_path / "corpus").mkdir()
    with pytest.raises(DataError, match="captions.jsonl"):
        pretrain_clip(tmp_path / "corpus", tmp_path / "out", steps=1)
    assert not (tmp_path / "out").exists()


def test_malformed_captions_name_file_and_line(tmp_path):
    (tmp_path / "captions.jsonl").write_text('{"image": "a.png", "text": "a red circle"}\n{"image": "b.png"}\n')
    with pytest.raises(DataError, match=r"captions\.jsonl:2"):
        pretrain_clip(tmp_path, tmp_path / "out", steps=1)


def test_all_images_unreadable_is_a_data_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "captions.jsonl").write_text('{"image": "x.png", "text": "a"}\n{"image": "y.png", "text": "b"}\n')
    with pytest.raises(DataError, match="readable training image"):
        pretrain_clip(tmp_path, tmp_path / "out", steps=1, image_size=16, width=16, layers=1, heads=1,
                      text_layers=1, projection_dim=8, val_fraction=0.0)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_existing_output_refused_before_training(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(GenHancerError, match="already exists"):
        pretrain_clip(tmp_path / "no-corpus-needed", tmp_path / "out")


def test_impossible_patch_grid_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="patch_size"):
        pretrain_clip(tmp_path, tmp_path / "out", image_size=30, patch_size=8)


def test_init_from_continues_the_earlier_model(trained, tmp_path):
    from safetensors.torch import load_file

    corpus, first, m1 = trained
    out = tmp_path / "clip2"
    m2 = pretrain_clip(corpus, out, progress=False, steps=5, batch_size=64, lr=1e-4, image_size=SIZE, seed=0,
                       val_fraction=0.25, init_from=first)
    assert m2["init_from"] == str(first)
    # It starts where the first run ended (not from a random init) and keeps its tokenizer.
    assert m2["initial_loss"] < m1["initial_loss"] - 0.5
    assert (out / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    assert set(load_file(str(out / "model.safetensors"))) == set(load_file(str(first / "model.safetensors")))
    with pytest.raises(DataError, match="init-from"):
        pretrain_clip(corpus, tmp_path / "x", progress=False, steps=1, image_size=SIZE, init_from=tmp_path)
