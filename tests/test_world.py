"""The embedded testbed's data generator: determinism, MMVP-VLM format, pair minimality,
caption statistics, hard-negative pairs, cue shares and the geometry of facings and holes."""

import csv
import dataclasses
import json
import math
import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from genhancer.demo import world as W
from genhancer.demo.world import geometry as G
from genhancer.demo.world.render import _draw_part
from genhancer.errors import DataError


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _changed_fraction(a: Image.Image, b: Image.Image, tol: int = 16) -> float:
    d = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max(-1)
    return float((d > tol).mean())


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("mmvp")
    W.write_mmvp_benchmark(out, seed=11)
    return out


def test_render_is_deterministic_and_seeded(tmp_path):
    a = W.write_corpus(tmp_path / "a", 12, seed=3).parent
    b = W.write_corpus(tmp_path / "b", 12, seed=3).parent
    c = W.write_corpus(tmp_path / "c", 12, seed=4).parent
    prefix = W.write_corpus(tmp_path / "p", 5, seed=3).parent
    rows = _read_jsonl(a / "captions.jsonl")
    assert len(rows) == 12
    assert (a / "captions.jsonl").read_bytes() == (b / "captions.jsonl").read_bytes()
    for row in rows:
        assert (a / row["image"]).read_bytes() == (b / row["image"]).read_bytes()
    # Item i does not depend on n: a smaller corpus is a prefix of a bigger one.
    assert _read_jsonl(prefix / "captions.jsonl") == rows[:5]
    # Another seed gives other scenes and other pixels.
    other = _read_jsonl(c / "captions.jsonl")
    assert [r["text"] for r in other] != [r["text"] for r in rows]
    pix = lambda root, r: np.asarray(Image.open(root / r["image"]))  # noqa: E731
    assert sum(not np.array_equal(pix(a, r), pix(c, s)) for r, s in zip(rows, other)) >= 10


def test_render_shape_and_repeatability():
    scene = W.sample_scene(random.Random(0))
    img = scene.render(48)
    assert img.size == (48, 48) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(scene.render(48)))
    assert np.asarray(scene.render(64, cue_scale=0.5)).tolist() != np.asarray(scene.render(64)).tolist()


def test_questions_csv_matches_mmvp_vlm_layout(bench):
    with open(bench / "Questions.csv", newline="") as f:
        rows = list(csv.reader(f))
    # Upstream unpacks every row into exactly three names.
    assert rows[0] == ["Question ID", "Type", "Statement"]
    body = rows[1:]
    assert len(body) == 270 and all(len(r) == 3 for r in body)
    assert [int(r[0]) for r in body] == list(range(1, 271))
    types = [t for t, _ in W.MMVP_CATEGORIES]
    assert types == [
        "Orientation and Direction", "Presence of Specific Features", "State and Condition",
        "Quantity and Count", "Positional and Relational Context", "Color and Appearance",
        "Structural Characteristics", "Texts", "Viewpoint and Perspective",
    ]  # fmt: skip
    for i, (qid, qtype, statement) in enumerate(body):
        assert qtype == types[i // 30], f"row {qid}"
        assert statement.startswith("a ") or statement.startswith("an ")
    for k in range(0, 270, 2):
        first, second = body[k], body[k + 1]
        # Both images of a pair are read from the folder of the pair's first row.
        for qid in (first[0], second[0]):
            assert (bench / "MLLM_VLM Images" / first[1] / f"{qid}.jpg").is_file()
        assert first[2] != second[2], "a pair's two statements must disagree"


def test_benchmark_pairs_differ_in_exactly_the_category_attribute(bench):
    meta = _read_jsonl(bench / "pairs.jsonl")
    assert len(meta) == 270
    changed = {}
    for k in range(0, 270, 2):
        m1, m2 = meta[k], meta[k + 1]
        s1, s2 = W.Scene.from_dict(m1["scene"]), W.Scene.from_dict(m2["scene"])
        attr = dict(W.MMVP_CATEGORIES)[m1["type"]]
        diff = [f.name for f in dataclasses.fields(W.Scene) if getattr(s1, f.name) != getattr(s2, f.name)]
        assert diff == [attr], f"pair {m1['question_id']} differs in {diff}"
        # The odd row is true of the first image, the even row of the second.
        assert m1["statement"] == s1.statement(attr) != s2.statement(attr)
        assert m2["statement"] == s2.statement(attr) != s1.statement(attr)
        assert W.is_reserved(s1) and W.is_reserved(s2)

        img1, img2 = s1.render(64), s2.render(64)
        frac = _changed_fraction(img1, img2)
        changed.setdefault(attr, []).append(frac)
        # The JPEG on disk is this scene's rendering (q95, 4:4:4: close, not exact).
        jpg = Image.open(bench / m1["image"]).convert("RGB")
        assert np.abs(np.asarray(jpg, np.int16) - np.asarray(img1, np.int16)).mean() < 3.0
    for attr, fracs in changed.items():
        # Version 3: every cue is a property of the subject and changes a large part of the
        # image (version 2's corner marks went down to 0.3 %, version 1's to 0.1 %).
        assert np.median(fracs) > 0.02, f"{attr}: a median pair differs in only {np.median(fracs):.4f} of pixels"
        assert min(fracs) > 0.004, f"{attr}: some pair differs in only {min(fracs):.4f} of pixels"
    assert set(changed) == set(W.FINE_ATTRIBUTES)


def test_corpus_captions_mention_fine_attributes_rarely(tmp_path):
    n, p = 400, 0.15
    root = W.write_corpus(tmp_path / "c", n, seed=0, fine_caption_prob=p).parent
    caps = _read_jsonl(root / "captions.jsonl")
    scenes = _read_jsonl(root / "scenes.jsonl")
    assert all(set(c) == {"image", "text"} for c in caps)
    mentioned = 0
    for cap, meta in zip(caps, scenes):
        scene = W.Scene.from_dict(meta["scene"])
        words = cap["text"].replace(",", " ").split()
        assert scene.kind in words and scene.background in words
        assert not W.is_reserved(scene), "a benchmark scene leaked into the corpus"
        fine = W.mentioned_fine_attribute(cap["text"])
        assert fine == meta["fine_mentioned"]
        if fine is not None:
            mentioned += 1
            # What a caption says about a fine attribute is true of its image.
            assert any(scene.phrase(fine, v) in cap["text"] for v in range(2))
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(mentioned / n - p) < 5 * sd, f"{mentioned}/{n} captions name a fine attribute"

    none = W.write_corpus(tmp_path / "none", 30, seed=0, fine_caption_prob=0.0).parent
    assert all(W.mentioned_fine_attribute(c["text"]) is None for c in _read_jsonl(none / "captions.jsonl"))
    every = W.write_corpus(tmp_path / "all", 30, seed=0, fine_caption_prob=1.0).parent
    assert all(W.mentioned_fine_attribute(c["text"]) for c in _read_jsonl(every / "captions.jsonl"))


def test_coarse_content_separates_a_batch():
    rng = random.Random(5)
    batch = [W.sample_scene(rng) for _ in range(128)]
    assert len({s.coarse_caption() for s in batch}) >= 100
    assert len(W.KINDS) >= 8 and len(W.BACKGROUNDS) >= 6
    # Every fine attribute varies inside a batch (so it could matter, but rarely needs to).
    for attr, values in W.FINE_ATTRIBUTES.items():
        assert {getattr(s, attr) for s in batch} == set(values), attr


def test_coarse_folder_classes_are_caption_words(tmp_path):
    out = W.write_coarse_folder(tmp_path / "zs", 3, seed=1)
    classes = sorted(p.name for p in out.iterdir())
    assert classes == sorted(W.KINDS)
    for kind in W.KINDS:
        files = sorted((out / kind).glob("*.png"))
        assert len(files) == 3
        assert Image.open(files[0]).size == (64, 64)
        assert kind in W.Scene(kind=kind, color="teal", background="sky").coarse_caption().split()


def test_probe_set_labels_every_fine_attribute(tmp_path):
    labels = W.write_probe_set(tmp_path / "probe", 200, seed=2)
    rows = _read_jsonl(labels)
    classes = json.loads((labels.parent / "attributes.json").read_text())
    assert list(classes) == list(W.FINE_ATTRIBUTES)
    assert len(rows) == 200
    for row in rows:
        assert (labels.parent / row["image"]).is_file()
        assert set(row["labels"]) == set(W.FINE_ATTRIBUTES)
        for attr, idx in row["label_ids"].items():
            assert classes[attr][idx] == row["labels"][attr]
    for attr, names in classes.items():
        seen = {row["label_ids"][attr] for row in rows}
        assert seen == set(range(len(names))), f"{attr}: some class never appears"


def _silhouette(k, side=200):
    r = side * 0.3
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for part in k.parts:
        _draw_part(draw, part, lambda x, y: (side / 2 + x * r, side / 2 + y * r), r, 0.0, 255)
    yy, xx = (np.mgrid[0:side, 0:side] - side / 2) / r
    return np.asarray(mask) > 0, xx, yy


@pytest.mark.parametrize("kind", W.KINDS)
def test_every_facing_looks_different_and_the_hole_stays_on_the_object(kind):
    masks = {}
    for direction in W.FINE_ATTRIBUTES["direction"]:
        k = G.rotated(G._KINDS[kind], direction)
        assert G.rotated(k, direction) == k  # turning to the facing it has is the identity
        m, xx, yy = _silhouette(k)
        masks[direction] = m
        cx, cy = k.core
        hole = (xx - cx) ** 2 + (yy - cy) ** 2 < G._HOLE_RADIUS**2
        # >= 90 %: the car's body is lower than the hole (it bites its lower edge).
        assert m[hole].mean() >= 0.9, f"{kind} facing {direction}: the hole leaves the silhouette"
    for a in masks:
        for b in masks:
            if a < b:
                # No kind is symmetric under the turn between two facings: >= 5 % of the
                # silhouette's area differs.
                assert (masks[a] ^ masks[b]).sum() > 0.05 * masks[a].sum(), f"{kind}: {a} looks like {b}"


def test_hard_negative_pairs_differ_in_one_named_attribute(tmp_path):
    n = 300
    root = W.write_corpus(tmp_path / "hn", n, seed=1, hard_negative_share=0.4).parent
    caps = _read_jsonl(root / "captions.jsonl")
    scenes = [W.Scene.from_dict(m["scene"]) for m in _read_jsonl(root / "scenes.jsonl")]
    grouped = [i for i, c in enumerate(caps) if "group" in c]
    assert 0.3 < len(grouped) / n < 0.5
    for i in grouped:
        g = caps[i]["group"]
        if g != i or i + 1 >= n:
            continue
        assert caps[i + 1]["group"] == g
        a, b = scenes[i], scenes[i + 1]
        diff = [f.name for f in dataclasses.fields(W.Scene) if getattr(a, f.name) != getattr(b, f.name)]
        assert len(diff) == 1 and diff[0] in W.FINE_ATTRIBUTES, diff
        # Both captions name the attribute that differs, truly, and differ in nothing else.
        for s, c in ((a, caps[i]), (b, caps[i + 1])):
            assert W.mentioned_fine_attribute(c["text"]) == diff[0]
            assert any(s.phrase(diff[0], v) in c["text"] for v in range(2))
        assert caps[i]["text"] != caps[i + 1]["text"]
        assert not W.is_reserved(a) and not W.is_reserved(b)
    # The prefix property holds with pairs too.
    prefix = W.write_corpus(tmp_path / "p", 37, seed=1, hard_negative_share=0.4).parent
    assert _read_jsonl(prefix / "captions.jsonl") == caps[:37]


def test_world_stats_prints_cue_shares_and_refuses_a_folder_without_a_benchmark(tmp_path, capsys):
    from genhancer.cli import main

    out = tmp_path / "w"
    assert main(["world", "--seed", "5", "--out", str(out), "--benchmark", "--pairs-per-category", "6",
                 "--stats"]) == 0
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if any(ln.startswith(t) for t, _ in W.MMVP_CATEGORIES)]
    assert len(rows) == 9
    for ln in rows:
        median = float(ln.split()[-4])
        # Every cue carries a real share of the reconstruction target (v2: 0.02-0.04 for six).
        assert 0.05 < median < 2.0, ln
    assert main(["world", "--out", str(out), "--stats"]) == 0  # reads the benchmark written before
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main(["world", "--out", str(tmp_path / "empty"), "--stats"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "pairs.jsonl" in err[0]


def test_user_errors_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="kind"):
        W.Scene(kind="dragon", color="teal", background="plain")
    with pytest.raises(DataError, match="count"):
        W.Scene(kind="fish", color="teal", background="sky", count=True)
    with pytest.raises(DataError, match="unknown fields"):
        W.Scene.from_dict({"kind": "fish", "color": "teal", "background": "sky", "size": 3})
    with pytest.raises(DataError, match="fine_caption_prob"):
        W.write_corpus(tmp_path / "x", 2, seed=0, fine_caption_prob=1.5)
    with pytest.raises(DataError, match="n must be"):
        W.write_corpus(tmp_path / "x", -1, seed=0)
    with pytest.raises(DataError, match="size"):
        W.Scene(kind="fish", color="teal", background="sky").render(8)
    with pytest.raises(DataError, match="cue_scale"):
        W.write_probe_set(tmp_path / "x", 2, seed=0, cue_scale=3.0)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a directory"):
        W.write_coarse_folder(tmp_path / "file", 1, seed=0)


def test_world_cli_writes_parts_and_refuses_bad_input(tmp_path, capsys):
    from genhancer.cli import main

    out = tmp_path / "w"
    assert main(["world", "--seed", "3", "--out", str(out), "--probe", "12", "--coarse", "1", "--benchmark",
                 "--pairs-per-category", "1"]) == 0
    assert (out / "probe" / "labels.jsonl").is_file() and (out / "mmvp" / "Questions.csv").is_file()
    assert sorted(p.name for p in (out / "coarse").iterdir()) == sorted(W.KINDS)
    assert not (out / "corpus").exists()
    # The same seed writes the same pixels; the probe uses seed + its offset.
    again = tmp_path / "w2"
    W.write_probe_set(again, 12, seed=3 + W.PART_SEED_OFFSETS["probe"])
    assert (again / "labels.jsonl").read_text() == (out / "probe" / "labels.jsonl").read_text()
    capsys.readouterr()
    before = (out / "probe" / "labels.jsonl").read_bytes()
    for argv in (["--probe", "-1"], ["--probe", "5"], ["--corpus", "0"], ["--galaxy", "3"], []):
        assert main(["world", "--seed", "3", "--out", str(out), *argv]) == 2, argv
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and "Traceback" not in err[0], (argv, err)
    assert (out / "probe" / "labels.jsonl").read_bytes() == before  # nothing written before is lost
    assert main(["world", "--seed", "4", "--out", str(out), "--probe", "12", "--overwrite"]) == 0
    assert (out / "probe" / "labels.jsonl").read_bytes() != before
