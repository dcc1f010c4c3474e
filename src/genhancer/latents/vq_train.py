"""Training and evaluating a :class:`~genhancer.latents.vq_model.VQTokenizer` on images
in [-1, 1] (``genhancer train-vq`` and the ablation's tokenizer step).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from genhancer.errors import ConfigError, ShapeError
from genhancer.latents.vq_model import VQTokenizer


def _as_image(item) -> torch.Tensor:
    # Datasets often yield (image, label) or {"image": ...}; take the image.
    if isinstance(item, dict):
        item = item.get("image", item.get("pixel_values"))
    elif isinstance(item, (tuple, list)):
        item = item[0]
    if not isinstance(item, torch.Tensor) or item.ndim != 3 or item.shape[0] != 3:
        got = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
        raise ShapeError(f"VQ training images: expected tensors [3,H,W] in [-1, 1], got {got}")
    return item.float()


def _loader(images, batch_size: int, generator: torch.Generator | None):
    """A DataLoader of [B,3,H,W] batches; shuffled, dropping a ragged tail, when ``generator`` is
    given (training), in order and complete otherwise (evaluation)."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    def collate(items):
        return torch.stack([_as_image(x) for x in items])

    if isinstance(images, IterableDataset):
        return DataLoader(images, batch_size=batch_size, collate_fn=collate)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ShapeError(f"VQ training images: expected a tensor [N,3,H,W], got {tuple(images.shape)}")
        images = list(images)
    elif not isinstance(images, Dataset) and not hasattr(images, "__getitem__"):
        images = list(images)  # a one-pass iterator: materialise so epochs can repeat
    if len(images) == 0:
        raise ShapeError("VQ training images: expected at least one image, got an empty collection")
    train = generator is not None
    return DataLoader(images, batch_size=min(batch_size, len(images)), shuffle=train,
                      drop_last=train and len(images) >= batch_size, generator=generator, collate_fn=collate)


def _batches(images, batch_size: int, generator: torch.Generator):
    """Endless stream of training batches, reshuffled each epoch."""
    loader = _loader(images, batch_size, generator)
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ShapeError("VQ training images: expected at least one image, got an empty dataset")


@torch.no_grad()
def evaluate_vq(model: VQTokenizer, images, batch_size: int = 64, max_images: int = 1024,
                device: str | torch.device = "cpu") -> dict:
    """Reconstruction PSNR (images in [-1, 1], peak-to-peak 2) and codebook usage on ``images``.

    ``usage`` is the fraction of codes used at least once over the evaluated images;
    ``perplexity`` the exponential of the code histogram's entropy (K for a uniform use).
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(model.codebook_size, device=device)
    se, n_pix, n_img = 0.0, 0, 0
    for batch in _loader(images, batch_size, None):
        batch = batch[: max_images - n_img].to(device)
        codes = model.encode_indices(batch)
        recon = model.decode_indices(codes).clamp(-1, 1)
        se += float((recon - batch).pow(2).sum())
        n_pix += batch.numel()
        n_img += batch.shape[0]
        counts += torch.bincount(codes.flatten(), minlength=model.codebook_size).float()
        if n_img >= max_images:
            break
    model.train(was_training)
    mse = se / n_pix
    p = counts / counts.sum()
    return {"psnr": 10 * math.log10(4.0 / max(mse, 1e-12)), "mse": mse,
            "usage": float((counts > 0).float().mean()),
            "perplexity": float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())),
            "eval_images": n_img}


def train_vq_tokenizer(images: Iterable | torch.Tensor, out_dir: str | Path, codebook_size: int = 512,
                       codebook_dim: int = 32, downsample: int = 4, steps: int = 2000, batch_size: int = 32,
                       lr: float = 1e-3, mode: str = "ema", seed: int = 0, progress: bool = True,
                       channels: int = 64, num_res_blocks: int = 1, beta: float = 0.25,
                       dead_code_steps: int = 100, device: str | torch.device | None = None,
                       eval_images: int = 1024) -> dict:
    """Train a :class:`VQTokenizer` on ``images`` and write it to ``out_dir``.

    ``images``: a tensor [N,3,H,W], a sequence / map-style Dataset / IterableDataset /
    iterator of [3,H,W] tensors in [-1, 1] (``(image, label)`` and ``{"image": ...}`` items
    are accepted). A one-pass iterator is read into memory once.

    Returns metrics (also written to ``out_dir/metrics.json``): final ``psnr`` (dB),
    codebook ``usage`` (fraction of codes used on the data), ``perplexity``, the last
    training losses and ``steps``. The checkpoint directory appears atomically.
    """
    from torch.utils.data import IterableDataset
    from tqdm.auto import tqdm

    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"VQ training: expected steps >= 1, batch_size >= 1, lr > 0; "
                          f"got {steps}, {batch_size}, {lr}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not isinstance(images, (torch.Tensor, IterableDataset)) and not hasattr(images, "__getitem__"):
        images = list(images)  # a one-pass iterator is read once: training and evaluation both need it
    # Fork the RNG so a seeded run is reproducible without disturbing the caller's stream.
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = VQTokenizer(codebook_size=codebook_size, codebook_dim=codebook_dim, downsample=downsample,
                            channels=channels, num_res_blocks=num_res_blocks, mode=mode, beta=beta,
                            dead_code_steps=dead_code_steps).to(device)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.99))
        gen = torch.Generator().manual_seed(seed)
        stream = _batches(images, batch_size, gen)
        bar = tqdm(range(steps), desc="vq tokenizer", disable=not progress or not sys.stderr.isatty())
        out = {}
        model.train()
        for step in bar:
            out = model(next(stream).to(device))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            if not bar.disable and step % 10 == 0:  # .item() syncs an accelerator: not every step
                bar.set_postfix(recon=f"{out['recon_loss'].item():.4f}", usage=f"{out['usage'].item():.2f}")
        bar.close()
        metrics = evaluate_vq(model, images, batch_size=max(batch_size, 64), max_images=eval_images,
                              device=device)
    metrics.update(steps=steps, codebook_size=codebook_size, downsample=downsample, mode=mode,
                   final_recon_loss=out["recon_loss"].item() if out else None,
                   final_commit_loss=out["commit_loss"].item() if out else None)
    model.cpu().save(out_dir, metrics)
    return metrics
