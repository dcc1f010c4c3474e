"""Zero-shot classification over an image folder (class = sub-folder name).

Checks that an enhanced encoder keeps what contrastive pre-training gave it. Each class
gets one text embedding: the prompt templates are encoded, each embedding normalised, then
averaged and normalised again (the CLIP recipe). Images are found recursively below each
class folder; an unreadable image is skipped and counted, never fatal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from genhancer.data.images import IMAGE_EXTENSIONS
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

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a rendering of a {}.",
)


def class_prompt_name(folder: str) -> str:
    """Folder names often use underscores for spaces (``golden_retriever``)."""
    return folder.replace("_", " ").strip()


def scan_image_folder(data_dir: str | Path) -> tuple[list[str], list[Path], list[int]]:
    """-> (class folder names sorted, image paths, label per image)."""
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"zero-shot data '{root}' is a file; expected a directory with one sub-folder of "
                        "images per class")
    if not root.is_dir():
        raise DataError(f"zero-shot data directory '{root}' does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"'{root}' holds no images; expected one sub-folder per class with images "
                        f"({', '.join(IMAGE_EXTENSIONS)}) inside")
    if len(classes) < 2:
        raise DataError(f"'{root}' has {len(classes)} class folder(s); zero-shot classification needs at "
                        "least 2 sub-folders, one per class")
    return classes, paths, labels


@torch.inference_mode()
def class_embeddings(encoder, classnames: Sequence[str], templates: Sequence[str], batch_size: int,
                     device: torch.device) -> torch.Tensor:
    """[C, D]: per class, the normalised mean of the normalised template embeddings."""
    texts = [t.format(c) for c in classnames for t in templates]
    emb = encode_texts(encoder, texts, batch_size, device, desc="class prompts")
    emb = emb / emb.norm(dim=-1, keepdim=True)
    emb = emb.view(len(classnames), len(templates), -1).mean(dim=1)
    return emb / emb.norm(dim=-1, keepdim=True)


def run_zeroshot(model: Any, data_dir: str | Path, out_dir: str | Path | None = None,
                 templates: Sequence[str] | None = None, batch_size: int = 64,
                 device: str | torch.device | None = None, top_k: int = 5) -> dict[str, Any]:
    """Top-1 / top-k zero-shot accuracy of ``model`` on the class folders of ``data_dir``.

    Returns the summary plus ``items`` (one record per image: path, label, prediction,
    ``top1`` / ``top5`` hits). Writes ``zeroshot_summary.json`` and
    ``zeroshot_predictions.csv`` to ``out_dir`` when given.
    """
    templates = list(templates or DEFAULT_TEMPLATES)
    for t in templates:
        if t.count("{}") != 1:
            raise DataError(f"prompt template '{t}' must contain exactly one '{{}}' for the class name")
    classes, paths, labels = scan_image_folder(data_dir)
    encoder, device = resolve_encoder(model, device)
    img_emb, problems = encode_images(encoder, paths, batch_size, device, strict=False, desc="zero-shot images")
    if img_emb is None:
        raise DataError(f"no readable image in '{data_dir}' ({len(problems)} unreadable)")
    ok = [i for i in range(len(paths)) if i not in problems]
    txt_emb = class_embeddings(encoder, [class_prompt_name(c) for c in classes], templates, batch_size, device)
    logits = similarity(encoder, img_emb, txt_emb)
    k = min(top_k, len(classes))
    topk = logits.topk(k, dim=1).indices
    y = torch.tensor([labels[i] for i in ok])
    hit1 = topk[:, 0] == y
    hitk = (topk == y[:, None]).any(dim=1)

    items = [{"path": str(paths[i]), "label": classes[labels[i]], "pred": classes[int(topk[j, 0])],
              "top1": bool(hit1[j]), f"top{top_k}": bool(hitk[j])} for j, i in enumerate(ok)]
    per_class = {}
    for c_idx, c in enumerate(classes):
        m = y == c_idx
        per_class[c] = 100.0 * float(hit1[m].float().mean()) if bool(m.any()) else None
    summary: dict[str, Any] = {
        "task": "zero-shot classification",
        "model": model_name(model),
        "family": getattr(encoder, "family", None),
        "data": str(data_dir),
        "top1": 100.0 * float(hit1.float().mean()),
        f"top{top_k}": 100.0 * float(hitk.float().mean()),
        "top_k_effective": k,
        "n_images": len(ok),
        "n_classes": len(classes),
        "per_class_top1": per_class,
        "templates": templates,
        "skipped": [problems[i] for i in sorted(problems)],
    }
    if out_dir is not None:
        out = Path(out_dir)
        write_json(out / "zeroshot_summary.json", summary)
        write_csv(out / "zeroshot_predictions.csv", ["path", "label", "pred", "top1", f"top{top_k}"],
                  ([r["path"], r["label"], r["pred"], int(r["top1"]), int(r[f"top{top_k}"])] for r in items))
    return {**summary, "items": items}
