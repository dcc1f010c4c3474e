"""Pieces every evaluation shares: getting an encoder, reading images, batched encoding.

Every evaluation encodes each distinct image and each distinct text exactly once, in
batches, under ``torch.inference_mode``; similarities then come from
``encoder.logits`` so that the family's own scale (and SigLIP's bias) are used.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from genhancer.errors import DataError


def progress(iterable: Iterable, desc: str, total: int | None = None) -> Iterable:
    """A tqdm bar when stderr is a terminal; the bare iterable otherwise (CI, logs)."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False)


def encoder_device(encoder: torch.nn.Module) -> torch.device:
    for p in encoder.parameters():
        return p.device
    return torch.device("cpu")


def encoder_dtype(encoder: torch.nn.Module) -> torch.dtype:
    for p in encoder.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


IMAGE_METHODS = ("resize_crop", "normalize", "encode_image")
TEXT_METHODS = ("tokenize", "encode_text", "logits")


def resolve_encoder(model: Any, device: str | torch.device | None = None, needs_text: bool = True):
    """A model directory / hub id / ``REPO:SUBFOLDER`` / ``ModelRef`` or an already loaded
    encoder -> (encoder in eval mode, device).

    A loaded encoder stays where it is unless ``device`` is given; a path is loaded and
    put on ``device`` (default: CUDA when available, else CPU). ``needs_text=False`` (the
    image-only metrics) accepts an encoder with only the image methods, e.g. a DINOv2 wrapper;
    with ``needs_text`` an encoder whose ``has_text`` is False (DINOv2, ViT) is one ``ConfigError``.
    """
    from genhancer.encoders.sources import ModelRef

    if isinstance(model, (str, Path, ModelRef)):
        from genhancer.encoders.hf import load_encoder

        encoder = load_encoder(model if isinstance(model, ModelRef) else str(model))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        encoder = model
        for attr in IMAGE_METHODS + (TEXT_METHODS if needs_text else ()):
            if not hasattr(encoder, attr):
                raise TypeError(f"model must be a path or an encoder with .{attr}(); got {type(model).__name__}")
    if needs_text and not getattr(encoder, "has_text", True):
        from genhancer.encoders.vision_only import no_text_tower

        raise no_text_tower(encoder)
    if device is not None:
        encoder = encoder.to(torch.device(device))
    encoder.eval()
    return encoder, encoder_device(encoder)


def model_name(model: Any) -> str:
    from genhancer.encoders.sources import ModelRef

    if isinstance(model, (str, Path, ModelRef)):
        return str(model)
    return str(getattr(model, "source", "") or type(model).__name__)


def open_image(path: str | Path) -> Image.Image:
    """Read one image as RGB; any failure becomes an OSError/ValueError for the caller to word."""
    with Image.open(path) as im:
        return im.convert("RGB")


def describe_image_error(path: Path, err: Exception) -> str:
    if isinstance(err, FileNotFoundError) or not Path(path).exists():
        return f"missing image file '{path}'"
    return f"unreadable image '{path}' ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"


def _decode(encoder, path: Path):
    """(uint8 [S,S,3] array, None) or (None, problem): runs in a reader thread."""
    try:
        return encoder.resize_crop(open_image(path)), None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return None, describe_image_error(Path(path), e)


@torch.inference_mode()
def encode_images(encoder, paths: Sequence[Path], batch_size: int, device: torch.device,
                  strict: bool = True, desc: str = "images", readers: int = 2,
                  features: str = "global") -> tuple[torch.Tensor | None, dict[int, str]]:
    """Encode every path once -> (global embeddings [N_ok, D] in path order, {index: problem}).

    ``features="patches"`` returns the vision tower's patch tokens instead, flattened to
    ``[N_ok, N_patches * Dv]`` (what the encoder *sees*, for probes of where information is).

    Unreadable images raise ``DataError`` naming the file when ``strict``; otherwise they
    are left out of the embedding matrix and reported in the returned dict. Embeddings of
    the readable ones come back in their original relative order.

    ``readers`` threads decode and resize the next batch while the encoder runs on the
    current one (PIL releases the GIL while decoding); at most two batches are in flight,
    so memory stays bounded on large folders. ``readers=0`` decodes inline.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    dtype = encoder_dtype(encoder)
    problems: dict[int, str] = {}
    chunks: list[torch.Tensor] = []
    starts = list(range(0, len(paths), batch_size))
    pool = ThreadPoolExecutor(readers) if readers > 0 else None

    def submit(start: int):
        idx = range(start, min(start + batch_size, len(paths)))
        if pool is None:
            return idx, [_decode(encoder, paths[i]) for i in idx]
        return idx, [pool.submit(_decode, encoder, paths[i]) for i in idx]

    try:
        pending = deque(submit(st) for st in starts[:2])
        for k in progress(range(len(starts)), desc=f"encode {desc}", total=len(starts)):
            idx, items = pending.popleft()
            if k + 2 < len(starts):
                pending.append(submit(starts[k + 2]))
            arrays = []
            for i, item in zip(idx, items):
                arr, msg = item if pool is None else item.result()
                if msg is not None:
                    if strict:
                        raise DataError(msg)
                    problems[i] = msg
                else:
                    arrays.append(arr)
            if not arrays:
                continue
            pixels = encoder.normalize(torch.from_numpy(np.stack(arrays))).to(device=device, dtype=dtype)
            global_emb, patches = encoder.encode_image(pixels)
            chunks.append(global_emb.float() if features == "global" else patches.flatten(1).float())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return (torch.cat(chunks) if chunks else None), problems


@torch.inference_mode()
def encode_texts(encoder, texts: Sequence[str], batch_size: int, device: torch.device,
                 desc: str = "texts") -> torch.Tensor:
    """Encode texts in batches -> [N, D] float32 on ``device``."""
    chunks = []
    starts = range(0, len(texts), batch_size)
    for start in progress(starts, desc=f"encode {desc}", total=len(starts)):
        tokens = encoder.tokenize(list(texts[start:start + batch_size]), device=device)
        chunks.append(encoder.encode_text(**tokens).float())
    return torch.cat(chunks)


@torch.inference_mode()
def similarity(encoder, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
    """[Ni, Nt] logits as the family scores them, float32 on CPU."""
    dtype = encoder_dtype(encoder)
    return encoder.logits(img_emb.to(dtype), txt_emb.to(dtype)).float().cpu()


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def summary_only(result: dict) -> dict:
    """The JSON-able summary: the returned dict minus the per-item records."""
    return {k: v for k, v in result.items() if k != "items"}
