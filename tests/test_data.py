"""Data layer: image decoding, paired views, sources, sharding, resume, error messages."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import random
import tarfile
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from genhancer.config import DataConfig
from genhancer.data import source_base
from genhancer.data.images import BadImage, SkipCounter, load_image
from genhancer.data.loader import _one_line, make_loader
from genhancer.data.sources import (
    CsvSource,
    FolderSource,
    HFSource,
    JsonlSource,
    WebDatasetSource,
    build_source,
)
from genhancer.data.transforms import PairedViews
from genhancer.errors import DataError

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's processor values
STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- fixtures


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


GOOD = [f"good{i}.jpg" for i in range(6)] + ["sub/good6.png", "sub/deeper/good7.webp"]
BAD = {"corrupt.jpg": "corrupt", "truncated.jpg": "truncated", "empty.png": "zero-byte"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """8 good images (with captions for the jpgs) and 3 bad ones, plus noise files."""
    root = tmp_path_factory.mktemp("folder")
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, name in enumerate(GOOD):
        Image.fromarray(_noise(24 + i, 30, i)).save(root / name)
        if name.endswith(".jpg"):
            (root / name).with_suffix(".txt").write_text(f"caption {i}\n")
    (root / "corrupt.jpg").write_bytes(b"<html>404 not found</html>")
    full = _jpeg_bytes(_noise(64, 64, 99))
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.md").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(full)
    return root


@pytest.fixture(scope="module")
def odd_modes(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("modes")
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(d / "cmyk.jpg")  # pure red in CMYK
    rgba = Image.new("RGBA", (12, 8), (255, 0, 0, 0))  # transparent red ...
    rgba.paste((0, 0, 255, 255), (6, 0, 12, 8))  # ... beside opaque blue
    rgba.save(d / "rgba.png")
    Image.new("LA", (7, 5), (0, 0)).save(d / "la.png")  # transparent black
    pal = Image.new("P", (8, 6), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (4, 0, 8, 6))
    pal.save(d / "palette.png", transparency=0)  # index 0 (red) is transparent
    g16 = np.full((10, 12), 65535, np.uint16)
    g16[:, :6] = 32896  # 32896 / 257 = 128
    Image.fromarray(g16).save(d / "gray16.png")
    Image.fromarray(np.full((9, 11), 77, np.uint8), "L").save(d / "gray.png")
    frames = [Image.new("P", (9, 7), i) for i in range(2)]
    for f in frames:
        f.putpalette([0, 0, 255, 255, 255, 0] + [0] * 762)
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(_noise(256, 320, 1)).save(d / "big.jpg")
    Image.fromarray(_noise(256, 320, 1)).save(d / "big.png")
    return d


@pytest.fixture(scope="module")
def tables(tmp_path_factory, folder) -> dict[str, Path]:
    """CSV and JSONL next to a copy of the folder's images (relative paths), one bad row."""
    d = tmp_path_factory.mktemp("tables")
    (d / "imgs").mkdir()
    rows = []
    for i in range(7):
        Image.fromarray(_noise(20, 20 + i, 50 + i)).save(d / "imgs" / f"{i}.png")
        rows.append({"filepath": f"imgs/{i}.png", "title": f"t{i}"})
    rows.append({"filepath": "imgs/missing.png", "title": "gone"})
    with open(d / "index.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["filepath", "title"])
        w.writeheader()
        w.writerows(rows)
    (d / "index.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return {"csv": d / "index.csv", "jsonl": d / "index.jsonl"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """3 img2dataset-style shards of 4 samples; one sample has corrupt image bytes."""
    import webdataset as wds

    d = tmp_path_factory.mktemp("shards")
    n = 0
    for s in range(3):
        with wds.TarWriter(str(d / f"{s:05d}.tar")) as tw:
            for _ in range(4):
                key = f"{s:05d}{n:04d}"
                jpg = b"garbage" if n == 5 else _jpeg_bytes(_noise(16, 16, n))
                sample = {"__key__": key, "jpg": jpg}
                if n % 2:
                    sample["json"] = {"caption": f"json caption {n}", "url": "http://x"}
                else:
                    sample["txt"] = f"txt caption {n}"
                tw.write(sample)
                n += 1
    return d


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    import datasets

    d = tmp_path_factory.mktemp("hf") / "ds"
    imgs = [{"bytes": _jpeg_bytes(_noise(16, 18, i)), "path": None} for i in range(6)]
    imgs.append({"bytes": b"\x89PNG broken", "path": None})
    feats = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": imgs, "caption": [f"c{i}" for i in range(7)]}, features=feats)
    ds.save_to_disk(str(d))
    return d


def _make(kind: str, paths: dict, **kw):
    if kind == "folder":
        return FolderSource(paths["folder"], **kw)
    if kind == "csv":
        return CsvSource(paths["csv"], "filepath", "title", **kw)
    if kind == "jsonl":
        return JsonlSource(paths["jsonl"], "filepath", "title", **kw)
    if kind == "webdataset":
        return WebDatasetSource(str(paths["shards"] / "{00000..00002}.tar"), shuffle_buffer=5, **kw)
    return HFSource(paths["hf"], "image", "caption", **kw)


@pytest.fixture(scope="module")
def paths(folder, tables, shards, hf_dir) -> dict:
    return {"folder": folder, **tables, "shards": shards, "hf": hf_dir}


# good keys and skip counts each source must produce
EXPECTED = {
    "folder": (set(GOOD), {"corrupt": 1, "truncated": 1, "zero-byte": 1}),
    "csv": ({f"imgs/{i}.png" for i in range(7)}, {"missing": 1}),
    "jsonl": ({f"imgs/{i}.png" for i in range(7)}, {"missing": 1}),
    "webdataset": ({f"{k // 4:05d}/{k // 4:05d}{k:04d}" for k in range(12) if k != 5}, {"corrupt": 1}),
    "hf": ({str(i) for i in range(6)}, {"corrupt": 1}),
}
KINDS = list(EXPECTED)


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("name, size, probes", [
    ("cmyk.jpg", (20, 10), {(5, 5): (255, 0, 0)}),
    ("rgba.png", (12, 8), {(1, 1): (255, 255, 255), (9, 1): (0, 0, 255)}),
    ("la.png", (7, 5), {(3, 3): (255, 255, 255)}),
    ("palette.png", (8, 6), {(1, 1): (255, 255, 255), (6, 1): (0, 255, 0)}),
    ("gray16.png", (12, 10), {(0, 0): (128, 128, 128), (11, 0): (255, 255, 255)}),
    ("gray.png", (11, 9), {(2, 2): (77, 77, 77)}),
    ("anim.gif", (9, 7), {(0, 0): (0, 0, 255)}),  # first frame
])
def test_load_image_converts_to_rgb(odd_modes, name, size, probes):
    im = load_image(odd_modes / name)
    assert im.mode == "RGB" and im.size == size
    for xy, rgb in probes.items():
        assert np.abs(np.subtract(im.getpixel(xy), rgb)).max() <= 2, (name, xy, im.getpixel(xy))


def test_load_image_from_bytes_and_16bit_scaling(odd_modes):
    im = load_image((odd_modes / "gray16.png").read_bytes())
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (128, 128, 128)


def test_large_jpeg_is_drafted_down_and_large_png_refused(odd_modes):
    im = load_image(odd_modes / "big.jpg", max_pixels=10_000)
    # 320x256 at 1/4 scale: the first JPEG draft scale that fits 10k pixels
    assert im.mode == "RGB" and im.size == (80, 64)
    assert load_image(odd_modes / "big.jpg", max_pixels=10**6).size == (320, 256)
    with pytest.raises(BadImage) as e:
        load_image(odd_modes / "big.png", max_pixels=10_000)
    assert e.value.reason == "too-large" and "big.png" in str(e.value)


@pytest.mark.parametrize("name, reason", sorted(BAD.items()))
def test_bad_images_raise_with_reason(folder, name, reason):
    with pytest.raises(BadImage) as e:
        load_image(folder / name)
    assert e.value.reason == reason and name in str(e.value)
    assert isinstance(e.value, DataError) and "\n" not in str(e.value)


def test_bad_bytes_and_missing_file(tmp_path):
    with pytest.raises(BadImage, match="zero-byte"):
        load_image(b"")
    with pytest.raises(BadImage) as e:
        load_image(tmp_path / "nope.jpg")
    assert e.value.reason == "missing"


def test_skip_counter_merge_summary_pickle():
    a = SkipCounter()
    a.add("corrupt", "x.jpg")
    a.add("corrupt", "y.jpg")
    b = pickle.loads(pickle.dumps(SkipCounter({"zero-byte": 1})))  # workers get copies
    a.merge(b)
    assert a.summary() == "skipped 3 images: 2 corrupt, 1 zero-byte"
    assert a.total == 3 and a.examples()["corrupt"] == ["x.jpg", "y.jpg"]
    a.merge({"too-large": 2})
    assert a.counts() == {"corrupt": 2, "zero-byte": 1, "too-large": 2}
    assert SkipCounter().summary() == "skipped 0 images"


# ----------------------------------------------------------------------------- views


def _quadrants(w: int = 200, h: int = 160) -> Image.Image:
    """Four flat colours, one per quadrant, split off-centre so any crop shows its position."""
    arr = np.zeros((h, w, 3), np.uint8)
    cx, cy = int(w * 0.4), int(h * 0.6)
    arr[:cy, :cx] = (230, 20, 20)
    arr[:cy, cx:] = (20, 230, 20)
    arr[cy:, :cx] = (20, 20, 230)
    arr[cy:, cx:] = (230, 230, 20)
    return Image.fromarray(arr)


def test_paired_views_shapes_ranges_and_normalisation():
    views = PairedViews(32, MEAN, STD, 16)
    out = views(Image.new("RGB", (50, 40), (128, 128, 128)), random.Random(0))
    assert out["pixel_values"].shape == (3, 32, 32) and out["gen_pixels"].shape == (3, 16, 16)
    expect = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out["pixel_values"].mean((1, 2)), expect, atol=1e-4)
    assert torch.allclose(out["gen_pixels"], torch.full((3, 16, 16), 128 / 255 * 2 - 1), atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_paired_views_come_from_the_same_crop(seed):
    img = _quadrants()
    views = PairedViews(64, MEAN, STD, 32, scale=(0.25, 1.0))
    out = views(img, random.Random(seed))
    enc = views.unnormalize(out["pixel_values"])  # [3,64,64] in [0,1]
    gen = (out["gen_pixels"] + 1) / 2  # [3,32,32]
    enc_small = F.interpolate(enc[None], size=32, mode="area")[0]
    same = (enc_small - gen).abs().mean().item()
    assert same < 0.02, same
    # Control: a different crop of the same image is visibly different, so the check above
    # could fail if the views were cropped independently.
    other = PairedViews(32, MEAN, STD, 32, scale=(0.25, 1.0))(img, random.Random(seed + 100))
    diff = ((other["gen_pixels"] + 1) / 2 - gen).abs().mean().item()
    assert diff > 5 * same


def test_eval_views_center_crop_both():
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :20] = 255  # white strips outside the centred 40x40 square
    arr[:, 60:] = 255
    views = PairedViews(16, (0, 0, 0), (1, 1, 1), 8, train=False)
    out = views(Image.fromarray(arr))
    assert out["pixel_values"].abs().max() < 0.02  # only black remains
    assert (out["gen_pixels"] + 1).abs().max() < 0.04
    assert views.crop_box(80, 40) == (20, 0, 60, 40)


def test_crop_box_is_deterministic_given_a_seed():
    views = PairedViews(32, MEAN, STD, 32, scale=(0.3, 1.0))
    boxes = [views.crop_box(300, 200, random.Random(7)) for _ in range(2)]
    assert boxes[0] == boxes[1]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert views.crop_box(300, 200, g1) == views.crop_box(300, 200, g2)
    many = {views.crop_box(300, 200, random.Random(s)) for s in range(20)}
    assert len(many) > 10  # the box really is random across seeds
    for left, top, right, bottom in many:
        frac = (right - left) * (bottom - top) / (300 * 200)
        assert 0.3 - 0.02 <= frac <= 1.0 and 0 <= left < right <= 300 and 0 <= top < bottom <= 200


# ----------------------------------------------------------------------------- sources


@pytest.mark.parametrize("kind", KINDS)
def test_source_yields_good_images_and_counts_bad(paths, kind):
    src = _make(kind, paths)
    samples = list(src)
    keys = [s["key"] for s in samples]
    good, skipped = EXPECTED[kind]
    assert sorted(keys) == sorted(good)
    assert src.skipped.counts() == skipped
    assert all(s["image"].mode == "RGB" and isinstance(s["text"], str) for s in samples)
    assert src.epoch == 1 and src.position == 0  # a full pass moves to the next epoch


def test_captions(paths):
    folder = {s["key"]: s["text"] for s in _make("folder", paths)}
    assert folder["good3.jpg"] == "caption 3" and folder["sub/good6.png"] == ""
    csv_ = {s["key"]: s["text"] for s in _make("csv", paths)}
    assert csv_["imgs/2.png"] == "t2"
    wds_ = {s["key"]: s["text"] for s in _make("webdataset", paths)}
    assert wds_["00000/000000000"] == "txt caption 0" and wds_["00000/000000001"] == "json caption 1"
    hf = {s["key"]: s["text"] for s in _make("hf", paths)}
    assert hf["4"] == "c4"


def _fake_worker(monkeypatch, wid: int, num: int) -> None:
    monkeypatch.setattr(source_base, "get_worker_info", lambda: SimpleNamespace(id=wid, num_workers=num))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block", [1, 3])
def test_two_ranks_two_workers_disjoint_and_complete(paths, kind, block, monkeypatch):
    seen = []
    for rank in range(2):
        for wid in range(2):
            _fake_worker(monkeypatch, wid, 2)
            src = _make(kind, paths, rank=rank, world_size=2, seed=5)
            src.block_size = block
            seen += [s["key"] for s in src]
    assert len(seen) == len(set(seen))  # no duplicates
    assert set(seen) == EXPECTED[kind][0]  # nothing lost


def test_webdataset_more_ranks_than_shards_still_disjoint_and_complete(paths):
    seen = []
    for rank in range(4):  # 3 shards, 4 ranks: samples are split, not shards
        seen += [s["key"] for s in _make("webdataset", paths, rank=rank, world_size=4)]
    assert len(seen) == len(set(seen)) and set(seen) == EXPECTED["webdataset"][0]


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_shuffle_is_seeded_per_epoch(paths, kind):
    def order(seed, epoch):
        src = _make(kind, paths, seed=seed)
        src.set_epoch(epoch)
        return [s["key"] for s in src]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    assert sorted(order(1, 0)) == sorted(order(1, 1))
    unshuffled = [s["key"] for s in _make(kind, paths, shuffle=False)]
    assert unshuffled == [s["key"] for s in _make(kind, paths, shuffle=False)]


def test_direct_iteration_resume(paths):
    full = [s["key"] for s in _make("csv", paths, seed=3)]
    src = _make("csv", paths, seed=3)
    it = iter(src)
    first = [next(it)["key"] for _ in range(3)]
    state = src.state_dict()
    again = _make("csv", paths, seed=3)
    again.load_state_dict(state)
    rest = [s["key"] for s in again]
    assert first + rest == full
    assert again.state_dict()["epoch"] == 1


# ----------------------------------------------------------------------------- loader


def _views() -> PairedViews:
    return PairedViews(16, MEAN, STD, 8, scale=(0.5, 1.0))


def _batches(loader):
    return [(b["key"], b["pixel_values"], b["gen_pixels"]) for b in loader]


def test_loader_batches_shapes_and_counts(paths):
    src = _make("folder", paths, seed=1)
    loader = make_loader(src, _views(), batch_size=4, num_workers=0, seed=0)
    batches = list(loader)
    assert sum(len(b["key"]) for b in batches) == 8 and all(1 <= len(b["key"]) <= 4 for b in batches)
    # batches hand out the rank sequence in order: the same order as iterating the source
    assert [k for b in batches for k in b["key"]] == [s["key"] for s in _make("folder", paths, seed=1)]
    b = batches[0]
    assert b["pixel_values"].shape == (len(b["key"]), 3, 16, 16) and b["gen_pixels"].shape[1:] == (3, 8, 8)
    assert isinstance(b["text"], list) and len(b["text"]) == len(b["key"])
    assert src.skipped.summary() == "skipped 3 images: 1 corrupt, 1 truncated, 1 zero-byte"
    assert loader.state_dict()["epoch"] == 1


def test_loader_same_batches_for_any_worker_count(paths):
    """2 real worker processes give exactly the batches (keys, crops) of 0 workers."""
    runs = []
    for workers in (0, 2):
        src = _make("webdataset", paths, seed=4)
        runs.append(_batches(make_loader(src, _views(), batch_size=3, num_workers=workers, seed=9)))
        assert src.skipped.counts() == {"corrupt": 1}  # counts come back from the workers
    assert [k for k, _, _ in runs[0]] == [k for k, _, _ in runs[1]]
    for (_, p0, g0), (_, p1, g1) in zip(*runs):
        assert torch.equal(p0, p1) and torch.equal(g0, g1)
    other = _batches(make_loader(_make("webdataset", paths, seed=4), _views(), 3, 0, seed=10))
    assert not torch.equal(other[0][1], runs[0][0][1])  # the crop seed matters


def test_loader_resume_skips_exactly(paths):
    full = _batches(make_loader(_make("hf", paths, seed=2), _views(), 2, 0, seed=1))
    src = _make("hf", paths, seed=2)
    loader = make_loader(src, _views(), 2, 0, seed=1)
    head = []
    for batch in loader:
        head.append((batch["key"], batch["pixel_values"], batch["gen_pixels"]))
        if len(head) == 2:
            break
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["position"] == 4
    resumed_src = _make("hf", paths, seed=2)
    resumed = make_loader(resumed_src, _views(), 2, 0, seed=1)
    resumed.load_state_dict(state)
    tail = _batches(resumed)
    assert [k for k, _, _ in head + tail] == [k for k, _, _ in full]
    for (_, p, g), (_, fp, fg) in zip(head + tail, full):
        assert torch.equal(p, fp) and torch.equal(g, fg)
    # the next pass is epoch 1, a different order of the same items
    assert resumed_src.epoch == 1
    nxt = [k for ks, _, _ in _batches(resumed) for k in ks]
    flat = [k for ks, _, _ in full for k in ks]
    assert sorted(nxt) == sorted(flat) and nxt != flat


def test_set_epoch_does_not_undo_resume(paths):
    src = _make("folder", paths)
    src.load_state_dict({"epoch": 3, "position": 5, "world_size": 1})
    src.set_epoch(3)
    assert src.state_dict()["position"] == 5
    src.set_epoch(4)
    assert (src.epoch, src.position) == (4, 0)


# ----------------------------------------------------------------------------- errors


def _cfg(kind: str, path, **kw) -> DataConfig:
    return DataConfig(kind=kind, path=str(path), **kw)


@pytest.mark.parametrize("kind", ["folder", "csv", "jsonl", "webdataset", "hf"])
def test_missing_path(tmp_path, kind):
    p = tmp_path / ("x.tar" if kind == "webdataset" else "nope")
    with pytest.raises(DataError) as e:
        build_source(_cfg(kind, p))
    assert str(e.value) == f"data.path: '{p}' does not exist"


def test_empty_dataset(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as e:
        build_source(_cfg("folder", tmp_path))
    assert str(e.value) == f"data.path: no images found in '{tmp_path}'"
    (tmp_path / "empty.csv").write_text("image,text\n")
    with pytest.raises(DataError, match="no images found in '.*empty.csv'"):
        build_source(_cfg("csv", tmp_path / "empty.csv"))
    shard_dir = tmp_path / "noshards"
    shard_dir.mkdir()
    with pytest.raises(DataError, match="no images found in"):
        build_source(_cfg("webdataset", shard_dir))


def test_missing_column(paths):
    for kind in ("csv", "jsonl"):
        with pytest.raises(DataError) as e:
            build_source(_cfg(kind, paths[kind], image_column="url"))
        msg = str(e.value)
        assert str(paths[kind]) in msg and "'url'" in msg and "data.image_column" in msg and "filepath" in msg
    with pytest.raises(DataError, match=r"no column 'img' \(data.image_column\)"):
        build_source(_cfg("hf", paths["hf"], image_column="img"))
    # An explicitly named caption column must exist; the default one is optional.
    with pytest.raises(DataError, match=r"index.csv: no column 'alt' \(data.text_column\)"):
        build_source(_cfg("csv", paths["csv"], image_column="filepath", text_column="alt"))
    src = build_source(_cfg("csv", paths["csv"], image_column="filepath"))
    assert all(s["text"] == "" for s in src)


def test_imageless_shard(tmp_path):
    import webdataset as wds

    shard = tmp_path / "meta-000.tar"
    with wds.TarWriter(str(shard)) as tw:
        tw.write({"__key__": "000", "txt": "a caption without its image"})
    with pytest.raises(DataError) as e:
        build_source(_cfg("webdataset", shard))
    assert f"shard '{shard}' holds no images" in str(e.value)


def test_worker_errors_become_one_line():
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback:\n  File x\n"
                        "genhancer.errors.DataError: data.path: shard 'a.tar' holds no images")
    assert _one_line(wrapped) == "data.path: shard 'a.tar' holds no images"


def test_not_a_tar_shard(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(DataError, match="bad.tar' is not a readable tar file"):
        build_source(_cfg("webdataset", bad))
    assert tarfile.is_tarfile(bad) is False


def test_world_size_change_restarts_the_epoch(paths, caplog):
    src = _make("folder", paths, rank=0, world_size=2)
    src.load_state_dict({"epoch": 2, "position": 3, "world_size": 4})
    assert (src.epoch, src.position) == (2, 0)
    assert "world_size 4" in caplog.text


def test_not_a_saved_dataset(paths):
    with pytest.raises(DataError, match="is not a dataset written by save_to_disk"):
        build_source(_cfg("hf", paths["csv"].parent))


def test_truncated_shard_is_counted_not_fatal(tmp_path, shards):
    data = (shards / "00001.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: int(len(data) * 0.6)])
    src = WebDatasetSource(str(tmp_path / "cut.tar"))
    keys = [s["key"] for s in src]
    assert 0 < len(keys) < 4
    assert src.skipped.counts().get("bad-shard") == 1
    loader_src = WebDatasetSource(str(tmp_path / "cut.tar"))
    batches = list(make_loader(loader_src, _views(), 1, num_workers=2))
    assert sorted(k for b in batches for k in b["key"]) == sorted(keys)
    assert loader_src.skipped.counts().get("bad-shard") == 1  # once, not once per worker


def test_error_inside_a_worker_reaches_the_user_as_one_line(tmp_path, shards):
    """A shard that lost its images after the up-front check fails in the worker process."""
    import webdataset as wds

    for name in ("00000.tar", "00001.tar"):
        (tmp_path / name).write_bytes((shards / name).read_bytes())
    src = WebDatasetSource(str(tmp_path), shuffle=False)
    with wds.TarWriter(str(tmp_path / "00001.tar")) as tw:
        tw.write({"__key__": "x", "txt": "only a caption"})
    with pytest.raises(DataError) as e:
        list(make_loader(src, _views(), 2, num_workers=1))
    assert str(e.value) == f"data.path: shard '{tmp_path / '00001.tar'}' holds no images " \
                           f"(expected members such as 000000.jpg next to 000000.txt)"
