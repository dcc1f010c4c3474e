"""Contrastive pretraining of a tiny CLIP on a captioned corpus (``genhancer pretrain-clip``).

No real CLIP can be downloaded offline, so the embedded demo needs an encoder whose
blindness comes from contrastive training itself, not from random weights: this module
trains a small ``transformers.CLIPModel`` on the demo world's ``captions.jsonl`` and writes
it with ``save_pretrained``, so that ``load_encoder`` and any transformers user load it
exactly like a published checkpoint.

Steps: a CLIP byte-level BPE is trained on the captions (:func:`build_tiny_clip`); the
images are decoded once into one uint8 tensor (the corpus is small: 20k images at 64 px
are 250 MB), and every step draws a batch from it, augments it with a random resized crop
done in torch on the whole batch, and minimises the symmetric InfoNCE loss with the
model's own learnable ``logit_scale``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genhancer.data.jsonl import iter_jsonl
from genhancer.errors import ConfigError, DataError, GenHancerError

__all__ = ["DEFAULT_STEPS", "pretrain_clip", "read_captions", "read_groups"]

# Measured on the 2-core CPU at the defaults below (64 px, patch 8, width 96, 4 + 2
# layers, batch 128): ~1.0 s per step, so the default run takes ~3.5 minutes and leaves
# the rest of the demo's 15-minute budget to the enhancer itself.
DEFAULT_STEPS = 200
DEFAULT_LR = 1e-3

# CLIP's own initial temperature (1 / 0.07) and the cap it clips the learnt scale to.
_MAX_LOGIT_SCALE = math.log(100.0)


def read_captions(path: Path) -> list[tuple[str, str]]:
    """``captions.jsonl`` rows -> ``[(image relpath, caption)]``; one-line DataError otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a captions.jsonl with one "
                        '{"image": <relative path>, "text": <caption>} row per line')
    rows = []
    for n, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) \
                or not isinstance(row.get("text"), str) or not row["text"].strip():
            raise DataError(f'{path}:{n}: expected {{"image": <path>, "text": <non-empty caption>}}')
        rows.append((row["image"], row["text"].strip()))
    if not rows:
        raise DataError(f"{path}: no captions; expected one JSON row per image")
    return rows


def read_groups(path: Path) -> list[int | None]:
    """Each ``captions.jsonl`` row's ``"group"`` (a hard-negative pair's id), or None."""
    return [row.get("group") if isinstance(row, dict) and isinstance(row.get("group"), int) else None
            for _, row in iter_jsonl(path)]


def _epoch_order(train_idx: torch.Tensor, groups: list, gen: torch.Generator) -> torch.Tensor:
    """A random order of ``train_idx`` in which the members of a group stay next to each
    other, so that a hard-negative pair lands in one batch (but for a batch boundary)."""
    units: dict = {}
    for j in train_idx.tolist():
        units.setdefault(("g", groups[j]) if groups[j] is not None else ("i", j), []).append(j)
    units_list = list(units.values())
    order = torch.randperm(len(units_list), generator=gen).tolist()
    return torch.tensor([j for u in order for j in units_list[u]], dtype=torch.long)


def _check_args(steps, batch_size, lr, image_size, patch_size, width, heads, text_width, val_fraction):
    def positive_int(name, v, minimum=1):
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ConfigError(f"{name} must be an int >= {minimum}, got {v!r}")

    positive_int("steps", steps)
    positive_int("batch_size", batch_size, 2)  # a contrastive batch needs negatives
    for name, v in (("image_size", image_size), ("patch_size", patch_size), ("width", width),
                    ("heads", heads), ("text_width", text_width)):
        positive_int(name, v)
    if image_size % patch_size:
        raise ConfigError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    for name, w in (("width", width), ("text_width", text_width)):
        if w % heads:
            raise ConfigError(f"{name} {w} is not a multiple of heads {heads}")
    if not isinstance(lr, int | float) or not lr > 0:
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(val_fraction, int | float) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def _load_pixels(corpus: Path, rows: list[tuple[str, str]], enc, show: bool):
    """Decode every image once into uint8 [N,3,S,S], resized / cropped by ``enc.resize_crop``
    (the encoder's processor: CLIP's shortest edge to S, then centre crop).

    Returns the tensor, the indices of the rows kept and the skip counts: a bad image is
    skipped and counted, never fatal.
    """
    from tqdm.auto import tqdm

    from genhancer.data.images import BadImage, SkipCounter, load_image

    size = enc.spec.size
    pixels = torch.empty(len(rows), 3, size, size, dtype=torch.uint8)
    kept, skipped = [], SkipCounter()
    for i, (rel, _) in enumerate(tqdm(rows, desc="load images", unit="img", disable=not show, leave=False)):
        try:
            im = load_image(corpus / rel, name=rel)
        except BadImage as e:
            skipped.record(e)
            continue
        pixels[len(kept)] = torch.from_numpy(enc.resize_crop(im).copy()).permute(2, 0, 1)
        kept.append(i)
    return pixels[: len(kept)], kept, skipped


def _random_resized_crop(x: torch.Tensor, gen: torch.Generator, scale=(0.8, 1.0),
                         ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's RandomResizedCrop for a whole float batch at once, by affine sampling.

    No horizontal flip: the demo world's fine attributes include left / right (arrow
    direction, ball side), and a flip would make the caption lie.
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=gen)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = log_r.exp()
    # Crop side fractions; clamped so the crop stays inside the image (torchvision retries
    # instead, which for scale >= 0.8 changes nothing visible).
    w = (area * r).sqrt().clamp(max=1.0)
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _clip_loss(logits: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every copy of the same caption counts as a positive.

    A synthetic corpus repeats captions often (few kinds x colours x backgrounds); plain
    InfoNCE would push an image away from an identical caption of another image in the
    batch, a contradiction the model can only answer by ignoring the words.
    """
    same = (caption_ids[:, None] == caption_ids[None, :]).to(logits.dtype)
    target = same / same.sum(1, keepdim=True)  # symmetric, so rows serve both directions
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _param_groups(model: torch.nn.Module, weight_decay: float):
    # open_clip's rule: no decay on gains, biases, the class token and the temperature,
    # whose size is not a measure of overfitting.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@contextlib.contextmanager
def _quiet_transformers(quiet: bool):
    """Without our own bar, transformers' save / load bars would be the only output."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if quiet and was:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was:
            hf_logging.enable_progress_bar()


def _lr_lambda(steps: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(steps - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f


@torch.no_grad()
def _evaluate(enc, pixels_u8, ids, mask, caption_ids, idx, batch_size, mean, std, device) -> dict:
    """Held-out retrieval within batches of ``batch_size`` val images.

    A retrieved caption counts as right when its text equals the image's caption (copies
    are indistinguishable); ``chance`` is the accuracy of a uniform guess under that rule.
    """
    enc.model.eval()
    hits_i2t = hits_t2i = chance = loss = 0.0
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        x = (pixels_u8[b].to(device).float() / 255 - mean) / std
        img, _ = enc.encode_image(x)
        txt = enc.encode_text(ids[b].to(device), mask[b].to(device))
        logits = enc.logits(img, txt)
        cid = caption_ids[b].to(device)
        same = cid[:, None] == cid[None, :]
        n = len(b)
        hits_i2t += same[torch.arange(n), logits.argmax(1)].float().sum().item()
        hits_t2i += same[logits.argmax(0), torch.arange(n)].float().sum().item()
        chance += (same.float().sum(1) / n).sum().item()
        loss += _clip_loss(logits, cid).item() * n
    enc.model.train()
    n = len(idx)
    return {"val_i2t_top1": hits_i2t / n, "val_t2i_top1": hits_t2i / n, "val_chance": chance / n,
            "val_loss": loss / n, "val_images": n}


def pretrain_clip(corpus_dir, out_dir, steps: int = DEFAULT_STEPS, batch_size: int = 128,
                  lr: float = DEFAULT_LR, image_size: int = 64, patch_size: int = 8, width: int = 96,
                  layers: int = 4, heads: int = 4, text_layers: int = 2, projection_dim: int = 64,
                  seed: int = 0, progress: bool | None = None, val_fraction: float = 0.05,
                  text_width: int | None = None, vocab_size: int = 1000, weight_decay: float = 0.1,
                  warmup_steps: int | None = None, overwrite: bool = False, device: str | None = None,
                  init_from: str | Path | None = None, mixed_precision: str = "no") -> dict:
    """Train a tiny CLIP contrastively on ``corpus_dir/captions.jsonl``; write it to ``out_dir``.

    ``corpus_dir`` holds ``captions.jsonl`` (rows ``{"image": <path relative to
    corpus_dir>, "text": <caption>}``, as ``genhancer.demo.world.write_corpus`` writes
    them) and the images. A held-out ``val_fraction`` of the images (chosen with ``seed``)
    is never trained on and measures caption retrieval at the end.

    ``out_dir`` receives, atomically (a temp dir beside it, then a rename), a
    ``CLIPModel`` + ``CLIPImageProcessor`` + ``CLIPTokenizer`` written with
    ``save_pretrained`` (``load_encoder(out_dir)`` and ``CLIPModel.from_pretrained`` load
    it), ``pretrain_metrics.json`` and ``pretrain_log.csv`` (step, loss, lr, logit scale).
    An existing ``out_dir`` is refused before any work unless ``overwrite``.

    Rows that share a ``"group"`` id (hard-negative pairs, ``write_corpus(...,
    hard_negative_share=)``) are kept next to each other in every epoch's order, so they
    meet in one batch. ``mixed_precision="bf16"``: forward under CPU / CUDA autocast in
    bfloat16 (the weights and the optimizer stay fp32).

    ``init_from``: continue from an earlier ``pretrain-clip`` output (its weights, tokenizer
    and sizes; the size arguments are then ignored) instead of a random init.

    ``text_width`` defaults to ``width``; ``warmup_steps`` to 5 % of ``steps``; the lr
    then follows a cosine to zero. ``progress``: None shows tqdm bars only when stderr is
    a TTY. Threads: whatever ``torch.get_num_threads()`` is; nothing global is changed.

    Returns the metrics: ``initial_loss``, ``final_loss`` (mean of the last 10 steps),
    ``val_i2t_top1`` / ``val_t2i_top1`` / ``val_chance`` / ``val_loss`` (None without a
    val split), ``train_seconds``, ``seconds_per_step``, counts and the settings used.

    Raises:
        DataError: a missing / malformed ``captions.jsonl`` or too few readable images.
        ConfigError: an impossible setting (e.g. ``image_size`` not a multiple of
            ``patch_size``).
        GenHancerError: ``out_dir`` exists and ``overwrite`` is False.
    """
    from tqdm.auto import tqdm

    from genhancer.checkpoint import atomic_dir
    from genhancer.encoders.hf import load_encoder
    from genhancer.encoders.tiny import build_tiny_clip

    text_width = width if text_width is None else text_width
    _check_args(steps, batch_size, lr, image_size, patch_size, width, heads, text_width, val_fraction)
    if mixed_precision not in ("no", "bf16"):
        raise ConfigError(f"mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")
    warmup = max(1, round(0.05 * steps)) if warmup_steps is None else max(1, int(warmup_steps))
    show = sys.stderr.isatty() if progress is None else bool(progress)
    corpus, out = Path(corpus_dir), Path(out_dir)
    # Fail before minutes of training, not after (atomic_dir checks again at the rename).
    if out.exists() and not overwrite:
        raise GenHancerError(f"'{out}' already exists; pass overwrite=True (--overwrite) to replace it")
    t_start = time.perf_counter()
    rows = read_captions(corpus / "captions.jsonl")
    row_groups = read_groups(corpus / "captions.jsonl")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # The split is drawn over caption rows before decoding, so it does not depend on
    # which images happen to be unreadable.
    gen = torch.Generator().manual_seed(seed)
    n_val = int(round(val_fraction * len(rows)))
    order = torch.randperm(len(rows), generator=gen).tolist()
    val_set = set(order[:n_val])
    texts = [t for _, t in rows]
    train_texts = [t for i, t in enumerate(texts) if i not in val_set] or texts

    metrics: dict = {}

    def write(tmp: Path) -> None:
        # The random init is written into the temp dir and loaded back through
        # load_encoder, so training runs on exactly what users of the output will load.
        if init_from is not None:
            import shutil

            src = Path(init_from)
            if not (src / "config.json").is_file():
                raise DataError(f"--init-from: '{src}' is not a pretrain-clip output (no config.json)")
            for f in src.iterdir():
                if f.is_file() and f.name not in ("pretrain_metrics.json", "pretrain_log.csv"):
                    shutil.copy2(f, tmp / f.name)
        else:
            build_tiny_clip(tmp, texts=train_texts, image_size=image_size, patch_size=patch_size, width=width,
                            layers=layers, heads=heads, text_width=text_width, text_layers=text_layers,
                            projection_dim=projection_dim, vocab_size=vocab_size, seed=seed)
        enc = load_encoder(str(tmp)).to(dev)
        if enc.spec.size != image_size:
            raise ConfigError(f"--init-from: the encoder takes {enc.spec.size} px images, --image-size is {image_size}")
        pixels, kept, skipped = _load_pixels(corpus, rows, enc, show)
        train_idx = torch.tensor([j for j, i in enumerate(kept) if i not in val_set], dtype=torch.long)
        val_idx = torch.tensor([j for j, i in enumerate(kept) if i in val_set], dtype=torch.long)
        if len(train_idx) < 2:
            raise DataError(f"{corpus / 'captions.jsonl'}: only {len(train_idx)} readable training image(s); "
                            f"contrastive training needs at least 2 (skipped: {skipped.counts()})")
        kept_texts = [texts[i] for i in kept]
        kept_groups = [row_groups[i] for i in kept]
        # Captions are short; padding them to the corpus's longest instead of 77 gives the
        # same embeddings (causal mask, pooled at the first end token) at a fraction of
        # the text tower's cost.
        tok = enc.tokenizer(kept_texts, padding="longest", truncation=True, max_length=enc.text_max_length,
                            return_tensors="pt")
        ids, mask = tok["input_ids"], tok["attention_mask"]
        uniq = {t: k for k, t in enumerate(dict.fromkeys(kept_texts))}
        caption_ids = torch.tensor([uniq[t] for t in kept_texts], dtype=torch.long)
        mean = torch.tensor(enc.spec.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(enc.spec.std, device=dev).view(1, 3, 1, 1)

        model = enc.model
        model.train()
        # CLIP's own betas / eps: beta2 0.98 steadies Adam under the large, noisy gradients
        # of a contrastive loss over a whole batch.
        opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, warmup))
        bs = min(batch_size, len(train_idx))
        # Epoch-wise permutations: every training image is seen once before any twice.
        perm, pos = _epoch_order(train_idx, kept_groups, gen), 0
        losses: list[float] = []
        log_rows = []
        bar = tqdm(total=steps, desc="pretrain clip", unit="step", dynamic_ncols=True, disable=not show)
        t0 = time.perf_counter()
        for step in range(steps):
            if pos + bs > len(perm):
                perm, pos = _epoch_order(train_idx, kept_groups, gen), 0
            b = perm[pos:pos + bs]
            pos += bs
            x = _random_resized_crop(pixels[b].to(dev).float() / 255, gen)
            x = (x - mean) / std
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
                img, _ = enc.encode_image(x)
                txt = enc.encode_text(ids[b].to(dev), mask[b].to(dev))
            loss = _clip_loss(enc.logits(img.float(), txt.float()), caption_ids[b].to(dev))
            if not torch.isfinite(loss):
                raise GenHancerError(f"pretrain-clip: non-finite loss at step {step + 1}; lower lr (now {lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, _MAX_LOGIT_SCALE)
            losses.append(loss.item())
            log_rows.append((step + 1, f"{losses[-1]:.5f}", f"{sched.get_last_lr()[0]:.3e}",
                             f"{model.logit_scale.exp().item():.3f}"))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
        train_s = time.perf_counter() - t0

        val = (_evaluate(enc, pixels, ids, mask, caption_ids, val_idx, bs, mean, std, dev) if len(val_idx)
               else dict.fromkeys(("val_i2t_top1", "val_t2i_top1", "val_chance", "val_loss"), None)
               | {"val_images": 0})
        model.eval()
        metrics.update({
            "initial_loss": losses[0],
            "final_loss": float(np.mean(losses[-10:])),
            **val,
            "train_seconds": round(train_s, 2),
            "seconds_per_step": round(train_s / steps, 4),
            "total_seconds": round(time.perf_counter() - t_start, 2),  # + tokenizer, images, eval
            "steps": steps, "batch_size": bs, "lr": lr, "warmup_steps": warmup,
            "train_images": len(train_idx), "unique_captions": len(uniq),
            "skipped_images": skipped.counts(),
            "logit_scale": model.logit_scale.exp().item(),
            "model": {"image_size": image_size, "patch_size": patch_size, "width": width, "layers": layers,
                      "heads": heads, "text_width": text_width, "text_layers": text_layers,
                      "projection_dim": projection_dim, "vocab_size": len(enc.tokenizer)},
            "seed": seed, "threads": torch.get_num_threads(), "device": str(dev),
            "init_from": None if init_from is None else str(init_from),
            "mixed_precision": mixed_precision, "hard_negative_rows": sum(g is not None for g in kept_groups),
        })
        enc.to("cpu").save_pretrained(tmp)
        (tmp / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        with open(tmp / "pretrain_log.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "loss", "lr", "logit_scale"])
            w.writerows(log_rows)

    with _quiet_transformers(not show):
        atomic_dir(out, write, overwrite=overwrite, what="pretrained CLIP",
                   hint="the partial write was removed; free some space, then run it again")
    return metrics
