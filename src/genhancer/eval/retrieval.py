"""Image-text retrieval recall@K from a captions file (CSV / TSV / JSONL / JSON list).

Each row names an image (path relative to the captions file, or absolute) and a caption
(a string, or in JSON a list of strings). An image may appear on several rows: it is
encoded once and every one of its captions is a ground truth for it.

* image -> text: an image's rank is the number of non-matching captions scored at least as
  high as its best-scored own caption; a hit at K when that rank < K.
* text -> image: a caption's rank is the number of other images scored at least as high
  as its own image.

Ties count against the model (a constant model gets no credit), which keeps a degenerate
encoder from looking good.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from genhancer.errors import DataError
from genhancer.eval.common import (
    encode_images,
    encode_texts,
    model_name,
    resolve_encoder,
    similarity,
    write_csv,
    write_json,
)

DEFAULT_KS = (1, 5, 10)
_CHUNK = 1024


def read_captions(captions_file: str | Path, image_column: str = "image",
                  caption_column: str = "caption") -> list[tuple[int, Path, str]]:
    """-> [(row number, image path, caption)], one entry per caption."""
    path = Path(captions_file)
    if not path.is_file():
        raise DataError(f"captions file '{path}' does not exist")
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict]] = []
    try:
        if suffix in (".csv", ".tsv"):
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                header = [h.strip() for h in (reader.fieldnames or [])]
                for col in (image_column, caption_column):
                    if col not in header:
                        raise DataError(f"'{path}': missing column '{col}' (header has: {', '.join(header)}); "
                                        "choose the columns with image_column / caption_column")
                reader.fieldnames = header
                rows = [(n, r) for n, r in enumerate(reader, start=1)]
        elif suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8-sig")
            if suffix == ".json":
                data = json.loads(text)
                if not isinstance(data, list):
                    raise DataError(f"'{path}': expected a JSON list of objects")
                rows = list(enumerate(data, start=1))
            else:
                for n, line in enumerate(text.splitlines(), start=1):
                    if line.strip():
                        try:
                            rows.append((n, json.loads(line)))
                        except json.JSONDecodeError as e:
                            raise DataError(f"'{path}' line {n}: not valid JSON ({e.msg})") from None
        else:
            raise DataError(f"'{path}': unsupported captions format '{suffix}'; expected .csv, .tsv, .jsonl or .json")
    except (OSError, UnicodeDecodeError, csv.Error, json.JSONDecodeError) as e:
        raise DataError(f"cannot read '{path}': {e}") from None

    entries = []
    for n, r in rows:
        if not isinstance(r, dict):
            raise DataError(f"'{path}' row {n}: expected an object with '{image_column}' and '{caption_column}'")
        for col in (image_column, caption_column):
            if col not in r or r[col] is None:
                raise DataError(f"'{path}' row {n}: missing field '{col}'; choose the fields with "
                                "image_column / caption_column")
        img = str(r[image_column]).strip()
        if not img:
            raise DataError(f"'{path}' row {n}: empty '{image_column}'")
        caps = r[caption_column]
        caps = caps if isinstance(caps, list) else [caps]
        for cap in caps:
            if not isinstance(cap, str) or not cap.strip():
                raise DataError(f"'{path}' row {n}: '{caption_column}' must be a non-empty string "
                                "(or a list of them in JSON)")
            img_path = Path(img) if Path(img).is_absolute() else path.parent / img
            entries.append((n, img_path, cap.strip()))
    if not entries:
        raise DataError(f"'{path}' has no rows")
    return entries


def recall_ranks(sim_fn, n_images: int, n_texts: int, text_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (image->text rank per image, text->image rank per caption), ties counted against.

    ``sim_fn(img_slice, txt_slice)`` returns the [images, texts] logits for the slices, so
    the full matrix is never held at once. ``text_image[j]`` is caption j's image.
    """
    i2t = torch.empty(n_images, dtype=torch.long)
    for s in range(0, n_images, _CHUNK):
        rows = torch.arange(s, min(s + _CHUNK, n_images))
        sim = sim_fn(slice(s, s + len(rows)), slice(None))
        gt = text_image[None, :] == rows[:, None]
        best = sim.masked_fill(~gt, float("-inf")).max(dim=1).values
        i2t[rows] = ((sim >= best[:, None]) & ~gt).sum(dim=1)
    t2i = torch.empty(n_texts, dtype=torch.long)
    for s in range(0, n_texts, _CHUNK):
        cols = torch.arange(s, min(s + _CHUNK, n_texts))
        sim = sim_fn(slice(None), slice(s, s + len(cols)))          # [images, c]
        own = sim[text_image[cols], torch.arange(len(cols))]
        gt = torch.arange(n_images)[:, None] == text_image[cols][None, :]
        t2i[cols] = ((sim >= own[None, :]) & ~gt).sum(dim=0)
    return i2t, t2i


def run_retrieval(model: Any, captions_file: str | Path, out_dir: str | Path | None = None,
                  image_column: str = "image", caption_column: str = "caption", batch_size: int = 64,
                  device: str | torch.device | None = None, allow_partial: bool = False,
                  ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Image->text and text->image recall@K of ``model`` on ``captions_file``.

    Returns the summary plus ``items``: ``{"image_to_text": [per image], "text_to_image":
    [per caption]}`` records with their rank and hits, for paired statistics. Writes
    ``retrieval_summary.json`` to ``out_dir`` when given. A missing / unreadable image is a
    ``DataError`` unless ``allow_partial``, which drops it with its captions and lists it.
    """
    entries = read_captions(captions_file, image_column, caption_column)
    images = list(dict.fromkeys(p for _, p, _ in entries))
    if not allow_partial:
        missing = [p for p in images if not p.is_file()]
        if missing:
            row = next(n for n, p, _ in entries if p == missing[0])
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"'{captions_file}' row {row}: missing image file '{missing[0]}'{more}")
    encoder, device = resolve_encoder(model, device)
    img_emb, problems = encode_images(encoder, images, batch_size, device, strict=not allow_partial,
                                      desc="retrieval images")
    bad = {images[i] for i in problems}
    images_ok = [p for p in images if p not in bad]
    if not images_ok:
        raise DataError(f"no readable image in '{captions_file}'")
    index = {p: i for i, p in enumerate(images_ok)}
    kept = [(n, p, c) for n, p, c in entries if p in index]
    txt_emb = encode_texts(encoder, [c for _, _, c in kept], batch_size, device, desc="captions")
    text_image = torch.tensor([index[p] for _, p, _ in kept])

    def sim_fn(img_sl, txt_sl):
        return similarity(encoder, img_emb[img_sl], txt_emb[txt_sl])

    i2t, t2i = recall_ranks(sim_fn, len(images_ok), len(kept), text_image)
    ks = sorted(set(int(k) for k in ks))
    i2t_items = [{"image": str(p), "rank": int(i2t[i]), **{f"R@{k}": bool(i2t[i] < k) for k in ks}}
                 for i, p in enumerate(images_ok)]
    t2i_items = [{"caption": c, "image": str(p), "row": n, "rank": int(t2i[j]),
                  **{f"R@{k}": bool(t2i[j] < k) for k in ks}} for j, (n, p, c) in enumerate(kept)]
    i2t_r = {f"R@{k}": 100.0 * float((i2t < k).float().mean()) for k in ks}
    t2i_r = {f"R@{k}": 100.0 * float((t2i < k).float().mean()) for k in ks}
    summary: dict[str, Any] = {
        "task": "image-text retrieval",
        "model": model_name(model),
        "family": getattr(encoder, "family", None),
        "data": str(captions_file),
        "image_to_text": i2t_r,
        "text_to_image": t2i_r,
        "mean_recall": (sum(i2t_r.values()) + sum(t2i_r.values())) / (2 * len(ks)),
        "n_images": len(images_ok),
        "n_captions": len(kept),
        "skipped": [problems[i] for i in sorted(problems)],
    }
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "retrieval_summary.json", summary)
        write_csv(out / "retrieval_ranks.csv", ["direction", "item", "image", "rank"],
                  [("image_to_text", r["image"], r["image"], r["rank"]) for r in i2t_items]
                  + [("text_to_image", r["caption"], r["image"], r["rank"]) for r in t2i_items])
    return {**summary, "items": {"image_to_text": i2t_items, "text_to_image": t2i_items}}
