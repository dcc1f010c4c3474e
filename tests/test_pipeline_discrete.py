"""The discrete variant end to end through the CLI: VQ tokenizer -> Perceiver stage 1 -> stage 2."""

import math
import subprocess
import sys

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    for i in range(24):
        im = Image.new("RGB", (40, 36), (i * 10 % 255, 200 - i * 7, (i * 37) % 255))
        im.paste((255, 255, 255), (i % 20, 5, i % 20 + 8, 13))
        im.save(d / f"{i}.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "genhancer.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    return r


def test_discrete_pipeline_and_codebook_mismatch(tmp_path, imgs, tiny_clip_dir):
    vq16, vq32 = tmp_path / "vq16", tmp_path / "vq32"
    for out, k in ((vq16, 16), (vq32, 32)):
        r = _cli("tokenizer", "train", "--data", imgs, "--out", out, "--image-size", 32, "--codebook-size", k,
                 "--codebook-dim", 8, "--steps", 30, "--batch-size", 8)
        assert r.returncode == 0, r.stderr
        assert "PSNR" in r.stdout and "skipped 1 image" in r.stdout
    common = ["-c", "tiny-discrete", f"encoder.name_or_path={tiny_clip_dir}", f"data.path={imgs}",
              "data.batch_size=4", "--no-progress"]
    r = _cli("train", *common, f"tokenizer.name_or_path={vq16}", f"train.output_dir={tmp_path / 's1'}",
             "train.steps=3", "train.log_every=1")
    assert r.returncode == 0, r.stderr
    first = float((tmp_path / "s1" / "log.csv").read_text().splitlines()[1].split(",")[1])
    # Cross-entropy of an untrained predictor over 16 codes starts near log(16).
    assert abs(first - math.log(16)) < 1.0
    r = _cli("sample", tmp_path / "s1", imgs, "--out", tmp_path / "grid.png", "--max-images", 2, "--seeds", 2)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "grid.png").size[1] > Image.open(tmp_path / "grid.png").size[0] / 3
    # Stage 2 initialised from a denoiser that predicts 16 codes, with a 32-code tokenizer.
    r = _cli("train", *common, f"tokenizer.name_or_path={vq32}", f"train.output_dir={tmp_path / 's2'}",
             "train.stage=2", f"train.init_from={tmp_path / 's1'}", "train.steps=1")
    assert r.returncode == 2
    assert "shape" in r.stderr and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
