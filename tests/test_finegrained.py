"""Image-only fine-grained metrics: blind-pair separation and k-NN accuracy, alone and as
rows of `eval compare` (JSON, printed table, report)."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from genhancer.cli import main
from genhancer.errors import DataError
from genhancer.eval import run_compare
from genhancer.eval.finegrained import BLIND_COSINE, knn_predict, run_blind_pairs, run_knn


class ImageOnly(nn.Module):
    """The image half of the encoder interface and nothing else (a DINOv2-style wrapper):
    the global token is ``fn(mean RGB of the image)``."""

    def __init__(self, fn):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.fn = fn
        self.source = "image-only"

    def resize_crop(self, im):
        return np.asarray(im.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(0)

    def normalize(self, batch):
        return batch.float() / 255.0

    def encode_image(self, rgb):
        g = torch.stack([torch.as_tensor(self.fn(v.tolist()), dtype=torch.float32) for v in rgb])
        return g, g[:, None]


class WithText(ImageOnly):
    """Adds a text side that prefers the first image for every statement (MMVP runs need one)."""

    family, text_max_length = "clip", 77

    def tokenize(self, texts, device="cpu"):
        return {"input_ids": torch.zeros(len(texts), 1, dtype=torch.long)}

    def encode_text(self, input_ids, attention_mask=None):
        return torch.tensor([[1.0, 0.0, 0.0]]).expand(len(input_ids), 3)

    def logits(self, img, txt):
        return img @ txt.t()


# Pairs: first image red-ish, second the same red with a green mark (green channel up).
def blind(rgb):        # sees only red: both images of a pair get the same token
    return [rgb[0] + 1.0, 0.0, 0.0]


def seeing(rgb):       # sees green too: a pair's two images point apart
    return [rgb[0] + 0.1, 4.0 * rgb[1], 0.0]


def write_pairs(root, n_pairs=6):
    root.mkdir(parents=True)
    with open(root / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Question ID", "Type", "Statement"])
        for i in range(n_pairs):
            w.writerow([2 * i + 1, "t", "a mark"])
            w.writerow([2 * i + 2, "t", "no mark"])
            d = root / "MLLM_VLM Images" / "t"
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(d / f"{2 * i + 1}.jpg")
            Image.new("RGB", (16, 16), (30 * i, 200, 0)).save(d / f"{2 * i + 2}.jpg")
    return root


def write_labels(root, n=60, seed=0):
    """'hue' is the image's colour class (seen by `seeing`, not by `blind`); 'coin' is noise."""
    root.mkdir(parents=True)
    rng = random.Random(seed)
    colours = [(200, 0, 0), (0, 200, 0), (200, 200, 0), (0, 120, 0)]
    rows = []
    for i in range(n):
        c = i % 4
        Image.new("RGB", (8, 8), colours[c]).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "label_ids": {"hue": c, "coin": rng.randrange(2)}})
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "labels.jsonl"


def test_knn_predict_majority_and_tie_break():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y = torch.tensor([0, 0, 1, 1])
    assert knn_predict(train, y, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), k=3).tolist() == [0, 1]
    # k = 4: two votes each; the closer pair of neighbours wins.
    assert knn_predict(train, y, torch.tensor([[1.0, 0.2]]), k=4).tolist() == [0]


def test_blind_pairs_image_only(tmp_path):
    data = write_pairs(tmp_path / "pairs")
    b = run_blind_pairs(ImageOnly(blind), data, tmp_path / "b")
    a = run_blind_pairs(ImageOnly(seeing), data, tmp_path / "a")
    assert b["share"] == 100.0 and b["mean_cosine"] == pytest.approx(1.0)
    assert a["share"] < 100.0 and a["mean_cosine"] < BLIND_COSINE
    assert all(r["blind"] == (r["cosine"] > BLIND_COSINE) for r in a["items"])
    assert json.loads((tmp_path / "a" / "blind_pairs.json").read_text())["n_pairs"] == 6


def test_knn_image_only(tmp_path):
    labels = write_labels(tmp_path / "probe")
    good = run_knn(ImageOnly(seeing), labels, tmp_path / "k", k=5)
    assert good["per_attribute"]["hue"] == 100.0 and good["n_test"] == 18
    assert len(good["items"]) == 2 * 18
    bad = run_knn(ImageOnly(blind), labels, k=5)
    assert bad["per_attribute"]["hue"] < 60.0
    assert json.loads((tmp_path / "k" / "knn_summary.json").read_text())["k"] == 5
    with pytest.raises(DataError, match="k must be >= 1"):
        run_knn(ImageOnly(seeing), labels, k=0)


def test_compare_rows(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs", n_pairs=6)
    labels = write_labels(tmp_path / "probe")
    res = run_compare(WithText(blind), WithText(seeing), tmp_path / "cmp", mmvp_data=data, knn_labels=labels,
                      knn_k=5, allow_partial=True, n_resamples=50)
    rows = {r["metric"]: r for r in res["rows"]}
    blind_row = rows[f"blind pairs (cos > {BLIND_COSINE})"]
    assert blind_row["before"] == 100.0 and blind_row["after"] < 100.0 and blind_row["lower_is_better"]
    assert blind_row["n"] == 6 and blind_row["p_value"] is not None
    cos_row = rows["MMVP pair cosine (mean)"]
    assert cos_row["unit"] == "cosine" and cos_row["before"] == pytest.approx(1.0) and cos_row["p_value"] is None
    assert -1.0 <= cos_row["ci_low"] <= cos_row["ci_high"] <= 0.0     # in cosine units, not percent
    knn = rows["k-NN fine attributes (k=5, mean)"]
    assert knn["n"] == 36 and rows["k-NN hue"]["after"] == 100.0
    printed = capsys.readouterr().out
    assert "blind pairs (cos > 0.95)" in printed and "k-NN hue" in printed
    saved = json.loads((tmp_path / "cmp" / "compare_summary.json").read_text())
    assert {"blind pairs (cos > 0.95)", "MMVP pair cosine (mean)", "k-NN hue"} <= {r["metric"] for r in saved["rows"]}
    per_pair = saved["pair_cosines"]
    assert [p["pair"] for p in per_pair] == list(range(6))
    assert all(p["before"] == pytest.approx(1.0) and p["after"] < p["before"] for p in per_pair)
    html = (tmp_path / "cmp" / "report.html").read_text()
    # Fewer blind pairs is the good direction: coloured as an improvement.
    assert "<td>blind pairs (cos &gt; 0.95)</td><td>100.00</td>" in html
    assert html.split("blind pairs (cos &gt; 0.95)")[1].split("</tr>")[0].count("class=up") == 1


def test_cli_compare_knn_only(tiny_clip_dir, tmp_path, capsys):
    labels = write_labels(tmp_path / "probe", n=20)
    out = tmp_path / "cmp"
    assert main(["eval", "compare", "--before", str(tiny_clip_dir), "--after", str(tiny_clip_dir),
                 "--knn", str(labels), "--knn-k", "3", "--out", str(out), "--device", "cpu"]) == 0
    rows = {r["metric"]: r for r in json.loads((out / "compare_summary.json").read_text())["rows"]}
    assert rows["k-NN fine attributes (k=3, mean)"]["delta"] == 0.0
    capsys.readouterr()
    assert main(["eval", "compare", "--before", str(tiny_clip_dir), "--after", str(tiny_clip_dir),
                 "--knn", str(labels), "--knn-k", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--knn-k" in capsys.readouterr().err and not (tmp_path / "x").exists()
