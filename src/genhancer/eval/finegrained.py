"""Image-only fine-grained metrics: blind-pair separation and k-NN accuracy of fine attributes.

Both read the global token alone (``encoder.encode_image``, never a text tower), so they
score any encoder with the image half of the interface (``resize_crop``, ``normalize``,
``encode_image``): CLIP and SigLIP, a vision-only checkpoint, a DINOv2-style encoder
wrapped in those three methods.

* **Blind pairs.** MMVP (Tong et al., *Eyes Wide Shut?*, CVPR 2024) built its benchmark from
  *CLIP-blind pairs*: two images whose CLIP embeddings have cosine similarity above 0.95
  although they differ visibly. For each MMVP-format pair we report the cosine of the two
  images' global tokens, and the share of pairs above 0.95; an encoder that learnt to see
  the difference pushes the pair apart. (The paper's other half of the criterion, DINOv2
  cosine below 0.6, chose the pairs; it says nothing about the encoder under test.)
* **k-NN accuracy.** On a probe labels set (``labels.jsonl``, as ``genhancer eval probe``
  reads it), each held-out image takes the majority label of its ``k`` nearest training
  images by cosine of the global token: no training, so it measures the geometry of the
  token itself, which a linear probe can partly undo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genhancer.errors import DataError
from genhancer.eval.mmvp import (
    BLIND_COSINE,
    blind_summary,
    make_pairs,
    pair_cosines,
    pairs_per_category_of,
    read_questions,
)

__all__ = ["BLIND_COSINE", "blind_summary", "knn_predict", "pair_cosines", "run_blind_pairs", "run_knn"]

def run_blind_pairs(model: Any, data: str | Path, out_dir: str | Path | None = None, batch_size: int = 32,
                    device=None, allow_partial: bool = False) -> dict[str, Any]:
    """Blind-pair separation of ``model`` on the MMVP-format benchmark at ``data``, any number of
    pairs. Returns the summary plus ``items`` (one record per pair); writes
    ``blind_pairs.json`` to ``out_dir`` when given."""
    from genhancer.eval.common import encode_images, model_name, resolve_encoder, write_json

    data = Path(data)
    pairs = make_pairs(data, read_questions(data), pairs_per_category_of(data))
    paths = list(dict.fromkeys(p for pair in pairs for p in pair.image_paths))
    encoder, dev = resolve_encoder(model, device, needs_text=False)
    emb, problems = encode_images(encoder, paths, batch_size, dev, strict=not allow_partial, desc="pair images")
    bad = {paths[i] for i in problems}
    ok = [p for p in paths if p not in bad]
    scorable = [pair for pair in pairs if not any(p in bad for p in pair.image_paths)]
    if not scorable:
        raise DataError(f"no pair in '{data}' could be scored: every pair has a missing or unreadable image")
    records = pair_cosines(scorable, emb, {p: i for i, p in enumerate(ok)})
    summary = {"model": model_name(model), "data": str(data), **blind_summary(records),
               "skipped_pairs": len(pairs) - len(scorable)}
    if out_dir is not None:
        write_json(Path(out_dir) / "blind_pairs.json", {**summary, "items": records})
    return {**summary, "items": records}


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int) -> torch.Tensor:
    """Majority label of the ``k`` nearest training rows by cosine; a tie goes to the class
    whose neighbours are closer in sum (a deterministic rule, no random tie-break)."""
    a = torch.nn.functional.normalize(train_x.float(), dim=-1)
    b = torch.nn.functional.normalize(test_x.float(), dim=-1)
    k = min(k, len(a))
    sims, idx = (b @ a.t()).topk(k, dim=1)
    n_cls = int(train_y.max()) + 1
    votes = torch.zeros(len(b), n_cls).scatter_add_(1, train_y[idx], torch.ones_like(sims))
    # Cosines are <= 1, so k * 1e-3 < 1 keeps the tie-break below one vote for any k < 1000.
    closeness = torch.zeros(len(b), n_cls).scatter_add_(1, train_y[idx], sims)
    return (votes + 1e-3 * closeness).argmax(1)


def run_knn(model: Any, labels_file: str | Path, out_dir: str | Path | None = None, k: int = 10,
            train_fraction: float = 0.7, batch_size: int = 64, device=None) -> dict[str, Any]:
    """k-NN accuracy (%) of every attribute in ``labels.jsonl`` on the global token, with the
    split ``eval probe`` uses (first ``train_fraction`` of the rows train). Returns
    ``per_attribute``, ``mean`` and ``items`` (one ``{"row", "attribute", "correct"}`` per
    held-out image and attribute, for paired statistics); writes ``knn_summary.json``."""
    from genhancer.eval.common import encode_images, model_name, resolve_encoder, write_json
    from genhancer.eval.probe import read_label_rows

    if k < 1:
        raise DataError(f"k-NN: k must be >= 1, got {k}")
    labels_file = Path(labels_file)
    if not labels_file.is_file():
        raise DataError(f"probe labels '{labels_file}' do not exist")
    rows = read_label_rows(labels_file)
    n_train = int(len(rows) * train_fraction)
    if n_train < 1 or n_train >= len(rows):
        raise DataError(f"'{labels_file}': {len(rows)} rows leave no training or no held-out images; "
                        "expected >= 10 rows with 'image' and 'label_ids' fields")
    attrs = list(rows[0]["label_ids"])
    for n, r in enumerate(rows, start=1):
        if list(r["label_ids"]) != attrs or not all(isinstance(v, int) and v >= 0 for v in r["label_ids"].values()):
            raise DataError(f"{labels_file}:{n}: 'label_ids' must give every attribute of the first row "
                            f"({', '.join(attrs)}) a class id >= 0")
    encoder, dev = resolve_encoder(model, device, needs_text=False)
    feats, _ = encode_images(encoder, [labels_file.parent / r["image"] for r in rows], batch_size, dev)
    feats = feats.cpu()
    per_attr, items = {}, []
    for attr in attrs:
        y = torch.tensor([r["label_ids"][attr] for r in rows])
        pred = knn_predict(feats[:n_train], y[:n_train], feats[n_train:], k)
        correct = (pred == y[n_train:]).tolist()
        per_attr[attr] = 100.0 * sum(correct) / len(correct)
        items += [{"row": n_train + i, "attribute": attr, "correct": bool(c)} for i, c in enumerate(correct)]
    summary = {"model": model_name(model), "k": k, "per_attribute": per_attr,
               "mean": sum(per_attr.values()) / len(per_attr), "n_train": n_train, "n_test": len(rows) - n_train}
    if out_dir is not None:
        write_json(Path(out_dir) / "knn_summary.json", summary)
    return {**summary, "items": items}
