"""Reconstruction grids: originals next to images generated from their global token alone."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from genhancer.checkpoint import (
    load_checkpoint_config,
    load_enhancer_weights,
    load_weights,
    resolve_checkpoint,
)
from genhancer.data.images import IMAGE_EXTENSIONS
from genhancer.errors import DataError


def load_trained(checkpoint: str | Path):
    """An Enhancer with a checkpoint's trained weights (LoRA kept unmerged)."""
    from genhancer.enhancer import Enhancer

    ckpt = resolve_checkpoint(checkpoint)
    cfg = load_checkpoint_config(ckpt)
    enhancer = Enhancer(cfg.model)
    if any("lora_" in k for k in load_weights(ckpt)):  # adapters to load into: inject them first
        enhancer.set_trainable(lora=True)
    load_enhancer_weights(enhancer, ckpt, f"checkpoint '{ckpt}'")
    return enhancer.eval()


def collect_images(items: list[str], limit: int) -> list[Path]:
    paths: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"image '{it}' does not exist")
    if not paths:
        raise DataError(f"no images found in {', '.join(items)}")
    return paths[:limit]


def _to_pil(x: torch.Tensor) -> Image.Image:
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def reconstruct_images(enhancer, images: list[Image.Image], seeds: int = 3, steps: int | None = None):
    """-> (originals [B,3,S,S] in [-1,1], list over seeds of reconstructions [B,3,S,S])."""
    from genhancer.data.transforms import PairedViews

    views = PairedViews.from_spec(enhancer.encoder.spec, gen_size=enhancer.gen_size, train=False)
    pairs = [views(im) for im in images]
    px = torch.stack([p["pixel_values"] for p in pairs])
    originals = torch.stack([p["gen_pixels"] for p in pairs])
    recons = []
    for s in range(seeds):
        g = torch.Generator().manual_seed(s)
        recons.append(enhancer.reconstruct(px, generator=g, steps=steps))
    return originals, recons


def save_grid(originals: torch.Tensor, recons: list[torch.Tensor], out: str | Path, cell: int = 96) -> Path:
    """Rows = images; first column the original, then one column per seed."""
    cols = 1 + len(recons)
    grid = Image.new("RGB", (cols * cell + (cols + 1) * 2, originals.shape[0] * (cell + 2) + 2), "white")
    for i in range(originals.shape[0]):
        for j, t in enumerate([originals] + recons):
            grid.paste(_to_pil(t[i]).resize((cell, cell), Image.NEAREST), (2 + j * (cell + 2), 2 + i * (cell + 2)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def sample_grid(checkpoint, items, out, seeds=3, steps=None, max_images=8) -> Path:
    from genhancer.data.images import load_image

    enhancer = load_trained(checkpoint)
    images = [load_image(p) for p in collect_images(list(items), max_images)]
    originals, recons = reconstruct_images(enhancer, images, seeds, steps)
    return save_grid(originals, recons, out)

