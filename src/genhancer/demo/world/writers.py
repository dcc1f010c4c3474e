"""Folders on disk: the captioned corpus, the MMVP-VLM-format benchmark, the probe set and
the coarse (zero-shot) folder; ``write_world`` writes any of them for one world seed, and
``world_fingerprint`` hashes what the generator makes of fixed seeds."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from genhancer.demo.world.checks import _check_count, _check_cue_scale, _check_seed, _check_size
from genhancer.demo.world.sampling import _bench_pair, _sample_open, is_reserved
from genhancer.demo.world.vocab import (
    COARSE_ATTRIBUTES,
    FINE_ATTRIBUTES,
    KINDS,
    MMVP_CATEGORIES,
    WORLD_VERSION,
)
from genhancer.errors import DataError
from genhancer.mmvp_vlm import IMAGES_DIR, QUESTIONS_FILE, REQUIRED_COLUMNS


def _check_render_args(seed, size, cue_scale) -> int:
    """The checks every image writer makes of its common arguments; returns the seed as an int."""
    _check_size(size)
    _check_cue_scale(cue_scale)
    return _check_seed(seed)


def _prepare_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _progress(total: int, desc: str):
    # disable=None: tqdm turns itself off when stderr is not a TTY (CI, logs).
    return tqdm(total=total, desc=desc, unit="img", disable=None, leave=False)


def _save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # compress_level 1: several times faster than the default on 64 px images, same pixels.
    img.save(path, format="PNG", compress_level=1)


def _write_text(path: Path, text: str) -> None:
    # Index files last and by rename: a half-written folder never looks complete.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _write_manifest(out: Path, what: str, **params) -> None:
    manifest = {"generator": "genhancer.demo.world", "what": what, **params}
    _write_text(out / "world.json", json.dumps(manifest, indent=1) + "\n")


def write_corpus(
    out_dir,
    n: int,
    seed: int,
    size: int = 64,
    fine_caption_prob: float = 0.15,
    color_prob: float = 0.75,
    cue_scale: float = 1.0,
    hard_negative_share: float = 0.0,
) -> Path:
    """A captioned training corpus: ``images/XXXX/XXXXXXX.png`` + ``captions.jsonl``.

    Each ``captions.jsonl`` row is ``{"image": <path relative to out_dir>, "text": ...}``.
    Captions name the kind and background always, the object colour with ``color_prob``,
    and ONE fine attribute (uniformly chosen) with ``fine_caption_prob``. The sidecar
    ``scenes.jsonl`` holds each image's full scene and which fine attribute (if any) its
    caption mentions. No scene reserved for the benchmark (``is_reserved``) is emitted.

    ``hard_negative_share``: about this share of the images come as *hard-negative pairs*:
    two consecutive scenes with the same coarse content (and nuisances) that differ in
    one fine attribute, both captioned with it, sharing a ``"group"`` id in their
    ``captions.jsonl`` rows (``pretrain-clip`` keeps a group in one batch). A random
    batch of this world almost never holds two scenes with the same kind, colour and
    background, so contrastive training never needs a fine word; these pairs are what
    leaves the fine attributes a trace in the global token. Returns the path of
    ``captions.jsonl``.
    """
    _check_count(n, "n")
    seed = _check_render_args(seed, size, cue_scale)
    for name, p in (("fine_caption_prob", fine_caption_prob), ("color_prob", color_prob),
                    ("hard_negative_share", hard_negative_share)):
        if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise DataError(f"{name} must be a probability in [0, 1], got {p!r}")
    out = _prepare_dir(out_dir)
    captions, scenes = [], []
    attrs = tuple(FINE_ATTRIBUTES)
    with _progress(n, "corpus") as bar:
        i = 0
        while i < n:
            scene, rng = _sample_open("corpus", seed, i)
            # A pair starts with probability share / (2 - share): then pairs hold ~share of images.
            if hard_negative_share > 0 and rng.random() < hard_negative_share / (2 - hard_negative_share):
                fine = rng.choice(attrs)
                twin = _hard_negative(scene, fine, rng)
            else:
                twin = None
            if twin is not None:
                # Same template, colour word and phrase variant: the captions differ only in the value.
                state = rng.getstate()
                first = scene._caption(rng, color_prob, fine)
                rng.setstate(state)
                group = [(scene, first), (twin, twin._caption(rng, color_prob, fine))]
            else:
                fine = rng.choice(attrs) if rng.random() < fine_caption_prob else None
                group = [(scene, scene._caption(rng, color_prob, fine))]
            start = i
            # A pair cut by the corpus's end keeps its first half: a corpus of n images stays
            # a prefix of one of n + 1.
            for s, text in group[: n - i]:
                rel = f"images/{i // 1000:04d}/{i:07d}.png"
                _save_png(s.render(size, cue_scale=cue_scale), out / rel)
                captions.append({"image": rel, "text": text} | ({"group": start} if twin is not None else {}))
                scenes.append({"image": rel, "fine_mentioned": fine, "scene": s.to_dict()})
                bar.update()
                i += 1
    _write_text(out / "scenes.jsonl", _jsonl(scenes))
    _write_manifest(
        out,
        "corpus",
        n=n,
        seed=seed,
        size=size,
        cue_scale=cue_scale,
        fine_caption_prob=fine_caption_prob,
        color_prob=color_prob,
        hard_negative_share=hard_negative_share,
    )
    _write_text(out / "captions.jsonl", _jsonl(captions))
    return out / "captions.jsonl"


def _hard_negative(scene, attribute: str, rng):
    """``scene`` with another value of ``attribute``, not reserved for the benchmark."""
    values = [v for v in FINE_ATTRIBUTES[attribute] if v != getattr(scene, attribute)]
    rng.shuffle(values)
    for v in values:
        twin = dataclasses.replace(scene, **{attribute: v})
        if not is_reserved(twin):
            return twin
    return None  # every other value is reserved for the benchmark


def write_mmvp_benchmark(
    out_dir, pairs_per_category: int = 15, seed: int = 0, size: int = 64, cue_scale: float = 1.0
) -> Path:
    """A held-out benchmark in the MMVP-VLM layout; returns the path of ``Questions.csv``.

    ``Questions.csv`` has exactly the columns ``Question ID,Type,Statement`` because the
    upstream scorers unpack each row into three names; per-question metadata (attribute,
    value, scene) goes to the sidecar ``pairs.jsonl``. Rows 2k-1 and 2k are a pair whose
    images (``MLLM_VLM Images/<Type>/<id>.jpg``, JPEG q95) differ in one fine attribute;
    the odd row's statement is true of the first image, the even row's of the second.
    Upstream scores categories as blocks of 15 pairs, so keep the default 15 for its
    scripts. Every scene is reserved (``is_reserved``), hence absent from any corpus.
    """
    per = _check_count(pairs_per_category, "pairs_per_category", minimum=1)
    seed = _check_render_args(seed, size, cue_scale)
    out = _prepare_dir(out_dir)
    rows, meta = [], []
    qid = 0
    with _progress(2 * per * len(MMVP_CATEGORIES), "mmvp-vlm") as bar:
        for c, (type_name, attribute) in enumerate(MMVP_CATEGORIES):
            folder = out / IMAGES_DIR / type_name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per):
                for scene in _bench_pair(seed, c * 1_000_000 + k, attribute):
                    qid += 1
                    statement = scene.statement(attribute)
                    # 4:4:4 chroma: the default 4:2:0 would smear the sign's colour into its outline.
                    img = scene.render(size, cue_scale=cue_scale)
                    img.save(folder / f"{qid}.jpg", format="JPEG", quality=95, subsampling=0)
                    rows.append([qid, type_name, statement])
                    meta.append(
                        {
                            "question_id": qid,
                            "type": type_name,
                            "attribute": attribute,
                            "value": getattr(scene, attribute),
                            "statement": statement,
                            "image": f"{IMAGES_DIR}/{type_name}/{qid}.jpg",
                            "scene": scene.to_dict(),
                        }
                    )
                    bar.update()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(REQUIRED_COLUMNS)
    w.writerows(rows)
    _write_text(out / "pairs.jsonl", _jsonl(meta))
    _write_manifest(out, "mmvp-vlm", pairs_per_category=per, seed=seed, size=size, cue_scale=cue_scale)
    _write_text(out / QUESTIONS_FILE, buf.getvalue())
    return out / QUESTIONS_FILE


def write_probe_set(out_dir, n: int, seed: int, size: int = 64, cue_scale: float = 1.0) -> Path:
    """Images + ``labels.jsonl`` for linear probes of each fine attribute.

    Row: ``{"image", "labels": {attr: str(value)}, "label_ids": {attr: class index},
    "coarse": {kind, color, background}}``; ``attributes.json`` lists each attribute's
    classes in id order. Returns the path of ``labels.jsonl``.
    """
    _check_count(n, "n")
    seed = _check_render_args(seed, size, cue_scale)
    out = _prepare_dir(out_dir)
    rows = []
    with _progress(n, "probe") as bar:
        for i in range(n):
            scene, _ = _sample_open("probe", seed, i)
            rel = f"images/{i // 1000:04d}/{i:07d}.png"
            _save_png(scene.render(size, cue_scale=cue_scale), out / rel)
            fine = scene.fine_labels()
            rows.append(
                {
                    "image": rel,
                    "labels": {a: str(v) for a, v in fine.items()},
                    "label_ids": {a: FINE_ATTRIBUTES[a].index(v) for a, v in fine.items()},
                    "coarse": {a: getattr(scene, a) for a in COARSE_ATTRIBUTES},
                }
            )
            bar.update()
    classes = {a: [str(v) for v in vals] for a, vals in FINE_ATTRIBUTES.items()}
    _write_text(out / "attributes.json", json.dumps(classes, indent=1) + "\n")
    _write_manifest(out, "probe", n=n, seed=seed, size=size, cue_scale=cue_scale)
    _write_text(out / "labels.jsonl", _jsonl(rows))
    return out / "labels.jsonl"


def write_coarse_folder(out_dir, n_per_class: int, seed: int, size: int = 64, cue_scale: float = 1.0) -> Path:
    """``out_dir/<kind>/<i>.png`` for zero-shot classification; class names are the kind
    words captions use (``KINDS``). Everything but the kind is random. Returns ``out_dir``."""
    per = _check_count(n_per_class, "n_per_class", minimum=1)
    seed = _check_render_args(seed, size, cue_scale)
    out = _prepare_dir(out_dir)
    with _progress(per * len(KINDS), "coarse") as bar:
        for c, kind in enumerate(KINDS):
            for i in range(per):
                scene, _ = _sample_open("coarse", seed, c * 1_000_000 + i, kind=kind)
                _save_png(scene.render(size, cue_scale=cue_scale), out / kind / f"{i:05d}.png")
                bar.update()
    # No manifest here: any extra entry would read as a class to a folder loader.
    return out


def world_fingerprint(n: int = 24) -> str:
    """sha256 over what the generator makes of fixed seeds: pixels and captions of the first
    ``n`` corpus scenes and one benchmark pair per category, plus ``WORLD_VERSION``.

    Anything trained on the world (the shipped tiny CLIP) records this; when the generator
    changes, the fingerprint does too, and a test says the asset must be rebuilt."""
    h = hashlib.sha256(f"genhancer-world-v{WORLD_VERSION}".encode())
    attrs = tuple(FINE_ATTRIBUTES)
    for i in range(n):
        scene, rng = _sample_open("corpus", 0, i)
        fine = rng.choice(attrs) if rng.random() < 0.15 else None
        h.update(scene._caption(rng, 0.75, fine).encode())
        h.update(scene.render(64).tobytes())
    for c, (_, attribute) in enumerate(MMVP_CATEGORIES):
        for scene in _bench_pair(0, c * 1_000_000, attribute):
            h.update(scene.statement(attribute).encode())
            h.update(scene.render(64).tobytes())
    return h.hexdigest()


# Seed offsets of the parts, so one world seed names the whole set and no two parts share a
# stream: `genhancer world --seed S` writes what the demo with seed S uses.
PART_SEED_OFFSETS = {"corpus": 0, "benchmark": 1000, "probe": 2000, "coarse": 3000, "benchmark-large": 4000}
PART_DIRS = {"corpus": "corpus", "benchmark": "mmvp", "probe": "probe", "coarse": "coarse"}


def write_world(out_dir, seed: int, corpus: int | None = None, benchmark: bool = False,
                probe: int | None = None, coarse: int | None = None, size: int = 64,
                pairs_per_category: int = 15, overwrite: bool = False,
                fine_caption_prob: float = 0.15, hard_negative_share: float = 0.0) -> dict[str, Path]:
    """Any parts of the world for one seed: ``corpus/``, ``mmvp/``, ``probe/``, ``coarse/``.

    ``corpus`` / ``probe`` are image counts, ``coarse`` images per class, ``benchmark`` the
    MMVP-format pairs (``pairs_per_category`` per category). Each part uses the world seed
    plus its offset (``PART_SEED_OFFSETS``). A part whose folder exists and is not empty is
    refused (before anything is written) unless ``overwrite``, which replaces it.
    Returns the folder of each part written.
    """
    seed = _check_seed(seed)
    wanted = {"corpus": corpus, "benchmark": benchmark or None, "probe": probe, "coarse": coarse}
    for name, n in wanted.items():
        if n is not None and name != "benchmark":
            _check_count(n, f"--{name}", minimum=1)
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if not wanted:
        raise DataError("world: nothing to write; give at least one of --corpus N, --benchmark, --probe N, --coarse N")
    out = _prepare_dir(out_dir)
    dirs = {name: out / PART_DIRS[name] for name in wanted}
    for d in dirs.values():
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            if not overwrite:
                raise DataError(f"{d} exists and is not empty; pass --overwrite to replace it")
    for name, d in dirs.items():
        if d.exists():
            shutil.rmtree(d) if d.is_dir() else d.unlink()
        s = seed + PART_SEED_OFFSETS[name]
        if name == "corpus":
            write_corpus(d, wanted[name], seed=s, size=size, fine_caption_prob=fine_caption_prob,
                         hard_negative_share=hard_negative_share)
        elif name == "benchmark":
            write_mmvp_benchmark(d, pairs_per_category, seed=s, size=size)
        elif name == "probe":
            write_probe_set(d, wanted[name], seed=s, size=size)
        else:
            write_coarse_folder(d, wanted[name], seed=s, size=size)
    return dirs
