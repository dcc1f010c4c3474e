"""Evaluation package: MMVP-VLM protocol, zero-shot, retrieval, paired statistics, reports."""

from __future__ import annotations

import base64
import csv
import json
import math
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genhancer.errors import DataError  # noqa: E402
from genhancer.eval import (  # noqa: E402
    CATEGORIES,
    bootstrap_ci,
    mcnemar_exact,
    paired_bootstrap_ci,
    run_compare,
    run_mmvp,
    run_retrieval,
    run_zeroshot,
)
from genhancer.eval.stats import binom_two_sided_p, mcnemar_counts  # noqa: E402

# ----------------------------------------------------------------------------- fakes

KEYS = {"FIRST": [1.0, 0.0], "SECOND": [0.0, 1.0], "TIE": [1.0, 1.0]}


class FakeEncoder(nn.Module):
    """Embeddings chosen by the test: image_fn(PIL) and text_fn(str) give the vectors.

    ``logits`` is a plain scaled dot product, so which image a statement picks is known.
    Calls are counted to check that every image / text is encoded once.
    """

    family = "clip"
    text_max_length = 77

    def __init__(self, image_fn, text_fn, scale: float = 10.0):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.image_fn, self.text_fn, self.scale = image_fn, text_fn, scale
        self.texts: list[str] = []
        self.image_batches: list[int] = []
        self.text_batches: list[int] = []
        self.source = "fake"

    # encode_images reads with resize_crop (in reader threads) and normalises the batch.
    def resize_crop(self, im):
        return np.asarray(self.image_fn(im), dtype=np.float32)

    def normalize(self, batch):
        return batch.float()

    def encode_image(self, pixels):
        self.image_batches.append(len(pixels))
        return pixels, pixels[:, None, :]

    def tokenize(self, texts, device="cpu"):
        start = len(self.texts)
        self.texts += list(texts)
        return {"input_ids": torch.arange(start, start + len(texts), device=device)[:, None]}

    def encode_text(self, input_ids, attention_mask=None):
        self.text_batches.append(len(input_ids))
        return torch.tensor([self.text_fn(self.texts[i]) for i in input_ids[:, 0].tolist()])

    def logits(self, img, txt):
        return self.scale * img @ txt.t()


def position_image_fn(im):
    """MMVP fixture images: green channel 0 = first image of the pair, 255 = second."""
    return [1.0, 0.0] if im.getpixel((16, 16))[1] < 128 else [0.0, 1.0]


def keyword_text_fn(text):
    return next(v for k, v in KEYS.items() if k in text)


def mmvp_fake(**kw):
    return FakeEncoder(position_image_fn, keyword_text_fn, **kw)


# ----------------------------------------------------------------------------- MMVP fixtures

def write_mmvp(root: Path, specs, header=("Question ID", "Type", "Statement")) -> Path:
    """specs: (qid1, qid2, type1, type2, statement1, statement2); images go to type1's folder."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for n, (q1, q2, t1, t2, s1, s2) in enumerate(specs):
            w.writerow([q1, t1, s1])
            w.writerow([q2, t2, s2])
            folder = root / "MLLM_VLM Images" / t1
            folder.mkdir(parents=True, exist_ok=True)
            base = ((n * 37) % 200, (n * 91) % 256)
            Image.new("RGB", (32, 32), (base[0], 0, base[1])).save(folder / f"{q1}.jpg")
            Image.new("RGB", (32, 32), (base[0], 255, base[1])).save(folder / f"{q2}.jpg")
    return root


RIGHT = [("std", "FIRST", "SECOND"), ("std", "FIRST", "TIE"), ("swap", "SECOND", "FIRST")]
WRONG = [("std", "FIRST", "FIRST"), ("std", "SECOND", "SECOND"), ("std", "SECOND", "FIRST"),
         ("std", "TIE", "SECOND"), ("swap", "FIRST", "SECOND")]


def scoring_specs():
    """135 pairs; category c has exactly c + 1 right pairs, shuffled within the category.

    "std" pairs have ids (odd, even); "swap" pairs (even, odd), so their first statement's
    correct image is the SECOND one. A tie (p = 0.5) picks the second image upstream.
    Odd pairs carry a bogus Type on their second row: images must come from the first's.
    """
    rng = random.Random(0)
    specs, expected = [], []
    for c in range(9):
        block = [(RIGHT[k % 3], True) for k in range(c + 1)] + [(WRONG[k % 5], False) for k in range(14 - c)]
        rng.shuffle(block)
        for (kind, s1, s2), ok in block:
            i = len(specs)
            q1, q2 = (2 * i + 1, 2 * i + 2) if kind == "std" else (2 * i + 2, 2 * i + 1)
            t2 = "Bogus" if i % 2 else f"type{c}"
            specs.append((q1, q2, f"type{c}", t2, f"thing {i} {s1}", f"thing {i} {s2}"))
            expected.append(ok)
    return specs, expected


def plain_specs(n_pairs=135, bad=False):
    """Ordinary pairs that a good fake gets all right (or, with bad, all wrong: TIE everywhere)."""
    s1, s2 = ("TIE", "TIE") if bad else ("FIRST", "SECOND")
    return [(2 * i + 1, 2 * i + 2, f"type{i // 15}", f"type{i // 15}", f"a red square {s1}",
             f"a blue square {s2}") for i in range(n_pairs)]


@pytest.fixture(scope="module")
def scoring_data(tmp_path_factory):
    specs, expected = scoring_specs()
    return write_mmvp(tmp_path_factory.mktemp("mmvp_scoring"), specs), expected


# ----------------------------------------------------------------------------- (a) scoring

def test_mmvp_scoring_exact(scoring_data, tmp_path):
    data, expected = scoring_data
    res = run_mmvp(mmvp_fake(), data, tmp_path, batch_size=32)
    for c, cat in enumerate(CATEGORIES):
        assert res["categories"][cat] == pytest.approx(100.0 * (c + 1) / 15), cat
    assert res["average_score"] == pytest.approx(100.0 * 45 / 135)
    assert res["n_pairs"] == 135 and res["skipped"] == []
    assert [r["correct"] for r in res["items"]] == expected
    assert [r["category"] for r in res["items"]] == [CATEGORIES[i // 15] for i in range(135)]
    # A swapped pair (first row even) scored right: statement 1 picks image 2, statement 2 image 1.
    swap_right = next(r for r, ok in zip(res["items"], expected) if ok and r["qid1"] % 2 == 0)
    assert (swap_right["gt1"], swap_right["gt2"], swap_right["pred1"], swap_right["pred2"]) == (2, 1, 2, 1)


def test_mmvp_both_statements_must_be_right(tmp_path):
    specs = [(1, 2, "t", "t", "x FIRST", "x FIRST"), (3, 4, "t", "t", "x FIRST", "x SECOND")]
    res = run_mmvp(mmvp_fake(), write_mmvp(tmp_path / "d", specs), allow_partial=True)
    assert [r["correct"] for r in res["items"]] == [False, True]
    assert res["items"][0]["prob1_img1"] == pytest.approx(1 / (1 + math.exp(-10)))
    assert res["categories"][CATEGORIES[0]] == 50.0 and res["average_score"] == 50.0


# ----------------------------------------------------------------------------- (b) encode once

def test_mmvp_encodes_each_image_and_text_once(scoring_data):
    data, _ = scoring_data
    enc = mmvp_fake()
    run_mmvp(enc, data, None, batch_size=32)
    assert sum(enc.image_batches) == 270
    assert len(enc.image_batches) == math.ceil(270 / 32) and max(enc.image_batches) == 32
    assert sum(enc.text_batches) == 270 and len(enc.text_batches) == math.ceil(270 / 32)
    assert all(t.startswith("a photo of thing ") for t in enc.texts)


# ----------------------------------------------------------------------------- (c) real tiny models

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from genhancer.encoders.tiny import build_tiny_clip, build_tiny_siglip

    texts = ["a photo of a red square FIRST", "a photo of a blue square SECOND", "a photo of a red.",
             "a picture of a green.", "a photo of the blue."] * 4
    root = tmp_path_factory.mktemp("tiny")
    return {"clip": build_tiny_clip(root / "clip", texts, vocab_size=300),
            "siglip": build_tiny_siglip(root / "siglip", texts, vocab_size=120)}


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory):
    return write_mmvp(tmp_path_factory.mktemp("mmvp_plain"), plain_specs())


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_mmvp_end_to_end_tiny(family, tiny_models, plain_data, tmp_path):
    res = run_mmvp(str(tiny_models[family]), plain_data, tmp_path, batch_size=64, device="cpu")
    assert res["family"] == family
    for name in ("mmvp_pairs.csv", "mmvp_summary.json", "mmvp_categories.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "mmvp_categories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "mmvp_summary.json").read_text())
    with open(tmp_path / "mmvp_pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["n_pairs"] == 135
    for cat in CATEGORIES:
        got = [int(r["correct"]) for r in rows if r["category"] == cat]
        assert len(got) == 15
        assert 0.0 <= summary["categories"][cat] <= 100.0
        assert summary["categories"][cat] == pytest.approx(100.0 * sum(got) / 15)
    assert summary["average_score"] == pytest.approx(sum(summary["categories"].values()) / 9)
    assert all(0.0 <= float(r[k]) <= 1.0 for r in rows for k in ("prob1_img1", "prob2_img1"))
    # Upstream's decision rule, checked row by row from the written probabilities.
    for r in rows:
        assert int(r["pred1"]) == (1 if float(r["prob1_img1"]) > 0.5 else 2)


def test_compare_loads_paths(tiny_models, tmp_path):
    data = write_mmvp(tmp_path / "small", plain_specs(18))
    res = run_compare(str(tiny_models["clip"]), str(tiny_models["siglip"]), tmp_path / "cmp", mmvp_data=data,
                      allow_partial=True, n_resamples=50, print_table=False)
    avg = res["rows"][0]
    assert avg["metric"] == "MMVP-VLM average" and avg["n"] == 18
    assert avg["delta"] == pytest.approx(avg["after"] - avg["before"])
    assert (tmp_path / "cmp" / "before" / "mmvp" / "mmvp_summary.json").is_file()
    assert json.loads((tmp_path / "cmp" / "after" / "mmvp" / "mmvp_summary.json").read_text())["family"] == "siglip"


# ----------------------------------------------------------------------------- (d) data errors

def test_mmvp_missing_column(tmp_path):
    data = write_mmvp(tmp_path / "d", plain_specs(2), header=("Question ID", "Kind", "Statement"))
    with pytest.raises(DataError, match=r"Questions\.csv.*missing column 'Type'"):
        run_mmvp(mmvp_fake(), data)


def test_mmvp_odd_rows(tmp_path):
    data = write_mmvp(tmp_path / "d", plain_specs(2))
    lines = (data / "Questions.csv").read_text().splitlines()
    (data / "Questions.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"Questions\.csv' has 3 rows, an odd number"):
        run_mmvp(mmvp_fake(), data, allow_partial=True)


def test_mmvp_layout_needs_allow_partial(tmp_path):
    data = write_mmvp(tmp_path / "d", plain_specs(18))
    with pytest.raises(DataError, match=r"18 pairs .*9 categories x 15 pairs = 135"):
        run_mmvp(mmvp_fake(), data)
    res = run_mmvp(mmvp_fake(), data, allow_partial=True)
    # Categories stay positional: 15 pairs in the first, 3 in the second, none elsewhere.
    assert res["pairs_per_category"][CATEGORIES[0]] == 15 and res["pairs_per_category"][CATEGORIES[1]] == 3
    assert res["categories"][CATEGORIES[2]] is None
    assert res["average_score"] == 100.0


def test_mmvp_missing_image(plain_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(plain_data, data)
    gone = data / "MLLM_VLM Images" / "type2" / "62.jpg"     # pair 30, category 3
    gone.unlink()
    with pytest.raises(DataError, match=re.escape(f"missing image file '{gone}'")):
        run_mmvp(mmvp_fake(), data)
    res = run_mmvp(mmvp_fake(), data, tmp_path / "out", allow_partial=True)
    assert res["n_pairs"] == 134 and res["pairs_per_category"][CATEGORIES[2]] == 14
    assert res["skipped"] == [{"pair": 30, "qid1": 61, "qid2": 62, "reason": f"missing image file '{gone}'"}]
    assert json.loads((tmp_path / "out" / "mmvp_summary.json").read_text())["skipped"][0]["pair"] == 30


def test_mmvp_corrupt_image(plain_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(plain_data, data)
    bad = data / "MLLM_VLM Images" / "type0" / "1.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=re.escape(f"unreadable image '{bad}'")):
        run_mmvp(mmvp_fake(), data)
    assert run_mmvp(mmvp_fake(), data, allow_partial=True)["skipped"][0]["pair"] == 0


# ----------------------------------------------------------------------------- (e) statistics

def test_mcnemar_exact_values():
    assert mcnemar_counts(10, 2).p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)   # 0.03857
    assert mcnemar_counts(10, 2).p_value == pytest.approx(0.0386, abs=5e-5)
    assert mcnemar_counts(0, 0).p_value == 1.0
    assert mcnemar_counts(5, 5).p_value == 1.0
    assert mcnemar_counts(0, 6).p_value == pytest.approx(2 / 64)
    assert binom_two_sided_p(2, 12) == binom_two_sided_p(10, 12)
    before = [True] * 10 + [False] * 2 + [True] * 7 + [False] * 3
    after = [False] * 10 + [True] * 2 + [True] * 7 + [False] * 3
    t = mcnemar_exact(before, after)
    assert (t.b, t.c) == (10, 2) and t.p_value == pytest.approx(0.0385742, abs=1e-6)


def test_bootstrap_ci():
    x = [0.0] * 50 + [1.0] * 50
    ci = bootstrap_ci(x, n_resamples=1000, seed=0)
    assert ci.estimate == 0.5 and ci.n_resamples == 1000
    # Normal approximation: 0.5 -/+ 1.96 * sqrt(0.25 / 100) = [0.402, 0.598].
    assert 0.37 < ci.low < 0.44 and 0.56 < ci.high < 0.63
    assert bootstrap_ci(x, seed=0) == ci and bootstrap_ci(x, seed=1) != ci
    assert bootstrap_ci([3.0] * 7).low == 3.0 == bootstrap_ci([3.0] * 7).high
    # Stratified: the statistic is the mean of stratum means, and constant strata do not vary.
    st = bootstrap_ci([1, 1, 1, 1, 0, 0], strata=["a"] * 4 + ["b"] * 2)
    assert (st.estimate, st.low, st.high) == (0.5, 0.5, 0.5)
    d = paired_bootstrap_ci([0, 0, 1, 1], [1, 1, 1, 1], n_resamples=200)
    assert d.estimate == 0.5 and 0.0 <= d.low <= 0.5 <= d.high <= 1.0
    with pytest.raises(ValueError):
        paired_bootstrap_ci([0, 1], [1])


# ----------------------------------------------------------------------------- (f) zero-shot

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def colour_image_fn(im):
    rgb = im.getpixel((4, 4))
    return [1.0 if v == max(rgb) else 0.0 for v in rgb]


def colour_text_fn(text):
    return next([1.0 if i == k else 0.0 for i in range(3)] for k, c in enumerate(COLOURS) if c in text)


def write_zeroshot(root: Path) -> Path:
    for name, rgb in COLOURS.items():
        for i in range(3):
            sub = root / name / ("nested" if i == 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), rgb).save(sub / f"{i}.png")
    Image.new("RGB", (8, 8), COLOURS["green"]).save(root / "red" / "misfiled.png")   # a known miss
    (root / "blue" / "broken.png").write_bytes(b"junk")                               # skipped, counted
    return root


def test_zeroshot_known_answers(tmp_path):
    data = write_zeroshot(tmp_path / "zs")
    enc = FakeEncoder(colour_image_fn, colour_text_fn)
    res = run_zeroshot(enc, data, tmp_path / "out", batch_size=4)
    assert res["n_images"] == 10 and res["n_classes"] == 3 and len(res["skipped"]) == 1
    assert "broken.png" in res["skipped"][0]
    assert res["top1"] == pytest.approx(90.0) and res["top5"] == 100.0 and res["top_k_effective"] == 3
    assert res["per_class_top1"] == pytest.approx({"blue": 100.0, "green": 100.0, "red": 75.0})
    miss = [r for r in res["items"] if not r["top1"]]
    assert len(miss) == 1 and miss[0]["path"].endswith("misfiled.png") and miss[0]["pred"] == "green"
    assert sum(enc.text_batches) == 3 * 5        # classes x default templates, encoded once
    assert json.loads((tmp_path / "out" / "zeroshot_summary.json").read_text())["top1"] == pytest.approx(90.0)


def test_zeroshot_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        run_zeroshot(FakeEncoder(colour_image_fn, colour_text_fn), tmp_path / "empty")
    (tmp_path / "one" / "red").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "one" / "red" / "a.png")
    with pytest.raises(DataError, match="at least 2 sub-folders"):
        run_zeroshot(FakeEncoder(colour_image_fn, colour_text_fn), tmp_path / "one")
    with pytest.raises(DataError, match="exactly one"):
        run_zeroshot(FakeEncoder(colour_image_fn, colour_text_fn), tmp_path / "one", templates=["no slot"])


# ----------------------------------------------------------------------------- (g) retrieval

GREY = (128, 128, 128)


def onehot4_image_fn(im):
    rgb = im.getpixel((2, 2))
    return [0.0, 0.0, 0.0, 1.0] if rgb == GREY else colour_image_fn(im) + [0.0]


def onehot4_text_fn(text):
    return [0.0, 0.0, 0.0, 1.0] if "grey" in text else colour_text_fn(text) + [0.0]


def write_retrieval(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    for name, rgb in {**COLOURS, "grey": GREY}.items():
        Image.new("RGB", (8, 8), rgb).save(root / "img" / f"{name}.png")
    rows = [("img/red.png", "a red thing"), ("img/green.png", "a green thing"), ("img/red.png", "red again"),
            ("img/blue.png", "mislabelled as red"), ("img/grey.png", "a grey thing")]
    with open(root / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "text"])
        w.writerows(rows)
    return root / "caps.csv"


def test_retrieval_recall(tmp_path):
    caps = write_retrieval(tmp_path)
    enc = FakeEncoder(onehot4_image_fn, onehot4_text_fn)
    res = run_retrieval(enc, caps, tmp_path / "out", image_column="file", caption_column="text", batch_size=3)
    # i->t: red (own captions score 1, but "mislabelled as red" ties: rank 1), green 0,
    # blue (own caption scores 0, all 4 others >= 0: rank 4), grey 0.
    assert [r["rank"] for r in res["items"]["image_to_text"]] == [1, 0, 4, 0]
    assert res["image_to_text"] == pytest.approx({"R@1": 50.0, "R@5": 100.0, "R@10": 100.0})
    # t->i: only "mislabelled as red" misses: red scores 1 > 0, green and grey tie at 0: rank 3.
    assert [r["rank"] for r in res["items"]["text_to_image"]] == [0, 0, 0, 3, 0]
    assert res["text_to_image"] == pytest.approx({"R@1": 80.0, "R@5": 100.0, "R@10": 100.0})
    assert res["n_images"] == 4 and sum(enc.image_batches) == 4       # red.png encoded once
    assert (tmp_path / "out" / "retrieval_summary.json").is_file()
    # The same data as JSONL with a list of captions per image gives the same image->text ranks.
    jl = tmp_path / "caps.jsonl"
    jl.write_text("\n".join(json.dumps(o) for o in [
        {"image": "img/red.png", "caption": ["a red thing", "red again"]}, {"image": "img/green.png", "caption": "a green thing"},
        {"image": "img/blue.png", "caption": "mislabelled as red"}, {"image": "img/grey.png", "caption": "a grey thing"}]))
    res2 = run_retrieval(FakeEncoder(onehot4_image_fn, onehot4_text_fn), jl)
    assert [r["rank"] for r in res2["items"]["image_to_text"]] == [1, 0, 4, 0]


def test_retrieval_errors(tmp_path):
    caps = write_retrieval(tmp_path)
    enc = FakeEncoder(onehot4_image_fn, onehot4_text_fn)
    with pytest.raises(DataError, match=r"caps\.csv': missing column 'image'"):
        run_retrieval(enc, caps)
    (tmp_path / "img" / "green.png").unlink()
    with pytest.raises(DataError, match=r"row 2: missing image file .*green\.png"):
        run_retrieval(enc, caps, image_column="file", caption_column="text")
    res = run_retrieval(enc, caps, image_column="file", caption_column="text", allow_partial=True)
    assert res["n_images"] == 3 and res["n_captions"] == 4 and "green.png" in res["skipped"][0]


# ----------------------------------------------------------------------------- (h) compare report

def test_compare_report(tmp_path, capsys):
    mmvp = write_mmvp(tmp_path / "mmvp", plain_specs())
    zs = write_zeroshot(tmp_path / "zs")
    # 5-d embeddings: [first, second] for the MMVP fixture (32 px), [r, g, b] for zero-shot (8 px).
    def image_fn(im):
        return position_image_fn(im) + [0.0] * 3 if im.size == (32, 32) else [0.0, 0.0] + colour_image_fn(im)

    def text_fn(tie):
        def fn(t):
            if any(k in t for k in KEYS):
                return (KEYS["TIE"] if tie else keyword_text_fn(t)) + [0.0] * 3
            return [0.0, 0.0] + colour_text_fn(t)
        return fn

    bad, good = FakeEncoder(image_fn, text_fn(True)), FakeEncoder(image_fn, text_fn(False))   # ties: all wrong
    res = run_compare(bad, good, tmp_path / "cmp", mmvp_data=mmvp, zeroshot_data=zs, n_resamples=200)
    rows = {r["metric"]: r for r in res["rows"]}
    avg = rows["MMVP-VLM average"]
    assert (avg["before"], avg["after"], avg["delta"]) == (0.0, 100.0, 100.0)
    assert (avg["b"], avg["c"], avg["n"]) == (0, 135, 135)
    assert avg["p_value"] == pytest.approx(2 * 0.5 ** 135) and avg["ci_low"] == avg["ci_high"] == 100.0
    assert rows[f"MMVP {CATEGORIES[4]}"]["p_value"] == pytest.approx(2 * 0.5 ** 15)
    assert "zero-shot top1" in rows and "zero-shot top5" in rows
    printed = capsys.readouterr().out
    assert "MMVP-VLM average" in printed and "+100.00" in printed
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| MMVP-VLM average | 0.00 | 100.00 | +100.00 | [+100.00, +100.00] | <1e-4 | 135 |" in md
    assert "![MMVP-VLM per category](mmvp_before_after.png)" in md
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "MMVP-VLM average" in html and "zero-shot top1" in html
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 2 and all(base64.b64decode(u)[:4] == b"\x89PNG" for u in uris)
    assert 'src="mmvp' not in html                                       # nothing linked outside the file
    with pytest.raises(DataError, match="nothing to evaluate"):
        run_compare(bad, good, tmp_path / "none")
