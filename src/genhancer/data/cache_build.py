"""Writing a training cache (``genhancer cache``): encode a data source once per augmentation.

The layout written here and its reader are described in :mod:`genhancer.data.cache`. The
images go through the same :class:`~genhancer.data.stream.BatchStream` (source + paired
views) as training, so a cached crop is exactly the crop training would have drawn.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from genhancer.checkpoint import CONFIG_FILE, SPACE_FILE, atomic_dir, save_space_state
from genhancer.config import Config
from genhancer.data.cache import SHARD, buf_shape, file_record, preprocessing_of, to_uint8
from genhancer.errors import DataError, writing

# After a full disk: atomic_dir removed the temporary directory and left any earlier cache in place.
FULL_HINT = "the partial cache was removed; free some space, then run `genhancer cache` again"


def build_cache(cfg: Config, out_dir: str | Path, augmentations: int = 1, rows_per_shard: int = 4096,
                overwrite: bool = False, progress: bool | None = None, pixels: bool = False) -> dict:
    """Encode ``cfg.data`` once per augmentation; returns the meta dict.

    ``pixels``: also store the encoder view as uint8, so that stage 2 / e2e can train from
    the cache (see the module docstring). Holds the lock of ``out_dir`` throughout (beside
    it: the directory itself appears only at the end, renamed into place)."""
    from genhancer.runlock import hold

    with hold(out_dir, beside=True):
        return _build(cfg, out_dir, augmentations, rows_per_shard, overwrite, progress, pixels)


def _build(cfg: Config, out_dir: str | Path, augmentations: int, rows_per_shard: int, overwrite: bool,
           progress: bool | None, pixels: bool) -> dict:
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from genhancer.data.stream import BatchStream, fit_latent_stats
    from genhancer.enhancer import Enhancer

    enhancer = Enhancer(cfg).eval()
    stream = BatchStream(cfg, enhancer, rank=0, world=1)
    fit_latent_stats(enhancer, stream)
    out_dir = Path(out_dir)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enhancer.to(dev)
    key = "codes" if enhancer.space.discrete else "latents"

    def write(tmp: Path) -> dict:
        buf: dict[str, list] = {"global_token": [], key: [], **({"pixel_u8": []} if pixels else {})}
        shard, rows, total = 0, 0, 0
        files: dict[str, dict] = {}  # meta.json "files": what opening / --verify checks

        def flush():
            nonlocal shard, rows
            if rows:
                name = SHARD.format(shard)
                with writing(f"cache shard '{out_dir / name}'", FULL_HINT):
                    save_file({k: torch.cat(v).contiguous() for k, v in buf.items()}, str(tmp / name))
                files[name] = file_record(tmp / name)
                shard, rows = shard + 1, 0
                for v in buf.values():
                    v.clear()

        bar = tqdm(desc="cache", unit="img", disable=not (sys.stderr.isatty() if progress is None else progress))
        from genhancer.data.loader import make_loader

        for aug in range(augmentations):
            # Epoch = augmentation index: each pass draws fresh crops (seeded by epoch and key).
            stream.source.set_epoch(aug)
            for batch in make_loader(stream.source, stream.views, cfg.data.batch_size, cfg.data.num_workers,
                                     seed=cfg.train.seed + aug):
                with torch.inference_mode():
                    g, _ = enhancer.encoder.encode_image(batch["pixel_values"].to(dev))
                    z = enhancer.space.encode(batch["gen_pixels"].to(dev))
                buf["global_token"].append(g.float().cpu())
                buf[key].append(z.cpu() if enhancer.space.discrete else z.float().cpu())
                if pixels:
                    buf["pixel_u8"].append(to_uint8(stream.views.unnormalize(batch["pixel_values"])))
                n = g.shape[0]
                rows, total = rows + n, total + n
                bar.update(n)
                if rows >= rows_per_shard:
                    flush()
        flush()
        bar.close()
        if total == 0:
            raise DataError(f"data.path: '{cfg.data.path}' gave no images to cache")
        save_space_state(enhancer.space, tmp / SPACE_FILE)
        files[SPACE_FILE] = file_record(tmp / SPACE_FILE)
        cfg.save(tmp / CONFIG_FILE)  # what data.cache.rebuild_command points at
        meta = {"encoder": cfg.encoder.name_or_path, "encoder_fingerprint": enhancer.encoder.fingerprint(),
                "global_dim": enhancer.encoder.global_dim,
                "tokenizer": cfg.tokenizer.kind, "gen_size": enhancer.gen_size, "kind": key,
                "latent_shape": list(buf_shape(tmp, key)), "rows": total, "shards": shard,
                "augmentations": augmentations, "rows_per_shard": rows_per_shard,
                "skipped_images": stream.skipped(), "pixels": pixels, "preprocessing": preprocessing_of(enhancer),
                "files": files}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        return meta

    result = {}
    atomic_dir(out_dir, lambda d: result.update(write(d)), overwrite=overwrite, what="cache", hint=FULL_HINT)
    return result
